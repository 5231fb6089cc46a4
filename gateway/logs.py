"""Logging setup; every handler redacts tokens, whatever logger a record came from."""

from __future__ import annotations

import logging
import re
from typing import Any

# JWT-shaped strings, `token=` query values and bearer credentials.
_SECRETS = re.compile(
    r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"
    r"|(?<=token=)[^&\s\"']+"
    r"|(?<=[Bb]earer )[^\s\"',&]+"
    r"|(?<=[Bb]earer%20)[^\s\"',&%]+"
)
REDACTED = "[redacted]"


def redact(text: str) -> str:
    return _SECRETS.sub(REDACTED, text)


class RedactSecrets(logging.Filter):
    """Rewrites each record's message with tokens replaced by [redacted]."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        return True


def log_config(level: str) -> dict[str, Any]:
    """A dictConfig for the gateway and uvicorn, with redaction on every handler."""
    handler = {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["redact"]}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"redact": {"()": RedactSecrets}},
        "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
        "handlers": {"stderr": {**handler, "stream": "ext://sys.stderr"}},
        "loggers": {
            "uvicorn": {"level": level.upper(), "handlers": ["stderr"], "propagate": False},
            "uvicorn.access": {"level": level.upper(), "handlers": ["stderr"], "propagate": False},
        },
        "root": {"level": level.upper(), "handlers": ["stderr"]},
    }
