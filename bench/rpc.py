"""A tiny JSON-lines RPC between the orchestrator and its helper processes.

The load clients and the publisher run in processes of their own so that the
orchestrator's sampling never competes with them for one interpreter. Each
helper reads one request per line on stdin and answers one line on stdout;
requests to one helper are served in order, while its event loop keeps doing
its real work (receiving frames, publishing) in between.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, BinaryIO

import orjson

logger = logging.getLogger(__name__)

Handler = Callable[..., Awaitable[Any]]
_LINE_LIMIT = 64 * 1024 * 1024  # histograms and error samples can be long lines


class RemoteError(RuntimeError):
    """A helper process answered a request with an error."""


class HelperProcess:
    """The orchestrator's handle on one helper process."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.name = name
        self._proc = proc
        self._lock = asyncio.Lock()

    @classmethod
    async def start(
        cls, name: str, module: str, log_path: Path, env: dict[str, str]
    ) -> HelperProcess:
        """Start `python -m module` with its stderr going to log_path."""
        log = _open_log(log_path)
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                module,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                env=env,
                limit=_LINE_LIMIT,
            )
        finally:
            log.close()  # the child has its own descriptor
        logger.debug("started helper %s pid=%s", name, proc.pid)
        return cls(name, proc)

    @property
    def pid(self) -> int:
        return self._proc.pid

    async def call(self, cmd: str, **args: Any) -> Any:
        """Send one request and wait for its answer."""
        assert self._proc.stdin and self._proc.stdout
        async with self._lock:
            self._proc.stdin.write(orjson.dumps({"cmd": cmd, "args": args}) + b"\n")
            await self._proc.stdin.drain()
            line = await self._proc.stdout.readline()
        if not line:
            raise RemoteError(f"helper {self.name} exited during {cmd!r}")
        reply = orjson.loads(line)
        if not reply["ok"]:
            raise RemoteError(f"helper {self.name} failed {cmd!r}: {reply['error']}")
        return reply["result"]

    async def stop(self, timeout: float = 10.0) -> None:
        """Close stdin (the helper's signal to exit) and reap it."""
        if self._proc.returncode is not None:
            return
        assert self._proc.stdin
        self._proc.stdin.close()
        try:
            await asyncio.wait_for(self._proc.wait(), timeout)
        except TimeoutError:
            logger.warning("helper %s did not exit, killing pid %s", self.name, self.pid)
            self._proc.kill()
            await self._proc.wait()


def _open_log(path: Path) -> BinaryIO:
    return open(path, "ab")


async def serve(handlers: dict[str, Handler]) -> None:
    """Helper side: answer requests from stdin until it closes."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=_LINE_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = os.fdopen(sys.stdout.fileno(), "wb", buffering=0, closefd=False)
    while line := await reader.readline():
        request = orjson.loads(line)
        reply = await _dispatch(handlers, request["cmd"], request.get("args", {}))
        out.write(orjson.dumps(reply, option=orjson.OPT_NON_STR_KEYS) + b"\n")


async def _dispatch(handlers: dict[str, Handler], cmd: str, args: dict[str, Any]) -> dict[str, Any]:
    handler = handlers.get(cmd)
    if handler is None:
        return {"ok": False, "error": f"unknown command {cmd!r}"}
    try:
        return {"ok": True, "result": await handler(**args)}
    except Exception as exc:  # noqa: BLE001 - reported to the orchestrator, not swallowed
        logger.error("command %s failed:\n%s", cmd, traceback.format_exc())
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
