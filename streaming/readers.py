"""How the shared reader learns of new entries: one blocking XREAD, or notified reads on a cluster.

On one Redis server the hub blocks in a single `XREAD` over every stream with local
subscribers, on a connection of its own, and a new stream wakes it at once with
`CLIENT UNBLOCK` (`BlockingReader`).

Redis Cluster refuses a multi-key command whose keys hash to different slots
(CROSSSLOT), even when one node holds them all, and every tenant has a slot of its
own: a blocking read over many tenants cannot exist there, and one per tenant would
cost a connection per tenant. So on a cluster each primary tells the reader which
streams grew (`NotifiedReader`): one connection per primary listens to the node's
`xadd` keyevent notifications (`notify-keyspace-events` with `E` and `t`, set when
missing), and the reader fetches those streams with non-blocking reads (`XRANGE`
after the head), one pipeline per node. Every `block_ms` it reads every stream
anyway, so a lost notification costs latency, never an entry; a node that refuses
to send notifications is polled every `poll_interval` instead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ClusterDownError, RedisClusterException, ResponseError, TryAgainError

from .connections import REDIS_ERRORS, AnyRedis, node_url, open_cluster_reads, open_single
from .replies import text
from .retry import FIRST_PAUSE, next_pause

logger = logging.getLogger(__name__)
RawReply = list[tuple[Any, list[Any]]]  # XREAD's reply: (stream key, [(entry id, fields), ...])
NOTIFY_CONFIG = "notify-keyspace-events"
XADD_CHANNEL = "__keyevent@0__:xadd"
MAP_RETRY_PAUSE = 1.0  # seconds before a reader that could not learn the slot map asks again


class StreamReader(Protocol):
    """What the hub's read loop needs: the entries after each head, waiting for some."""

    @property
    def failure(self) -> BaseException | None:
        """The latest error of a read that partly failed (some cluster node), else None."""

    async def read(self, heads: dict[str, str], count: int, block_ms: int) -> RawReply:
        """Entries after `heads` (stream key -> id), waiting up to `block_ms` for some."""

    async def wake(self, key: str) -> None:
        """`key` was just added to the heads: end a wait so the next read includes it."""

    async def aclose(self) -> None: ...


def open_reader(url: str, commands: AnyRedis, **options: Any) -> StreamReader:
    """The reader for `url`, on connections of its own: blocking on one server (woken
    through `commands`), notified on a cluster."""
    if isinstance(commands, RedisCluster):
        reads = open_cluster_reads(url, **options)
        return NotifiedReader(reads, lambda host, port: open_single(node_url(url, host, port), **options))
    return BlockingReader(open_single(url, **options), commands)


class BlockingReader:
    """One server: a single blocking XREAD over every stream, on a connection of its own."""

    failure: BaseException | None = None  # a failed read raises instead

    def __init__(self, reader: Redis, commands: Redis) -> None:
        self._reader = reader
        self._commands = commands  # sends CLIENT UNBLOCK while the reader is blocked
        self._client_id: int | None = None
        self._blocking = False

    async def read(self, heads: dict[str, str], count: int, block_ms: int) -> RawReply:
        if self._client_id is None:
            self._client_id = int(await self._reader.client_id())
        self._blocking = True
        try:
            reply: Any = await self._reader.xread(heads, count=count, block=block_ms)  # type: ignore[arg-type]
        except BaseException:
            self._client_id = None  # the connection may be new next time
            raise
        finally:
            self._blocking = False
        return list(reply or [])

    async def wake(self, key: str) -> None:
        if self._blocking and self._client_id is not None:
            with suppress(*REDIS_ERRORS):
                await self._commands.client_unblock(self._client_id)

    async def aclose(self) -> None:
        await self._reader.aclose()


@dataclass
class _Backoff:
    """A cluster node whose reads failed: not tried again before `retry_at`."""

    pause: float
    retry_at: float


@dataclass
class _NodeRead:
    """One node's pipelined reads, in flight while the other nodes' go on."""

    keys: list[str]
    task: asyncio.Task[RawReply]


