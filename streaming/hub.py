"""The streaming core: one shared reader per process, fanning out to cursors.

One task reads every tenant stream that has local subscribers and offers what it
reads, parsed once, to those subscribers: on one Redis server it blocks in a single
`XREAD` over all of them; on a Redis Cluster, where one command cannot span slots,
it reads the streams its nodes report as grown (`readers`). Each
subscription has its own tenant-scoped consumer group that serves as its
cursor (`Subscriber`): the group is moved (`XGROUP SETID`) only past entries that
were written to the client, pipelined for all subscriptions at each flush
(`FLUSH_CHUNK` moves per round trip). Subscribers never hold a Redis connection of
their own.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any, Protocol

from . import keys
from .catchup import CatchUpReads
from .connections import REDIS_ERRORS, AnyRedis, ping_all
from .counters import Counters, TenantCounters
from .entries import DeadLetter, Entry, Record, parse_record
from .errors import CursorExpired, DurableTakenOver, InvalidCursor, Unavailable
from .readers import StreamReader
from .replies import text
from .retry import next_pause
from .store import ZERO_ID, Move, RedisStore, StreamBounds
from .subscriber import Feed, Sift, Subscriber

logger = logging.getLogger(__name__)
Accept = Callable[[Entry], bool]
READER, FLUSH, OWNERS, COMMANDS = "reader", "flush", "owners", "commands"  # who saw Redis fail
EPHEMERAL_FLUSH_EVERY = 4  # ephemeral cursors move every 4th flush: 1 s by default
FLUSH_CHUNK = 2000  # cursor moves per round trip (one script call per tenant and 500 moves)


@dataclass(frozen=True)
class HubConfig:
    """Tuning of the shared reader; the defaults suit most deployments."""

    process_id: str
    read_count: int = 1000          # entries per stream per XREAD
    block_ms: int = 2000            # longest wait for new entries; new feeds wake it early
    buffer_limit: int = 2000        # records buffered per subscription
    range_count: int = 500          # entries per catch-up XRANGE
    ack_interval: float = 0.25      # seconds between cursor flushes
    owner_check_interval: float = 1.0  # seconds between durable takeover checks
    takeover_wait: float = 2.0      # how long a takeover waits for the local older one


@dataclass(frozen=True)
class Durable:
    """A named server-side cursor, scoped to (tenant, user)."""

    user_id: str
    name: str


@dataclass(frozen=True)
class Cursor:
    """Where a new subscription starts: after an entry id, and/or at a durable cursor."""

    after: str | None = None
    durable: Durable | None = None


class Hub:
    """Owns the reader and cursor-flush tasks and every live subscription."""

    def __init__(self, redis: AnyRedis, reader: StreamReader, config: HubConfig) -> None:
        self.config = config
        self.counters = Counters()
        self.store = RedisStore(redis)
        self._reader = reader
        self._catch_up = CatchUpReads(self._read_range)
        self._range_reader = self.read_range  # kept by every subscriber: one bound method for all
        self._feeds: dict[str, Feed] = {}
        self._feeds_changed = asyncio.Event()
        # Subscribers whose cursor moved since the last flush: durable ones are flushed every
        # `ack_interval`, the others every `EPHEMERAL_FLUSH_EVERY` intervals.
        self._dirty: dict[Subscriber, None] = {}
        self._dirty_durable: dict[Subscriber, None] = {}
        self._durables: dict[tuple[str, str], Subscriber] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.available = True
        self._failing: set[str] = set()  # which loops see Redis failing: "reader", "flush", ...
        self.accepting = True

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._read_loop(), name="ragline-reader"),
            asyncio.create_task(self._flush_loop(), name="ragline-acker"),
            asyncio.create_task(self._owner_loop(), name="ragline-durable-owners"),
        ]

    async def close(self) -> None:
        self.accepting = False
        self._catch_up.close()
        self.store.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        with suppress(*REDIS_ERRORS):
            await self.flush()

    # -- subscribing ----------------------------------------------------------

    @asynccontextmanager
    async def subscribe(self, tenant_id: str, kind: str, cursor: Cursor) -> AsyncIterator[Subscriber]:
        """A subscription with its own consumer group; everything is undone on exit.

        `kind` is `keys.EVENTS_KIND` or `keys.ORDERS_KIND`, which only names the group.
        Raises InvalidCursor, CursorExpired or Unavailable before anything is created.
        """
        keys.validate_tenant(tenant_id)
        if not self.accepting:
            raise Unavailable("The gateway is shutting down; resubscribe with 'after'")
        if not await self.probe():
            raise Unavailable("The gateway cannot reach Redis right now; retry with 'after'")
        if cursor.after is not None:
            _parse_after(cursor.after)
        group = self._group_name(tenant_id, kind, cursor)
        owner = None if cursor.durable is None else f"{self.config.process_id}:{uuid.uuid4().hex}"
        # Shielded: a caller cancelled mid-way (a client's `complete` or disconnect while
        # its group is being created) must not leave the group behind, nor be mistaken
        # for a cancel of the Redis round trips themselves.
        opening = asyncio.ensure_future(self._open(tenant_id, group, cursor, owner))
        try:
            start, head = await asyncio.shield(opening)
        except asyncio.CancelledError:
            with suppress(Exception):
                await opening
                await self._abandon_group(tenant_id, group, owner)
            raise
        del opening  # the finished task would otherwise live as long as the subscription
        # From here to the `try`, no await: the feed cannot end before we are in it.
        feed, created = self._join_feed(tenant_id, head)
        subscriber = Subscriber(
            feed, group, start, self._range_reader, owner=owner,
            buffer_limit=self.config.buffer_limit, range_count=self.config.range_count,
        )
        feed.subscribers.add(subscriber)
        if owner is not None:
            self._durables[(tenant_id, group)] = subscriber
        self.counters.tenant(tenant_id).subscriptions += 1
        try:
            if created:
                await self._wake_reader(keys.events_key(tenant_id))
            yield subscriber
        finally:
            self.counters.tenant(tenant_id).subscriptions -= 1
            subscriber.writer = None  # it refers back to the subscription and to its socket
            self._leave_feed(subscriber)
            # Shielded: a cancel that lands while the subscription is already ending (its
            # socket closed mid-write, then the handler cancels it) must not leave the group.
            await asyncio.shield(self._close_group(subscriber))

    def deliveries(self, subscriber: Subscriber, accept: Accept) -> Deliveries:
        """The subscription's accepted entries in order, each acknowledged only
        when the consumer asks for the next one, that is after it was written."""
        return Deliveries(self, subscriber, accept)

    def ack(self, subscriber: Subscriber, record: Record, handed_out: bool = True) -> None:
        """Record that `record` was written to the client (or skipped)."""
        if subscriber.ack(record, handed_out):
            self._mark_dirty(subscriber)

    def _mark_dirty(self, subscriber: Subscriber) -> None:
        """Its cursor moves at the next flush (`_flush_loop`: durable ones at every one)."""
        (self._dirty if subscriber.owner is None else self._dirty_durable)[subscriber] = None

    async def read_range(self, tenant_id: str, after: str, count: int) -> list[Record]:
        """History read for a subscription that is behind the reader, shared with the
        tenant's other catch-ups at nearby positions (`CatchUpReads`)."""
        return await self._catch_up.read(tenant_id, after, count)

    async def _read_range(self, tenant_id: str, after: str, count: int) -> list[Record]:
        try:
            records = await self.store.read_after(tenant_id, after, count)
            await self._dead_letter(tenant_id, records)
        except REDIS_ERRORS as error:
            self._on_outage(error)
            raise Unavailable("Redis is unavailable") from error
        return records

    async def flush(self, durable_only: bool = False) -> None:
        """Move every dirty subscriber's group (`durable_only`: every durable one's) to its
        last written entry, `FLUSH_CHUNK` moves per round trip: between two of them the
        deliveries go on, where one round trip of every move would hold them up."""
        batch = list(self._dirty_durable)
        self._dirty_durable.clear()
        if not durable_only:
            batch += self._dirty
            self._dirty.clear()
        for start in range(0, len(batch), FLUSH_CHUNK):
            chunk = [s for s in batch[start : start + FLUSH_CHUNK] if not s.closing]  # closing: moved on release
            if not chunk:
                continue
            try:
                kept = await self.store.move_groups([_move(s) for s in chunk], _not_closing(chunk))
            except REDIS_ERRORS:
                for subscriber in batch[start:]:
                    if not subscriber.closing:
                        self._mark_dirty(subscriber)
                raise
            for subscriber, still_owner in zip(chunk, kept, strict=True):
                if not still_owner:
                    subscriber.fail(DurableTakenOver("A newer subscription took over this durable cursor"))

    async def probe(self) -> bool:
        """Whether Redis answers; a cheap PING only while an outage is known."""
        if self.available:
            return True
        try:
            await ping_all(self.store.redis)
        except REDIS_ERRORS:
            return False
        self._on_recovery()
        return True

    @property
    def running(self) -> bool:
        """Whether the reader and flush tasks are alive."""
        return bool(self._tasks) and not any(task.done() for task in self._tasks)

    def figures(self) -> dict[str, dict[str, int]]:
        """This process's figures by tenant: counters plus entries read but not yet written."""
        pending: dict[str, int] = {}
        for subscriber in self.subscribers():
            pending[subscriber.tenant_id] = pending.get(subscriber.tenant_id, 0) + subscriber.pending
        return {
            tenant_id: {
                "connections": c.connections,
                "subscriptions": c.subscriptions,
                "delivered": c.delivered,
                "dead_lettered": c.dead_lettered,
                "pending": pending.get(tenant_id, 0),
            }
            for tenant_id, c in self.counters.tenants().items()
        }

    async def all_figures(self) -> dict[str, dict[str, int]]:
        """Figures by tenant summed over every live gateway process: this one's
        live, the others' as they last published them (heartbeat)."""
        totals = {tenant: dict(row) for tenant, row in self.figures().items()}
        try:
            others = await self.store.process_figures()
        except REDIS_ERRORS:
            others = {}
        others.pop(self.config.process_id, None)
        for figures in others.values():
            for tenant_id, row in figures.items():
                total = totals.setdefault(tenant_id, {})
                for name, value in row.items():
                    if isinstance(value, int):
                        total[name] = total.get(name, 0) + value
        return totals

    def subscribers(self) -> list[Subscriber]:
        return [s for feed in self._feeds.values() for s in feed.subscribers]

    # -- groups ---------------------------------------------------------------

    async def _open(self, tenant_id: str, group: str, cursor: Cursor, owner: str | None) -> tuple[str, str]:
        """Claim (durable), create or reposition the group; (start id, stream end)."""
        try:
            if owner is None:
                return await self._open_ephemeral(tenant_id, group, cursor)
            return await self._open_durable(tenant_id, group, cursor, owner)
        except REDIS_ERRORS as error:
            self._on_outage(error)
            raise Unavailable("The gateway cannot reach Redis right now; retry with 'after'") from error

    def _group_name(self, tenant_id: str, kind: str, cursor: Cursor) -> str:
        if cursor.durable is not None:
            return keys.durable_group(kind, tenant_id, cursor.durable.user_id, cursor.durable.name)
        return keys.ephemeral_group(kind, tenant_id, self.config.process_id, uuid.uuid4().hex)

    async def _open_ephemeral(self, tenant_id: str, group: str, cursor: Cursor) -> tuple[str, str]:
        """A new group at the stream's end, or after `after`; created last, so a failure
        leaves nothing behind."""
        if cursor.after is None:
            start = head = await self.store.stream_end(tenant_id)
        else:
            bounds = await self.store.bounds(tenant_id)
            _check_not_expired(cursor.after, bounds)
            start, head = cursor.after, bounds.last_generated
        await self.store.create_group(tenant_id, group, start)
        return start, head

    async def _open_durable(self, tenant_id: str, group: str, cursor: Cursor, owner: str) -> tuple[str, str]:
        """Claim the name and find the cursor in one call (a resume costs the same however
        many subscriptions the stream has); create it, or move it to `after` if given.
        An older holder in this process ends first and flushes its cursor, so the newer
        one resumes exactly where it stopped; one elsewhere notices the claim within
        `owner_check_interval`."""
        older = self._durables.get((tenant_id, group))
        if older is not None:
            older.fail(DurableTakenOver("A newer subscription took over this durable cursor"))
            with suppress(TimeoutError):
                await asyncio.wait_for(older.wait_closed(), self.config.takeover_wait)
        existing, bounds = await self.store.open_durable(tenant_id, group, owner)
        start = cursor.after if cursor.after is not None else existing
        if start is None:
            start = bounds.last_generated
        else:
            _check_not_expired(start, bounds)
        if existing is None:
            await self.store.create_durable(tenant_id, group, start)
        elif start != existing:
            await self.store.move_groups([Move(tenant_id, group, start, owner)])
        return start, bounds.last_generated

    async def _close_group(self, subscriber: Subscriber) -> None:
        """Ephemeral: destroy the group. Durable: flush the cursor and let go of the name, in
        one step (a periodic flush still on its way must not land between the two)."""
        subscriber.closing = True  # before any await: a concurrent flush must not recreate the group
        self._dirty.pop(subscriber, None)
        self._dirty_durable.pop(subscriber, None)
        tenant_id, group, owner = subscriber.tenant_id, subscriber.group, subscriber.owner
        try:
            if owner is None:
                await self.store.destroy_group(tenant_id, group)
            else:
                await self.store.release_durable(tenant_id, group, owner, subscriber.acked)
        except REDIS_ERRORS as error:
            logger.warning("could not release group %s: %s", group, error)
        finally:
            if self._durables.get((tenant_id, group)) is subscriber:
                del self._durables[(tenant_id, group)]
            subscriber.mark_closed()

    # -- the shared reader ----------------------------------------------------

    def _join_feed(self, tenant_id: str, head: str) -> tuple[Feed, bool]:
        """The tenant's feed, created at `head` if there is none; True when created."""
        feed = self._feeds.get(tenant_id)
        if feed is not None:
            return feed, False
        feed = self._feeds[tenant_id] = Feed(tenant_id, head, keys.parse_stream_id(head))
        return feed, True

    async def _abandon_group(self, tenant_id: str, group: str, owner: str | None) -> None:
        """Undo `_open_group` for a subscription that never started (shielded: it must finish)."""
        if owner is not None:
            return  # a durable cursor stays; nothing was delivered through it
        with suppress(*REDIS_ERRORS):
            await asyncio.shield(self.store.destroy_group(tenant_id, group))

    def _leave_feed(self, subscriber: Subscriber) -> None:
        feed = subscriber.feed
        feed.subscribers.discard(subscriber)
        if not feed.subscribers and self._feeds.get(feed.tenant_id) is feed:
            del self._feeds[feed.tenant_id]

    async def _wake_reader(self, key: str) -> None:
        self._feeds_changed.set()
        await self._reader.wake(key)

    async def _read_loop(self) -> None:
        pause = 0.0
        while True:
            if not self._feeds:
                self._feeds_changed.clear()
                await self._feeds_changed.wait()
                continue
            try:
                await self._read_once()
            except REDIS_ERRORS as error:
                pause = next_pause(pause)
                self._on_outage(error, READER)
                await asyncio.sleep(pause)
                continue
            pause = 0.0
            failure = self._reader.failure  # a cluster node's reads failing, the others' fine
            if failure is None:
                self._on_recovery(READER, COMMANDS)
            else:
                self._on_outage(failure, READER)

    async def _read_once(self) -> None:
        feeds = {keys.events_key(f.tenant_id): f for f in self._feeds.values()}
        self._feeds_changed.clear()
        reply = await self._reader.read(
            {key: feed.head for key, feed in feeds.items()}, self.config.read_count, self.config.block_ms
        )
        for raw_key, entries in reply:
            feed = feeds.get(text(raw_key))  # a cluster read can outlive the feed it was for
            if feed is not None:
                await self._dispatch(feed, entries)

    async def _dispatch(self, feed: Feed, entries: list[Any]) -> None:
        if self._feeds.get(feed.tenant_id) is not feed:
            return  # the feed ended while we were reading
        records = [parse_record(feed.tenant_id, text(entry_id), fields) for entry_id, fields in entries]
        if records and records[0].sort_key <= feed.head_key:  # read for an older feed of this tenant
            records = [record for record in records if record.sort_key > feed.head_key]
            if not records:
                return
        await self._dead_letter(feed.tenant_id, records)
        prev_key = feed.head_key
        feed.head, feed.head_key = records[-1].id, records[-1].sort_key
        for subscriber in list(feed.subscribers):
            subscriber.offer(prev_key, records)

    async def _dead_letter(self, tenant_id: str, records: list[Record]) -> None:
        for record in records:
            if isinstance(record, DeadLetter) and await self.store.dead_letter(tenant_id, record):
                self.counters.tenant(tenant_id).dead_lettered += 1
                logger.warning("dead-lettered %s of tenant %s: %s", record.id, tenant_id, record.reason)

    # -- cursor upkeep --------------------------------------------------------

    async def _flush_loop(self) -> None:
        """Durable cursors every `ack_interval` (they bound what a client may get again after
        a crash), ephemeral ones every `EPHEMERAL_FLUSH_EVERY` intervals (their position is
        only for operators to read: nobody resumes from it)."""
        pause, ticks = 0.0, 0
        while True:
            await asyncio.sleep(max(self.config.ack_interval, pause))
            ticks += 1
            try:
                await self.flush(durable_only=ticks % EPHEMERAL_FLUSH_EVERY != 0)
            except REDIS_ERRORS as error:
                pause = next_pause(pause)
                self._on_outage(error, FLUSH)
                continue
            pause = 0.0
            self._on_recovery(FLUSH)

    async def _owner_loop(self) -> None:
        """End durable subscriptions whose name a subscription elsewhere took over."""
        while True:
            await asyncio.sleep(self.config.owner_check_interval)
            held = list(self._durables.items())
            try:
                owners = await self.store.durable_owners([name for name, _ in held]) if held else []
            except REDIS_ERRORS as error:
                self._on_outage(error, OWNERS)
                continue
            self._on_recovery(OWNERS)
            for (_, subscriber), owner in zip(held, owners, strict=True):
                if owner is not None and owner != subscriber.owner:
                    subscriber.fail(DurableTakenOver("A newer subscription took over this durable cursor"))

    def _on_outage(self, error: BaseException, source: str = COMMANDS) -> None:
        """`source` met a Redis error; the first one of an outage is logged."""
        if not self._failing:
            logger.error("Redis unavailable (%s); retrying with backoff", error)
        self._failing.add(source)
        self.available = False

    def _on_recovery(self, *sources: str) -> None:
        """`sources` work again (none named: Redis answered a probe, so all do); the
        outage ends, and is logged, once none is failing."""
        if not self._failing:
            return
        self._failing.difference_update(sources or self._failing)
        if not self._failing:
            logger.warning("Redis available again")
            self.available = True


