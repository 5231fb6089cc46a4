"""Who is online: the users with an open authenticated connection, on any gateway process.

Counting is per process. A connection that opens or closes changes this process's count of
its user (`PresenceBoard.opened`, `.closed`); a flush a moment later (FLUSH_DELAY, so a burst
of connections costs one round trip) writes each changed count as one field of the
tenant's presence hash, `<process id>|<user id>` -> `<connections>:<since, unix ms>`, or
deletes the field at zero (`keys.presence_key`): one HSET and one HDEL per tenant per
flush, however many users changed, and nothing for a user who closes and reopens within one
flush.

A process that dies leaves its fields behind: nobody counts them once its liveness key
expired (the orphan timeout, `streaming.janitor`), and the janitor deletes them.

`snapshot` reads one tenant's hash. Changes (`changes`) come from successive snapshots,
taken every `interval` seconds by one `PresenceWatch` per tenant and process, for all of
that tenant's watchers on the process: JOINED when a user appears, LEFT when one has been
gone for `grace` seconds (a user who reconnects within it, as clients do after a token
refresh or a gateway restart, produces no pair), or at once when every process that
counted it died (whether or not the janitor has deleted their fields yet). A snapshot
takes this process's own counts from memory, so a connection that just opened is in it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass
from enum import StrEnum

from . import keys
from .connections import REDIS_ERRORS, AnyRedis
from .replies import text

logger = logging.getLogger(__name__)
FLUSH_DELAY = 0.05   # seconds a count change waits for others to share its round trip
RETRY_DELAY = 1.0    # seconds before a failed flush is tried again


class ChangeKind(StrEnum):
    JOINED = "JOINED"
    LEFT = "LEFT"


@dataclass(frozen=True)
class PresentUser:
    """One user of a tenant: connections on the live processes, since when (unix seconds),
    and which processes count them."""

    user_id: str
    connections: int
    since: float
    processes: frozenset[str]


@dataclass(frozen=True)
class Change:
    kind: ChangeKind
    user_id: str
    connections: int
    at: float  # unix seconds


@dataclass(frozen=True)
class Snapshot:
    """A tenant's users on live processes, and which of the processes asked about are alive."""

    users: dict[str, PresentUser]
    alive: frozenset[str]