class NotifiedReader:
    """Redis Cluster: reads the streams that the primaries' `xadd` notifications name.

    The reads go through a cluster client of the reader's own (as the blocking reader
    has its own connection on one server), which routes each stream to its slot's
    node and follows MOVED and ASK. They are pipelined per node, and each node's
    pipeline runs on its own: a node that fails, or hangs until its socket times
    out, delays only its own tenants, whose streams are retried with backoff after
    the slot map is refreshed, while the other nodes' results are handed over.
    """

    def __init__(
        self,
        cluster: RedisCluster,
        open_node: Callable[[str, int], Redis],
        *,
        poll_interval: float = 0.1,
        straggler: float = 0.05,
    ) -> None:
        self._cluster = cluster
        self._open_node = open_node  # one connection to one node, for its notifications
        self._poll_interval = poll_interval
        self._straggler = straggler    # how long a read waits for a slow node before handing over the rest
        self._listeners: dict[str, NodeListener] = {}
        self._wanted: set[str] = set()
        self._dirty: set[str] = set()  # wanted streams that may have new entries
        self._everything = True        # read every wanted stream next (start, resubscribed, quiet)
        self._changed = asyncio.Event()
        self._inflight: dict[str, _NodeRead] = {}
        self._backoff: dict[str, _Backoff] = {}
        self.failure: BaseException | None = None

    async def read(self, heads: dict[str, str], count: int, block_ms: int) -> RawReply:
        self._wanted = set(heads)
        self._dirty &= self._wanted  # a key woken for a new feed is in `heads` by now
        try:
            await self._cluster.initialize()  # once; later refreshes follow node failures
            await self._follow_primaries()
        except REDIS_ERRORS as error:
            self.failure = error
            await asyncio.sleep(MAP_RETRY_PAUSE)
            return []
        if not self._finished():
            await self._wait(block_ms)
            started = self._start_reads(self._take_due(), heads, count)
            if started:
                await asyncio.wait(started, timeout=self._straggler)
        return self._collect(count)

    async def wake(self, key: str) -> None:
        self._dirty.add(key)  # not wanted yet: the wait ends, and the next read has it in `heads`
        self._changed.set()

    async def aclose(self) -> None:
        reads, self._inflight = list(self._inflight.values()), {}
        for read in reads:
            read.task.cancel()
        await asyncio.gather(*(read.task for read in reads), return_exceptions=True)
        listeners, self._listeners = list(self._listeners.values()), {}
        for listener in listeners:
            await listener.stop()
        await self._cluster.aclose()

    # -- notifications -------------------------------------------------------

    def _notified(self, key: str) -> None:
        if key in self._wanted:
            self._dirty.add(key)
            self._changed.set()

    def _resubscribed(self) -> None:
        """Notifications before the subscription took effect were missed: read everything."""
        self._everything = True
        self._changed.set()

    async def _follow_primaries(self) -> None:
        """One listener per current primary; a failover or a new node changes the set."""
        primaries = {node.name: node for node in self._cluster.get_primaries()}
        if primaries.keys() == self._listeners.keys():
            return
        gone = [name for name in self._listeners if name not in primaries]
        new = [name for name in primaries if name not in self._listeners]
        if self._listeners:
            logger.warning(
                "Redis Cluster primaries changed: %s gone, %s new; reading their tenants' streams there",
                ", ".join(gone) or "none", ", ".join(new) or "none",
            )
        for name in gone:
            await self._listeners.pop(name).stop()
        self._backoff.clear()  # a new map: every node's streams may be read again at once
        self._everything = True
        for name in new:
            node = primaries[name]
            client = self._open_node(node.host, int(node.port))
            self._listeners[name] = NodeListener(
                name, client, self._notified, self._resubscribed, self._poll_interval
            )

    # -- reading -------------------------------------------------------------

    async def _wait(self, block_ms: int) -> None:
        """Until a wanted stream is due (notified, woken, its node's pause over) or a
        node's read finished; or until the quiet period ends, then every stream is due."""
        every_node_notifies = bool(self._listeners) and all(n.notified for n in self._listeners.values())
        quiet = block_ms / 1000 if every_node_notifies else self._poll_interval
        deadline = time.monotonic() + quiet
        while not self._everything and not self._finished():
            now = time.monotonic()
            if now >= deadline:
                self._everything = True
                return
            if not self._dirty <= self._wanted:
                return  # woken for a new stream: the hub reads again with it in `heads`
            # A stream whose node is being read waits for that read (it sets `_changed`):
            # counting it as due would spin without ever letting the read finish.
            nodes = {self._node_name(key) for key in self._dirty}
            retry_at = [self._retry_at_node(name) for name in nodes if name not in self._inflight]
            if any(at <= now for at in retry_at):
                return
            self._changed.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min([deadline, *retry_at]) - now)

    def _take_due(self) -> set[str]:
        """The streams to read now; those being read, or of nodes still pausing, stay marked."""
        candidates = set(self._wanted) if self._everything else self._dirty & self._wanted
        self._everything = False
        now = time.monotonic()
        due = set()
        for key in candidates:
            name = self._node_name(key)
            if name not in self._inflight and self._retry_at_node(name) <= now:
                due.add(key)
        self._dirty = (self._dirty | candidates) - due
        return due

    def _start_reads(self, due: set[str], heads: dict[str, str], count: int) -> list[asyncio.Task[RawReply]]:
        by_node: dict[str, list[str]] = {}
        for key in due:
            by_node.setdefault(self._node_name(key), []).append(key)
        started = []
        for name, keys in by_node.items():
            if name in self._inflight:  # that node is still busy with other streams: next time
                self._dirty.update(keys)
                continue
            task = asyncio.create_task(self._read_node(name, keys, heads, count), name=f"ragline-read:{name}")
            task.add_done_callback(lambda _: self._changed.set())
            self._inflight[name] = _NodeRead(keys, task)
            started.append(task)
        return started

    def _finished(self) -> bool:
        return any(read.task.done() for read in self._inflight.values())

    def _collect(self, count: int) -> RawReply:
        """The replies of the node reads that finished; failed ones are marked for a retry."""
        reply: RawReply = []
        failure: BaseException | None = None
        for name, read in list(self._inflight.items()):
            if not read.task.done():
                continue
            del self._inflight[name]
            error = read.task.exception()
            if isinstance(error, REDIS_ERRORS):
                failure = error
                self._dirty.update(read.keys)
                self._pause(name, error)
            elif error is not None:
                raise error
            else:
                self._backoff.pop(name, None)
                outcome = read.task.result()
                reply += outcome
                self._dirty.update(text(key) for key, entries in outcome if len(entries) >= count)
        self.failure = failure or (self.failure if self._backoff else None)
        return reply

    async def _read_node(self, name: str, keys: list[str], heads: dict[str, str], count: int) -> RawReply:
        """What each stream holds after its head: `XRANGE key (head + COUNT n`, which is a
        non-blocking XREAD whose key the client can locate itself (for XREAD redis-py
        asks a node with COMMAND GETKEYS first, one more round trip per stream)."""
        try:
            async with self._cluster.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.xrange(key, min=f"({heads[key]}", count=count)
                replies = await pipe.execute()
        except REDIS_ERRORS:
            # The node failed or no longer owns the slots: learn the current map (a
            # failover promotes a replica) before the streams are read again.
            with suppress(*REDIS_ERRORS):
                await self._cluster.nodes_manager.initialize(last_failed_node_name=name)
            raise
        return [(key, entries) for key, entries in zip(keys, replies, strict=True) if entries]

    def _node_name(self, key: str) -> str:
        try:
            node = self._cluster.get_node_from_key(key)
        except RedisClusterException:  # slot not covered while the map is being refreshed
            return "?"
        return node.name if node is not None else "?"

    def _retry_at_node(self, name: str) -> float:
        backoff = self._backoff.get(name)
        return backoff.retry_at if backoff is not None else 0.0

    def _pause(self, name: str, error: BaseException) -> None:
        """Back off from a failing node; a node that says the cluster is down (while a
        failed primary's replica is being promoted) is asked again after the shortest
        pause, as that ends all at once."""
        previous = self._backoff.get(name)
        pause = next_pause(previous.pause if previous else 0.0)
        if isinstance(error, ClusterDownError | TryAgainError):
            pause = FIRST_PAUSE
        self._backoff[name] = _Backoff(pause, time.monotonic() + pause)


