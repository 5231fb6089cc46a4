"""Catch-up reads of one tenant's stream, merged.

A subscription behind the shared reader reads the gap itself (`Subscriber._catch_up`).
When a tenant's durable clients all come back at once (a gateway restarted, a network
blip), each resumes at its own position, and those positions are near each other: one
`XRANGE` per resumer would read the same entries hundreds of times. Here the requests
of a tenant that arrive while a read is on its way wait for the next one, which starts
at the lowest position asked for; every request whose position lies within what it
returned takes its part, the others are served by the reads that follow. The last few
reads of a tenant are kept for `KEEP` seconds: a later request whose position lies
before the last entry of one of them takes its part from there. That part is history,
which does not change; a subscription served so still checks the shared reader's
position and reads again if the stream went on, and a part is never empty, so a
request served from memory always advances.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable

from .entries import Record
from .keys import parse_stream_id

Read = Callable[[str, str, int], Awaitable[list[Record]]]
KEEP = 1.0  # seconds a read is kept to serve the catch-ups that follow it
KEPT = 4  # reads kept per tenant


class _Request:
    __slots__ = ("after", "after_key", "count", "done")

    def __init__(self, after: str, count: int) -> None:
        self.after = after
        self.after_key = parse_stream_id(after)
        self.count = count
        # Its records, or the read's error: an exception set on a future whose caller gave
        # up would be logged as never retrieved.
        self.done: asyncio.Future[list[Record] | Exception] = asyncio.get_running_loop().create_future()


class _Kept:
    __slots__ = ("after_key", "at", "records")

    def __init__(self, after_key: tuple[int, int], records: list[Record]) -> None:
        self.after_key = after_key
        self.records = records
        self.at = time.monotonic()

    def part(self, after_key: tuple[int, int], count: int) -> list[Record] | None:
        """The records after `after_key`, if this read holds any of them."""
        if not self.after_key <= after_key < self.records[-1].sort_key:
            return None
        return [record for record in self.records if record.sort_key > after_key][:count]


class CatchUpReads:
    """`read(tenant, after, count)`: up to `count` records after `after`, as one XRANGE
    would return them, from reads shared with the tenant's other catch-ups."""

    def __init__(self, read: Read) -> None:
        self._read = read
        self._pending: dict[str, list[_Request]] = {}
        self._readers: dict[str, asyncio.Task[None]] = {}
        self._kept: dict[str, deque[_Kept]] = {}

    async def read(self, tenant_id: str, after: str, count: int) -> list[Record]:
        kept = self._from_memory(tenant_id, parse_stream_id(after), count)
        if kept is not None:
            return kept
        request = _Request(after, count)
        self._pending.setdefault(tenant_id, []).append(request)
        if tenant_id not in self._readers:
            task = asyncio.get_running_loop().create_task(self._serve(tenant_id))
            self._readers[tenant_id] = task
        result = await asyncio.shield(request.done)  # a caller giving up must not cancel the read for others
        if isinstance(result, Exception):
            raise result
        return result

    def _from_memory(self, tenant_id: str, after_key: tuple[int, int], count: int) -> list[Record] | None:
        reads = self._kept.get(tenant_id)
        if reads is None:
            return None
        oldest = time.monotonic() - KEEP
        while reads and reads[0].at < oldest:
            reads.popleft()
        if not reads:
            del self._kept[tenant_id]
            return None
        for read in reversed(reads):
            part = read.part(after_key, count)
            if part is not None:
                return part
        return None

    def _keep(self, tenant_id: str, after_key: tuple[int, int], records: list[Record]) -> None:
        if records:
            reads = self._kept.get(tenant_id)
            if reads is None:
                reads = self._kept[tenant_id] = deque(maxlen=KEPT)
            reads.append(_Kept(after_key, records))

    def close(self) -> None:
        for task in self._readers.values():
            task.cancel()

    async def _serve(self, tenant_id: str) -> None:
        try:
            await asyncio.sleep(0)  # the requests made in this turn of the loop join the first read
            while requests := self._pending.pop(tenant_id, None):
                await self._serve_batch(tenant_id, requests)
        finally:
            del self._readers[tenant_id]
            for request in self._pending.pop(tenant_id, ()):  # cancelled with requests waiting
                request.done.cancel()

    async def _serve_batch(self, tenant_id: str, requests: list[_Request]) -> None:
        requests.sort(key=lambda request: request.after_key)
        while requests:
            lowest = requests[0]
            count = max(request.count for request in requests)
            try:
                records = await self._read(tenant_id, lowest.after, count)
            except Exception as error:  # noqa: BLE001 (each caller gets the read's error)
                for request in requests:
                    if not request.done.done():
                        request.done.set_result(error)
                return
            self._keep(tenant_id, lowest.after_key, records)
            complete = len(records) < count  # the read reached the stream's end
            end = records[-1].sort_key if records else lowest.after_key
            left: list[_Request] = []
            for request in requests:
                if request.done.done():
                    continue
                if request is lowest or complete or request.after_key < end:
                    part = [record for record in records if record.sort_key > request.after_key]
                    request.done.set_result(part[: request.count])
                else:
                    left.append(request)
            requests = left


__all__ = ["CatchUpReads"]
