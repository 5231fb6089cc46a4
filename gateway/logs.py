"""Logging setup; every handler redacts tokens, whatever logger a record came from.

Records carry the connection id, tenant and operation id of the socket they
concern (context variables set by the transports), shown as fields in the JSON
format (`RAGLINE_LOG_FORMAT=json`, one object per line). Payloads are never
logged; tokens are redacted from messages and tracebacks alike.
"""

from __future__ import annotations

import logging
import re
import uuid
from contextvars import ContextVar
from typing import Any

import orjson

# JWT-shaped strings, `token=` query values and bearer credentials.
_SECRETS = re.compile(
    r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"
    r"|(?<=token=)[^&\s\"']+"
    r"|(?<=[Bb]earer )[^\s\"',&]+"
    r"|(?<=[Bb]earer%20)[^\s\"',&%]+"
)
REDACTED = "[redacted]"

# Set in the task that serves a socket (and inherited by the tasks it starts).
CONNECTION_ID: ContextVar[str | None] = ContextVar("ragline_connection_id", default=None)
TENANT: ContextVar[str | None] = ContextVar("ragline_tenant", default=None)
OPERATION_ID: ContextVar[str | None] = ContextVar("ragline_operation_id", default=None)
_CONTEXT = (("connection_id", CONNECTION_ID), ("tenant", TENANT), ("operation_id", OPERATION_ID))


def redact(text: str) -> str:
    return _SECRETS.sub(REDACTED, text)


def new_connection_id() -> str:
    """A short id for one socket, set as its logs' `connection_id`."""
    connection_id = uuid.uuid4().hex[:12]
    CONNECTION_ID.set(connection_id)
    return connection_id


class RedactSecrets(logging.Filter):
    """Rewrites each record's message with tokens replaced by [redacted]."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        return True


class AddContext(logging.Filter):
    """Copies the socket's connection id, tenant and operation id onto the record."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, variable in _CONTEXT:
            setattr(record, name, variable.get())
        return True


class PlainFormatter(logging.Formatter):
    """`time level logger: message`, redacted as a whole (tracebacks included)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, the socket's ids, and
    the traceback if any; redacted like the plain format."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for name, _ in _CONTEXT:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(entry).decode()


FORMATTERS: dict[str, type[logging.Formatter]] = {"plain": PlainFormatter, "json": JsonFormatter}


def make_handler(fmt: str, handler: logging.Handler) -> logging.Handler:
    """`handler` with the gateway's formatter and filters, as `log_config` sets them up."""
    handler.setFormatter(FORMATTERS[fmt]())
    handler.addFilter(RedactSecrets())
    handler.addFilter(AddContext())
    return handler


def log_config(level: str, fmt: str = "plain") -> dict[str, Any]:
    """A dictConfig for the gateway and uvicorn, with redaction on every handler."""
    handler = {"class": "logging.StreamHandler", "formatter": fmt, "filters": ["redact", "context"]}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"redact": {"()": RedactSecrets}, "context": {"()": AddContext}},
        "formatters": {name: {"()": formatter} for name, formatter in FORMATTERS.items()},
        "handlers": {"stderr": {**handler, "stream": "ext://sys.stderr"}},
        "loggers": {
            "uvicorn": {"level": level.upper(), "handlers": ["stderr"], "propagate": False},
            "uvicorn.access": {"level": level.upper(), "handlers": ["stderr"], "propagate": False},
        },
        "root": {"level": level.upper(), "handlers": ["stderr"]},
    }
