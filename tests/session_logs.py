"""Pytest plugin: the session's log, written as `ragline serve` writes it, must hold no token.

Every record goes through the production handler (JSON format, redaction) into a
file; the gateway's own messages are also kept unredacted, since they must not
need the redaction at all. At the end of the session neither may contain any
token a test made (helpers.ISSUED_TOKENS).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.logs import make_handler
from helpers import ISSUED_TOKENS

OWN_LOGGERS = frozenset({"app", "gateway", "resolvers", "schema", "streaming"})


class OwnRecords(logging.Handler):
    """The gateway's own log messages, as logged (before any redaction)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.split(".")[0] in OWN_LOGGERS:
            self.messages.append(record.getMessage())


@pytest.fixture(scope="session", autouse=True)
def session_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The path of the session's JSON log; checked for tokens when the session ends."""
    path = tmp_path_factory.mktemp("logs") / "session.jsonl"
    handler = make_handler("json", logging.FileHandler(path, encoding="utf-8"))
    own = OwnRecords()
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.INFO)
    root.addHandler(own)  # first: the file handler's redaction rewrites records in place
    root.addHandler(handler)
    try:
        yield path
    finally:
        root.removeHandler(handler)
        root.removeHandler(own)
        root.setLevel(level)
        handler.close()
        text = path.read_text(encoding="utf-8")
        leaked = [t for t in ISSUED_TOKENS if t in text or any(t in message for message in own.messages)]
        assert not leaked, f"{len(leaked)} of the session's {len(ISSUED_TOKENS)} tokens reached the logs"