class Deliveries:
    """A subscription's accepted entries, in order (`Hub.deliveries`).

    An iterator object rather than an async generator: it runs once per event
    per subscriber, and a plain coroutine call is the cheapest step asyncio has.
    The entry handed out last is acknowledged (counted delivered, its group
    marked to move) when the next one is asked for, that is after the caller
    wrote it; entries the filter skips are acknowledged at once.
    """

    __slots__ = ("_accept", "_counters", "_hub", "_last", "_subscriber")

    def __init__(self, hub: Hub, subscriber: Subscriber, accept: Accept) -> None:
        self._hub = hub
        self._subscriber = subscriber
        self._accept = accept
        self._counters = hub.counters.tenant(subscriber.tenant_id)
        self._last: Entry | None = None

    def __aiter__(self) -> Deliveries:
        return self

    async def __anext__(self) -> Entry:
        subscriber, counters = self._subscriber, self._counters
        self._settle()
        while True:
            record = await subscriber.next_record()
            if isinstance(record, Entry) and self._accept(record):
                self._last = record
                return record
            counters.skipped += 1
            self._hub.ack(subscriber, record)

    def _settle(self) -> None:
        """The entry handed out last was written: acknowledge it."""
        written, self._last = self._last, None
        if written is not None:
            self._counters.delivered += 1
            self._hub.ack(self._subscriber, written)

    def idle(self) -> Awaitable[None] | None:
        """`Subscriber.idle`: None when `__anext__` would return at once, else what it would
        wait on (the entry handed out last counts as written, as by `__anext__`)."""
        waiter = self._subscriber.idle()
        if waiter is not None:
            self._settle()
        return waiter

    def write_directly(
        self,
        write: Callable[[Any], bool],
        sift: Sift | None = None,
        flush: Callable[[], None] | None = None,
        convert: Callable[[Entry], Any] | None = None,
        latency: Observer | None = None,
    ) -> None:
        """Let the shared reader write accepted entries itself, in one pass over every
        subscriber of the event, while this subscription's task waits with nothing queued:
        `write(item)` writes it now and returns True, or returns False when the connection
        cannot take it now (that entry and what follows go to the task, which writes under
        the deadline). The item is `convert(entry)`, or the entry. An entry is acknowledged
        once `write` took it (and observed by `latency`), a skipped one at once. `sift`: the
        cohort's shared decisions, so that rejected entries are skipped in bulk. `flush()`,
        if given, ends each pass that wrote (`write` may hold its frames until then)."""
        self._subscriber.writer = DirectWrites(
            self._hub, self._subscriber, self._accept, self._counters, write, sift, flush, convert, latency
        )

    async def aclose(self) -> None:
        """Nothing to release (the group belongs to `Hub.subscribe`); the last entry
        handed out stays unacknowledged, as its write was never confirmed."""
        self._last = None