class PresenceBoard:
    """This process's connection counts by user, written through to Redis, and the watches."""

    def __init__(self, redis: AnyRedis, process_id: str, interval: float = 0.5, grace: float = 1.0) -> None:
        self.redis = redis
        self.process_id = process_id
        self.interval = interval
        self.grace = grace
        self._counts: dict[str, dict[str, tuple[int, int]]] = {}  # tenant -> user -> (connections, since ms)
        self._dirty: set[tuple[str, str]] = set()
        self._flusher: asyncio.Task[None] | None = None
        self._watches: dict[str, PresenceWatch] = {}
        self._alive: dict[str, tuple[bool, float]] = {}  # process id -> (alive, when checked)

    # -- this process's counts ------------------------------------------------

    def opened(self, tenant_id: str, user_id: str) -> None:
        users = self._counts.setdefault(tenant_id, {})
        count, since = users.get(user_id, (0, 0))
        users[user_id] = (count + 1, since or round(time.time() * 1000))
        self._changed((tenant_id, user_id))

    def closed(self, tenant_id: str, user_id: str) -> None:
        users = self._counts.get(tenant_id, {})
        count, since = users.pop(user_id, (0, 0))
        if count > 1:
            users[user_id] = (count - 1, since)
        elif not users:
            self._counts.pop(tenant_id, None)
        self._changed((tenant_id, user_id))

    def _changed(self, scope: tuple[str, str]) -> None:
        self._dirty.add(scope)
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_soon())

    async def _flush_soon(self) -> None:
        try:
            await asyncio.sleep(FLUSH_DELAY)
            while self._dirty:
                dirty, self._dirty = self._dirty, set()
                try:
                    await self._write(dirty)
                except BaseException as error:
                    self._dirty |= dirty  # written again later (or by `close`, when cancelled)
                    if not isinstance(error, REDIS_ERRORS):
                        raise
                    logger.debug("presence not written (%s): retrying", error)
                    await asyncio.sleep(RETRY_DELAY)
        finally:
            self._flusher = None

    async def _write(self, scopes: set[tuple[str, str]]) -> None:
        """Each scope's count as it is now (not the changes: a retry writes the same); one
        HSET and one HDEL per tenant, however many of its users changed."""
        written: dict[str, list[str]] = {}
        deleted: dict[str, list[str]] = {}
        for tenant_id, user_id in scopes:
            field = f"{self.process_id}|{user_id}"
            counted = self._counts.get(tenant_id, {}).get(user_id)
            if counted is None:
                deleted.setdefault(tenant_id, []).append(field)
            else:
                written.setdefault(tenant_id, []).extend((field, f"{counted[0]}:{counted[1]}"))
        async with self.redis.pipeline(transaction=False) as pipe:
            for tenant_id, fields in written.items():
                pipe.hset(keys.presence_key(tenant_id), items=fields)
            for tenant_id, names in deleted.items():
                pipe.hdel(keys.presence_key(tenant_id), *names)
            await pipe.execute()

    async def close(self) -> None:
        """Stop the watches; write the last changes (after the drain: every count is zero)."""
        for watch in list(self._watches.values()):
            await watch.stop()
        flusher = self._flusher
        if flusher is not None:
            flusher.cancel()
            with suppress(asyncio.CancelledError):
                await flusher
        if self._dirty:
            with suppress(*REDIS_ERRORS):
                await self._write(self._dirty)

    # -- reading --------------------------------------------------------------

    async def snapshot(self, tenant_id: str, processes: Iterable[str] = ()) -> Snapshot:
        """The tenant's users on live processes: this process's counts as they are now, the
        others' as written (one HGETALL, and one EXISTS per other process not checked within
        the last `interval`); also which of `processes` are alive."""
        fields = await self.redis.hgetall(keys.presence_key(tenant_id))
        counted: list[tuple[str, str, int, int]] = [  # (process, user, connections, since ms)
            (self.process_id, user_id, count, since) for user_id, (count, since) in self._counts.get(tenant_id, {}).items()
        ]
        for raw_field, raw_value in fields.items():
            process_id, _, user_id = text(raw_field, "replace").partition("|")
            count_text, _, since_text = text(raw_value, "replace").partition(":")
            if process_id != self.process_id and user_id and count_text.isdigit() and since_text.isdigit():
                counted.append((process_id, user_id, int(count_text), int(since_text)))
        alive = await self._alive_processes({process_id for process_id, *_ in counted} | set(processes))
        users: dict[str, PresentUser] = {}
        for process_id, user_id, count, since_ms in counted:
            if process_id not in alive or count <= 0:
                continue
            known = users.get(user_id)
            since, counted_by = since_ms / 1000, frozenset({process_id})
            if known is not None:
                count, since = known.connections + count, min(known.since, since)
                counted_by |= known.processes
            users[user_id] = PresentUser(user_id, count, since, counted_by)
        return Snapshot(users, frozenset(alive))

    async def _alive_processes(self, process_ids: set[str]) -> set[str]:
        now = time.monotonic()
        unknown = [
            p for p in process_ids
            if p != self.process_id and (p not in self._alive or now - self._alive[p][1] >= self.interval)
        ]
        if unknown:
            async with self.redis.pipeline(transaction=False) as pipe:
                for process_id in unknown:
                    pipe.exists(keys.process_key(process_id))
                found = await pipe.execute()
            for process_id, exists in zip(unknown, found, strict=True):
                self._alive[process_id] = (bool(exists), now)
        for gone in [p for p, (_, checked) in self._alive.items() if now - checked > 60 * self.interval]:
            del self._alive[gone]
        return {p for p in process_ids if p == self.process_id or self._alive.get(p, (False, 0.0))[0]}

    async def listen(self, tenant_id: str) -> Listener:
        """The tenant's changes, starting with JOINED for each user present now. Reads the
        first snapshot now (raising what Redis raised, if it cannot); `close` the listener."""
        watch = self._watches.get(tenant_id)
        if watch is None:
            watch = self._watches[tenant_id] = PresenceWatch(self, tenant_id)
        listener = Listener(self, watch)
        try:
            await watch.started()
        except BaseException:
            await listener.close()
            raise
        for user in sorted(watch.present.values(), key=lambda user: user.user_id):
            listener.queue.put_nowait(Change(ChangeKind.JOINED, user.user_id, user.connections, user.since))
        return listener

    async def _forget(self, listener: Listener) -> None:
        watch = listener.watch
        watch.listeners.discard(listener.queue)
        if not watch.listeners and self._watches.get(watch.tenant_id) is watch:
            del self._watches[watch.tenant_id]
            await watch.stop()


