"""Catch-up reads of one tenant's stream, merged.

A subscription behind the shared reader reads the gap itself (`Subscriber._catch_up`).
When a tenant's durable clients all come back at once (a gateway restarted, a network
blip), each resumes at its own position, and those positions are near each other: one
`XRANGE` per resumer would read the same entries hundreds of times. Here the requests
of a tenant that arrive while its reads are on their way wait for the next batch
(`streaming.batches`), whose first read starts at the lowest position asked for; every
request whose position lies within what it returned takes its part, the others are
served by the reads that follow. The last few
reads of a tenant are kept for `KEEP` seconds: a later request whose position lies
before the last entry of one of them takes its part from there. That part is history,
which does not change; a subscription served so still checks the shared reader's
position and reads again if the stream went on, and a part is never empty, so a
request served from memory always advances.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Callable

from .batches import Batches
from .entries import Record
from .keys import parse_stream_id

Read = Callable[[str, str, int], Awaitable[list[Record]]]
KEEP = 1.0  # seconds a read is kept to serve the catch-ups that follow it
KEPT = 4  # reads kept per tenant
MOST = 10_000  # requests one batch of reads serves (a storm's resumers of a tenant, all at once)


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
        # No linger: a catch-up is a subscriber waiting for its events.
        self._batches: Batches[tuple[str, int], list[Record] | Exception] = Batches(
            self._serve_batch, most=MOST, linger=0.0
        )
        self._kept: dict[str, deque[_Kept]] = {}

    async def read(self, tenant_id: str, after: str, count: int) -> list[Record]:
        kept = self._from_memory(tenant_id, parse_stream_id(after), count)
        if kept is not None:
            return kept
        result = await self._batches.ask(tenant_id, (after, count))
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
        self._batches.close()

    async def _serve_batch(self, tenant_id: str, asks: list[tuple[str, int]]) -> list[list[Record] | Exception]:
        """Each request's records, from as few reads as the positions allow; a read that
        fails is the error of every request it did not serve yet."""
        after_keys = [parse_stream_id(after) for after, _ in asks]
        answers: list[list[Record] | Exception] = [[] for _ in asks]
        waiting = sorted(range(len(asks)), key=lambda index: after_keys[index])
        while waiting:
            lowest = waiting[0]
            count = max(asks[index][1] for index in waiting)
            try:
                records = await self._read(tenant_id, asks[lowest][0], count)
            except Exception as error:  # noqa: BLE001 (each request gets the read's error)
                for index in waiting:
                    answers[index] = error
                break
            self._keep(tenant_id, after_keys[lowest], records)
            complete = len(records) < count  # the read reached the stream's end
            end = records[-1].sort_key if records else after_keys[lowest]
            left: list[int] = []
            for index in waiting:
                after_key = after_keys[index]
                if index == lowest or complete or after_key < end:
                    part = [record for record in records if record.sort_key > after_key]
                    answers[index] = part[: asks[index][1]]
                else:
                    left.append(index)
            waiting = left
        return answers


__all__ = ["CatchUpReads"]