class Observer(Protocol):
    """What times a written entry (the delivery latency histogram)."""

    def observe(self, entry: Entry) -> None: ...


class DirectWrites:
    """The `DirectWriter` the shared reader writes through for one subscription
    (`Deliveries.write_directly`): one object holding what a delivery needs, not a chain of
    closures or wrappers, which would weigh more for every subscription and cost a call
    and an object more per delivery."""

    __slots__ = (
        "_accept", "_convert", "_counters", "_hub", "_latency", "_subscriber", "_write", "flush", "sift"
    )

    def __init__(
        self,
        hub: Hub,
        subscriber: Subscriber,
        accept: Accept,
        counters: TenantCounters,
        write: Callable[[Any], bool],
        sift: Sift | None,
        flush: Callable[[], None] | None,
        convert: Callable[[Entry], Any] | None,
        latency: Observer | None,
    ) -> None:
        self._hub = hub
        self._subscriber = subscriber
        self._accept = accept
        self._counters = counters
        self._write = write
        self._convert = convert
        self._latency = latency
        self.sift = sift
        self.flush = flush

    def take(self, entry: Record) -> bool:
        """Write an entry known to be accepted; False when the connection cannot take it now."""
        convert = self._convert
        if not self._write(entry if convert is None else convert(entry)):  # type: ignore[arg-type]
            return False
        self._counters.delivered += 1
        self._hub.ack(self._subscriber, entry, handed_out=False)
        if self._latency is not None:
            self._latency.observe(entry)  # type: ignore[arg-type]
        return True

    def direct(self, record: Record) -> bool:
        if isinstance(record, Entry) and self._accept(record):
            return self.take(record)
        self._counters.skipped += 1
        self._hub.ack(self._subscriber, record, handed_out=False)
        return True

    def skipped(self, record: Record | None, count: int) -> None:
        self._counters.skipped += count
        if record is not None:
            self._hub.ack(self._subscriber, record, handed_out=False)