class Listener:
    """One watcher's changes, in order."""

    def __init__(self, board: PresenceBoard, watch: PresenceWatch) -> None:
        self.board = board
        self.watch = watch
        self.queue: asyncio.Queue[Change] = asyncio.Queue()
        watch.listeners.add(self.queue)

    def __aiter__(self) -> Listener:
        return self

    async def __anext__(self) -> Change:
        return await self.queue.get()

    async def close(self) -> None:
        await self.board._forget(self)


class PresenceWatch:
    """One tenant's successive snapshots on this process, turned into changes for its listeners."""

    def __init__(self, board: PresenceBoard, tenant_id: str) -> None:
        self.board = board
        self.tenant_id = tenant_id
        self.present: dict[str, PresentUser] = {}  # announced and not yet LEFT
        self.listeners: set[asyncio.Queue[Change]] = set()
        self._absent: dict[str, float] = {}  # user -> when first seen gone (monotonic)
        self._first: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def started(self) -> None:
        """Wait for the first snapshot (it raises what reading it raised)."""
        await asyncio.shield(self._first)

    async def stop(self) -> None:
        self._task.cancel()
        with suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        try:
            self.present = dict((await self.board.snapshot(self.tenant_id)).users)
        except REDIS_ERRORS as error:
            self._first.set_exception(error)
            self._first.exception()  # retrieved: the watchers see it
            return
        self._first.set_result(None)
        while True:
            await asyncio.sleep(self.board.interval)
            try:
                counted_by = set().union(*(user.processes for user in self.present.values()))
                snapshot = await self.board.snapshot(self.tenant_id, counted_by)
            except REDIS_ERRORS as error:
                logger.debug("presence of tenant %s not read (%s)", self.tenant_id, error)
                continue
            for change in self.update(snapshot, time.monotonic()):
                for queue in self.listeners:
                    queue.put_nowait(change)

    def update(self, snapshot: Snapshot, now: float) -> list[Change]:
        changes: list[Change] = []
        for user_id, user in sorted(snapshot.users.items()):
            self._absent.pop(user_id, None)
            if user_id not in self.present:
                changes.append(Change(ChangeKind.JOINED, user_id, user.connections, user.since))
            self.present[user_id] = user
        for user_id in sorted(self.present.keys() - snapshot.users.keys()):
            gone_since = self._absent.setdefault(user_id, now)
            died = not self.present[user_id].processes & snapshot.alive  # every process that counted it
            if died or now - gone_since >= self.board.grace:
                del self.present[user_id]
                self._absent.pop(user_id, None)
                changes.append(Change(ChangeKind.LEFT, user_id, 0, time.time()))
        return changes


__all__ = ["Change", "ChangeKind", "Listener", "PresenceBoard", "PresentUser", "Snapshot"]
