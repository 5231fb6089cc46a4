"""Pytest plugin: the session's log must hold no token, and no error nobody expected.

Every record goes through the production handler (JSON format, redaction) into a
file; the gateway's own messages are also kept unredacted, since they must not
need the redaction at all. At the end of the session neither may contain any
token the suite issued (helpers.ISSUED_TOKENS, the Node suite's included), nor may
the logs of the gateway processes the tests started (helpers.PROCESS_LOGS).

Any record at ERROR or above, from any logger (the gateway's, uvicorn's, Strawberry's,
asyncio's "Task exception was never retrieved"), fails the test during which it was
logged, unless the test declares it: `@pytest.mark.log_errors(r"regex", ...)` allows
the records in which a pattern is found (in "logger LEVEL: message (Exception: text)"). Records logged outside any
test (session fixtures starting or stopping) fail the session.
"""

from __future__ import annotations

import gc
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import ISSUED_TOKENS, PROCESS_LOGS
from ragline.gateway.logs import make_handler

OWN_LOGGERS = frozenset({"ragline"})


class OwnRecords(logging.Handler):
    """The gateway's own log messages, as logged (before any redaction)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.split(".")[0] in OWN_LOGGERS:
            self.messages.append(record.getMessage())


class ErrorRecords(logging.Handler):
    """Every ERROR record, whatever its logger, kept until a test or the session claims it."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def take(self) -> list[logging.LogRecord]:
        taken, self.records = self.records, []
        return taken


ERRORS = ErrorRecords()
STRAYS: list[str] = []  # ERROR records logged outside any test


def describe(record: logging.LogRecord) -> str:
    text = f"{record.name} {record.levelname}: {record.getMessage()}"
    if record.exc_info and record.exc_info[1] is not None:
        text += f" ({type(record.exc_info[1]).__name__}: {record.exc_info[1]})"
    return text


def unexpected(records: list[logging.LogRecord], patterns: list[str]) -> list[str]:
    allowed = [re.compile(pattern) for pattern in patterns]
    described = [describe(r) for r in records]
    return [text for text in described if not any(p.search(text) for p in allowed)]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "log_errors(*patterns): ERROR records whose message matches a pattern are expected here"
    )
    logging.getLogger().addHandler(ERRORS)


def pytest_unconfigure(config: pytest.Config) -> None:
    logging.getLogger().removeHandler(ERRORS)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """ERROR records logged outside any test (a session fixture's start or stop) fail the run."""
    gc.collect()
    STRAYS.extend(describe(r) for r in ERRORS.take())
    if not STRAYS:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_sep("=", "ERROR log records outside any test", red=True)
        for line in STRAYS:
            reporter.write_line(line)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(autouse=True)
def no_unexpected_errors(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fails the test (at teardown) on an ERROR record it did not declare. Garbage is
    collected first, so that a task whose exception nobody retrieved says so now."""
    STRAYS.extend(describe(r) for r in ERRORS.take())  # logged between tests
    yield
    gc.collect()
    patterns = [p for mark in request.node.iter_markers("log_errors") for p in mark.args]
    found = unexpected(ERRORS.take(), patterns)
    assert not found, "unexpected ERROR log records:\n" + "\n".join(found)


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
        logged = [path.read_text(encoding="utf-8"), "\n".join(own.messages), *process_logs()]
        leaked = [t for t in ISSUED_TOKENS if any(part in text for part in secret_parts(t) for text in logged)]
        assert not leaked, f"{len(leaked)} of the session's {len(ISSUED_TOKENS)} tokens reached the logs"


def process_logs() -> list[str]:
    """What the gateway subprocesses of the session (helpers.GatewayProcess) logged."""
    return [Path(p).read_text(encoding="utf-8", errors="replace") for p in PROCESS_LOGS if Path(p).exists()]


def secret_parts(token: str) -> list[str]:
    """What of a token must never be logged: the whole, its claims and its signature
    (each found even in a truncated line). The header is the same in every token."""
    return [token, *(part for part in token.split(".")[1:] if len(part) >= 16)]
