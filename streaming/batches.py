"""Requests to Redis of one tenant, merged into one call.

When every durable client of a tenant comes back at once (a gateway restarted), each one's
authentication and resume asks Redis the same kind of question about a different name. Here
the requests of a key (a tenant) that arrive while its previous call is on its way, or within
LINGER seconds after it, wait for the next call, which answers all of them: the first request
of a quiet key goes out in the next turn of the loop (no added delay), and under a storm a
call answers as many requests as arrived during one round trip and the linger after it (a
resume costs ~1 ms of CPU, so a few of them). So the commands per request fall as the
requests grow, and a tenant's keys share one cluster slot: one call per tenant is one call
to one node.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

Ask = TypeVar("Ask")
Answer = TypeVar("Answer")
Call = Callable[[str, list[Ask]], Awaitable[list[Answer]]]
LINGER = 0.003  # seconds a key's next call waits for more requests after one went out


class _Request(Generic[Ask, Answer]):
    __slots__ = ("ask", "done")

    def __init__(self, ask: Ask) -> None:
        self.ask = ask
        # The answer, or the call's error: an exception set on a future whose caller gave up
        # would be logged as never retrieved.
        self.done: asyncio.Future[tuple[Answer | None, BaseException | None]] = (
            asyncio.get_running_loop().create_future()
        )


class Batches(Generic[Ask, Answer]):
    """`ask(key, question)`: `call(key, questions)` answers every question of a key asked while
    the previous call for it was on its way or `linger` seconds after it (at most `most` per
    call), one answer per question, in order; when the call fails, each asker gets its error."""

    def __init__(self, call: Call[Ask, Answer], most: int = 500, linger: float = LINGER) -> None:
        self._call = call
        self._most = most
        self._linger = linger
        self._pending: dict[str, list[_Request[Ask, Answer]]] = {}
        self._callers: dict[str, asyncio.Task[None]] = {}

    async def ask(self, key: str, question: Ask) -> Answer:
        request: _Request[Ask, Answer] = _Request(question)
        self._pending.setdefault(key, []).append(request)
        if key not in self._callers:
            self._callers[key] = asyncio.get_running_loop().create_task(self._serve(key))
        # An asker giving up must not cancel the others' call.
        answer, error = await asyncio.shield(request.done)
        del request  # no cycle through the error's traceback, which holds this frame
        if error is None:
            return answer  # type: ignore[return-value]  # set with no error: an Answer
        try:
            raise error
        finally:
            del error

    def close(self) -> None:
        for task in self._callers.values():
            task.cancel()

    async def _serve(self, key: str) -> None:
        try:
            await asyncio.sleep(0)  # the requests made in this turn of the loop join the first call
            while requests := self._pending.pop(key, None):
                if len(requests) > self._most:
                    self._pending[key] = requests[self._most :] + self._pending.get(key, [])
                    requests = requests[: self._most]
                await self._serve_batch(key, requests)
                await asyncio.sleep(self._linger)
        finally:
            del self._callers[key]
            for request in self._pending.pop(key, ()):  # cancelled with requests waiting
                request.done.cancel()

    async def _serve_batch(self, key: str, requests: list[_Request[Ask, Answer]]) -> None:
        try:
            answers = await self._call(key, [request.ask for request in requests])
        except Exception as error:  # noqa: BLE001 (each asker gets the call's error)
            for request in requests:
                if not request.done.done():
                    request.done.set_result((None, error))
            return
        except BaseException:
            for request in requests:
                request.done.cancel()
            raise
        for request, answer in zip(requests, answers, strict=True):
            if not request.done.done():
                request.done.set_result((answer, None))


__all__ = ["Batches"]