def _parse_after(after: str) -> tuple[int, int]:
    try:
        return keys.parse_stream_id(after)
    except ValueError:
        raise InvalidCursor(f"'after' is not a stream entry id: {after!r}") from None


def _check_not_expired(after: str, bounds: StreamBounds) -> None:
    """Expired when entries after `after` were trimmed: Redis 7 records the newest
    deleted id; on older servers, an id before the oldest entry counts as expired."""
    position = _parse_after(after)
    if position == (0, 0):
        return
    if bounds.max_deleted is not None:
        expired = position < keys.parse_stream_id(bounds.max_deleted)
    elif bounds.first is not None:
        expired = position < keys.parse_stream_id(bounds.first)
    else:
        expired = position < keys.parse_stream_id(bounds.last_generated)
    if expired:
        raise CursorExpired(f"Events after {after} were trimmed from the stream; resubscribe without 'after'")


def _not_closing(chunk: list[Subscriber]) -> Callable[[int], bool]:
    return lambda index: not chunk[index].closing


def _move(subscriber: Subscriber) -> Move:
    return Move(subscriber.tenant_id, subscriber.group, subscriber.acked, subscriber.owner)


def new_process_id() -> str:
    return uuid.uuid4().hex[:12]


__all__ = ["ZERO_ID", "Accept", "Cursor", "Deliveries", "Durable", "Hub", "HubConfig", "new_process_id"]