@dataclass(eq=False)
class NodeListener:
    """The `xadd` keyevents of one primary, on a connection of its own; listening from
    construction until `stop`.

    `notified` is True while subscribed; False before, after an error, and for good
    when the node will not send them (CONFIG refused), so the reader polls it.
    """

    name: str
    client: Redis
    on_key: Callable[[str], None]        # a stream of the node grew
    on_subscribed: Callable[[], None]    # (re)subscribed: notifications before were missed
    poll_interval: float                 # how often the reader polls a node that sends none
    notified: bool = field(default=False, init=False)
    _pause: float = field(default=0.0, init=False)
    _task: asyncio.Task[None] = field(init=False)

    def __post_init__(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"ragline-notifications:{self.name}")

    async def stop(self) -> None:
        self._task.cancel()
        with suppress(asyncio.CancelledError):
            await self._task
        with suppress(*REDIS_ERRORS):
            await self.client.aclose()

    async def _run(self) -> None:
        while True:
            try:
                if not await self._enable():
                    return  # the reader polls this node
                await self._listen()
            except REDIS_ERRORS as error:
                self.notified = False
                self._pause = next_pause(self._pause)
                logger.debug("notifications of Redis node %s interrupted (%s)", self.name, error)
                await asyncio.sleep(self._pause)

    async def _enable(self) -> bool:
        """Make the node publish `xadd` keyevents unless it already does; False if it refuses."""
        try:
            reply = await self.client.config_get(NOTIFY_CONFIG)
            flags = next((text(value) for value in reply.values()), "")
            missing = ("" if "E" in flags else "E") + ("" if "t" in flags or "A" in flags else "t")
            if missing:
                await self.client.config_set(NOTIFY_CONFIG, flags + missing)
                logger.info("Redis node %s: %s set to %r for the shared reader", self.name, NOTIFY_CONFIG, flags + missing)
        except ResponseError as error:
            logger.warning(
                "Redis node %s does not send stream notifications and refused to (%s): its streams are "
                "read every %s ms; set %s to include 'Et' to read them as soon as they grow",
                self.name, error, int(self.poll_interval * 1000), NOTIFY_CONFIG,
            )
            return False
        return True

    async def _listen(self) -> None:
        pubsub = self.client.pubsub()
        try:
            await pubsub.subscribe(XADD_CHANNEL)
            async for message in pubsub.listen():
                if message["type"] == "message":
                    self.on_key(text(message["data"], "replace"))  # any stream of the node
                elif message["type"] == "subscribe":
                    self.notified, self._pause = True, 0.0
                    self.on_subscribed()
        finally:
            self.notified = False
            await pubsub.aclose()  # type: ignore[no-untyped-call]
