"""One subscriber's ordered view of its tenant's stream.

A `Subscriber` is a cursor (what `Hub.subscribe` yields): it hands out the records after its position in
stream order, without gaps. Live records arrive from the shared reader
(`offer`); whenever it has missed some (it started behind the reader, or its
buffer was full) it reads the gap from Redis itself, so a slow subscriber
costs a bounded buffer, never unbounded memory, and loses nothing.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .entries import Record
from .errors import StreamingError, Unavailable
from .keys import parse_stream_id
from .retry import next_pause


@dataclass(eq=False)
class Feed:
    """The shared reader's position in one tenant's stream and who listens."""

    tenant_id: str
    head: str
    head_key: tuple[int, int]
    subscribers: set[Subscriber] = field(default_factory=set)


RangeReader = Callable[[str, str, int], Awaitable[list[Record]]]
# The positions of the records of a batch that the consumer accepts, decided once for every
# subscriber that shares the decision (a cohort): the same list for the same batch object.
Sift = Callable[[Sequence[Record]], Sequence[int]]


class DirectWriter(Protocol):
    """What the shared reader writes through for a subscription while its consumer waits
    with nothing queued (`Subscriber.writer`, the fan-out writer): one object, called by
    method, so that a delivery touches as few objects as it can."""

    # Optional: the batch's shared decisions (a cohort's): the reader then hands over only
    # the records kept (`take`) and tells `skipped` about the others.
    sift: Sift | None
    # Optional: called after each pass that handed records over, so that their writes to
    # one connection go out together.
    flush: Callable[[], None] | None

    def direct(self, record: Record) -> bool:
        """Take a record, written or skipped (True), or leave it to the consumer's own task
        (False: its connection cannot take a frame now)."""
        ...

    def take(self, record: Record) -> bool:
        """`direct` for a record known to be accepted."""
        ...

    def skipped(self, record: Record | None, count: int) -> None:
        """`count` records were skipped in the pass; `record` is the one to move the cursor
        to (None when a written one after them moves it anyway)."""
        ...


class Subscriber:
    """Ordered records after a start position, for one consumer group."""

    def __init__(
        self,
        feed: Feed,
        group: str,
        start: str,
        read_range: RangeReader,
        *,
        buffer_limit: int,
        range_count: int,
        owner: str | None = None,
    ) -> None:
        self.feed = feed
        self.owner = owner  # set for durable subscriptions: the claim on the name
        self._closed: asyncio.Future[None] | None = None  # made only when someone waits (a takeover)
        self.is_closed = False
        self.closing = False  # set when the hub starts releasing the group
        self.tenant_id = feed.tenant_id
        self.group = group
        self.acked = start
        self._acked_key = parse_stream_id(start)
        self.unacked = 0
        self._tail = start
        self._tail_key = parse_stream_id(start)
        self._queue: deque[Record] | None = None  # made on first use: most of the time there is none
        self._loop = asyncio.get_running_loop()
        self._waiter: asyncio.Future[None] | None = None  # while next_record waits (cheaper than an Event)
        self._behind = True
        self._error: StreamingError | None = None
        self._read_range = read_range
        self._buffer_limit = buffer_limit
        self._range_count = range_count
        self._pause = 0.0
        # Set by the consumer: while it waits with nothing queued, the reader hands records to
        # its writer in its own pass (the fan-out writer) instead of waking the consumer's task.
        self.writer: DirectWriter | None = None

    @property
    def pending(self) -> int:
        """Entries read for this subscription and not yet written (or skipped)."""
        return (len(self._queue) if self._queue else 0) + self.unacked

    def mark_closed(self) -> None:
        """The hub released the group (and flushed a durable cursor)."""
        self.is_closed = True
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)

    async def wait_closed(self) -> None:
        if self.is_closed:
            return
        if self._closed is None:
            self._closed = self._loop.create_future()
        await asyncio.shield(self._closed)  # a waiter giving up must not cancel it for others

    def offer(self, prev_key: tuple[int, int], records: Sequence[Record]) -> None:
        """Take a batch the reader read after `prev_key`; called without awaiting."""
        if self._behind or self._error is not None or not records:
            return
        if prev_key > self._tail_key:
            self._fall_behind()
            return
        if records[0].sort_key > self._tail_key:  # the usual case: all of it is new
            fresh = records
        else:
            fresh = [r for r in records if r.sort_key > self._tail_key]
            if not fresh:
                return
        writer = self.writer
        if writer is not None and self._queue is None and self._waiter is not None and not self._waiter.done():
            try:
                if fresh is records and writer.sift is not None:
                    fresh = self._hand_over_sifted(writer, records, writer.sift(records))
                else:
                    fresh = self._hand_over(writer, fresh)
            finally:
                if writer.flush is not None:
                    writer.flush()
            if not fresh:
                return
        if (len(self._queue) if self._queue else 0) + len(fresh) > self._buffer_limit:
            self._fall_behind()
            return
        self._append(fresh)

    def _hand_over_sifted(self, writer: DirectWriter, records: Sequence[Record], kept: Sequence[int]) -> Sequence[Record]:
        """`_hand_over` for a batch whose decisions were made once for the cohort (`kept`,
        the positions of the records it accepts): only the records it keeps are handed
        over; the others cost this subscriber nothing but one count (a written record after
        them moves the cursor past them too)."""
        for done, index in enumerate(kept):
            try:
                taken = writer.take(records[index])
            except Exception:  # noqa: BLE001 (the consumer's task meets it again, and reports it)
                taken = False
            if not taken:
                writer.skipped(None, index - done)  # those before it; the cursor moves when it is written
                return records[index:]
        last = records[-1]
        if len(kept) != len(records):
            trailing = not kept or kept[-1] != len(records) - 1
            writer.skipped(last if trailing else None, len(records) - len(kept))
        self._tail, self._tail_key = last.id, last.sort_key
        return ()

    def _hand_over(self, writer: DirectWriter, records: Sequence[Record]) -> Sequence[Record]:
        """Give records to the writer in order, without waking the consumer; what it did not
        take (its connection cannot take a frame now) is returned, for the consumer's task."""
        for index, record in enumerate(records):
            try:
                taken = writer.direct(record)
            except Exception:  # noqa: BLE001 (the consumer's task meets it again, and reports it)
                taken = False
            if not taken:
                return records[index:]
            self._tail, self._tail_key = record.id, record.sort_key
        return ()

    def fail(self, error: StreamingError) -> None:
        """End the subscription: its next read raises `error`."""
        if self._error is None:
            self._error = error
        self._wake_up()

    async def next_record(self) -> Record:
        """The next record in stream order; waits for one."""
        while True:
            if self._error is not None:
                raise self._error
            if self._queue:
                self.unacked += 1
                record = self._queue.popleft()
                if not self._queue:
                    self._queue = None
                return record
            waiting = self.idle()
            assert waiting is not None  # neither an error nor a record: something to await
            await waiting

    def idle(self) -> Awaitable[None] | None:
        """None when `next_record` has a record (or an error) now; else what it would await
        first (the catch-up read, or the future the shared reader sets when there is more),
        for a consumer that awaits it itself, fewer calls deep: an idle subscription's
        suspended calls are most of its memory. The shared reader writes for the
        subscription while it waits (`direct`)."""
        if self._error is not None or self._queue:
            return None
        if self._behind:
            return self._catch_up_or_fail()
        if self._waiter is None or self._waiter.done():
            self._waiter = self._loop.create_future()
        return self._waiter

    async def _catch_up_or_fail(self) -> None:
        try:
            await self._catch_up()
        except StreamingError as error:
            self.fail(error)  # raised by the next read, as `next_record` would raise it

    def ack(self, record: Record, handed_out: bool = True) -> bool:
        """Mark `record` as written (or skipped); True when the cursor moved. `handed_out`:
        it came from `next_record` (not from the reader's pass, `direct`)."""
        if handed_out:
            self.unacked = max(0, self.unacked - 1)
        if record.sort_key <= self._acked_key:
            return False
        self.acked = record.id
        self._acked_key = record.sort_key
        return True

    async def _catch_up(self) -> None:
        try:
            records = await self._read_range(self.tenant_id, self._tail, self._range_count)
        except Unavailable:
            # Redis is away: wait for it rather than end; the hub logs the outage.
            self._pause = next_pause(self._pause)
            await asyncio.sleep(self._pause)
            return
        self._pause = 0.0
        fresh = [r for r in records if r.sort_key > self._tail_key]
        if fresh:
            self._append(fresh)
        # No await between this check and clearing the flag: every batch the
        # reader offers from here on starts at or before our tail.
        if len(records) < self._range_count and self.feed.head_key <= self._tail_key:
            self._behind = False

    def _append(self, records: Sequence[Record]) -> None:
        if self._queue is None:
            self._queue = deque(records)
        else:
            self._queue.extend(records)
        self._tail = records[-1].id
        self._tail_key = records[-1].sort_key
        self._wake_up()

    def _wake_up(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fall_behind(self) -> None:
        self._behind = True
        self._wake_up()
