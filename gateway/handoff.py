"""Frames the shared reader writes itself, through an HTTP response's ASGI `send`.

The fan-out writer (`Deliveries.write_directly`) writes a frame in its pass over the
subscribers, without waking the stream's task, when the connection takes it at once.
ASGI's `send` is a coroutine; here it is run by hand: it completes at once unless the
transport is paused (the client reads slower than it is written to). Such a started
write is not abandoned (an ASGI server may have begun it): the stream's own task
finishes it, under its write deadline, before or in place of its next frame.
(WebSockets have a cheaper way: `wsprotocol.SEND_NOW`.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from contextlib import suppress
from typing import Any

from starlette.types import Send


class StartedWrite:
    """A frame's ASGI `send`, run by hand by the shared reader, that did not complete at
    once (the transport is paused: the client reads slower than it is written to). The
    stream's own task finishes it, under the deadline, in place of writing that frame."""

    __slots__ = ("body", "step", "waiting")

    def __init__(self, body: bytes, step: Generator[Any, None, None], waiting: object) -> None:
        self.body = body
        self.step = step
        self.waiting: Any = waiting  # what the send waits on: asyncio's futures, or None (a bare yield)

    @classmethod
    def start(cls, send: Send, body: bytes) -> StartedWrite | None:
        """Run `send` for `body` until it completes (None) or waits (the started write)."""
        step = send({"type": "http.response.body", "body": body, "more_body": True}).__await__()
        try:
            waiting = step.send(None)
        except StopIteration:
            return None
        return cls(body, step, waiting)

    async def finish(self) -> None:
        try:
            while True:
                if self.waiting is None:
                    await asyncio.sleep(0)
                else:
                    await asyncio.wait([self.waiting])
                try:
                    self.waiting = self.step.send(None)
                except StopIteration:
                    return
        except BaseException:
            self.abandon()
            raise

    def abandon(self) -> None:
        """The stream ends without this frame."""
        with suppress(RuntimeError):
            self.step.close()


class HandOff:
    """One response's writes, by the shared reader (`try_write`) and by its own task (`write`)."""

    __slots__ = ("_ahead", "_send", "open", "started")

    def __init__(self, send: Send) -> None:
        self._send = send
        self.open = True  # the shared reader may write; False once the stream ends
        self.started: StartedWrite | None = None  # the reader's write that did not complete
        self._ahead: bytes | None = None  # a frame finished before the task's own next one

    def try_write(self, body: bytes) -> bool:
        """The shared reader's write: True when written; False when the stream ends, a
        write is still unfinished, or this one did not complete (the task finishes it)."""
        if not self.open or self.started is not None:
            return False
        self.started = StartedWrite.start(self._send, body)
        return self.started is None

    async def write(self, body: bytes) -> None:
        """The task's write of its next frame (under its deadline): a write the reader began
        goes first; if it was this very frame, that is all."""
        if body == self._ahead:
            self._ahead = None
            return
        started, self.started = self.started, None
        if started is not None:
            await started.finish()
            if started.body == body:
                return
            self._ahead = started.body  # the task's own copy of it follows: skipped then
        await self._send({"type": "http.response.body", "body": body, "more_body": True})

    def close(self) -> None:
        """No more writes by the reader; one it began and nobody finished is abandoned."""
        self.open = False
        started, self.started = self.started, None
        if started is not None:
            started.abandon()


__all__ = ["HandOff", "StartedWrite"]
