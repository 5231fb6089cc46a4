"""The bridge: moves entries of the shared streams into the per-tenant streams.

RAGline's older producers write every tenant's events to `ragline:stream:orders`,
`ragline:stream:notifications` and `ragline:stream:system`, with fields
`tenant_id`, `event_type` and `payload`. The bridge reads them through its own
consumer group (`ragline-bridge`) and appends each one to
`ragline:{<tenant_id>}:events`, or to the dead-letter stream `ragline:bridge:dlq`
when the tenant is missing or invalid.

At least once, never twice: a Lua script appends the copy and sets a marker
named after the source entry in one step (both keys in the tenant's cluster
slot), and skips entries whose marker exists; the entry is acknowledged on the
shared stream only afterwards. A bridge killed between the copy and the XACK
finds its entries pending when it restarts (under the same consumer name) and
skips the ones already copied. Entries pending in a consumer idle for
`claim_idle_ms` (a bridge that never came back) are taken over with XAUTOCLAIM.
Per tenant, copies keep the order of each shared stream (entries taken over
from a dead bridge of another name arrive late).

On a Redis Cluster the shared streams hash to different slots, and one XREADGROUP
cannot span slots: the bridge then follows each slot's streams in a loop of its own.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import ResponseError

from . import keys
from .connections import REDIS_ERRORS, AnyRedis, queue_script, same_slot_groups
from .publish import DEFAULT_MAXLEN
from .replies import text
from .retry import next_pause
from .store import APPEND_ONCE_SCRIPT, DLQ_MAXLEN

logger = logging.getLogger(__name__)

RawEntry = tuple[Any, dict[Any, Any]]  # (entry id, fields) as redis-py returns them
COPIED_FIELDS = ("tenant_id", "event_type", "payload", "event_id", "occurred_at")
# A marker must outlive an entry's time in the pending list (a bridge that is down for
# days still skips what it copied before dying); once the entry is acknowledged it
# only has to cover another bridge that took the entry over while this one stalled.
PENDING_MARKER_TTL_SECONDS = 7 * 24 * 3600
ACKED_MARKER_TTL_SECONDS = 600


def default_consumer() -> str:
    """The host name: stable across restarts, so a restarted bridge retries its own pending entries."""
    return socket.gethostname() or "ragline-bridge"


@dataclass(frozen=True)
class BridgeConfig:
    consumer: str = field(default_factory=default_consumer)
    sources: tuple[str, ...] = keys.SHARED_STREAM_NAMES  # names under ragline:stream:
    batch: int = 500                 # entries per stream per read, copied in one round trip
    block_ms: int = 1000             # how long a read waits for new entries
    claim_idle_ms: int = 60_000      # take over entries idle this long in another consumer
    claim_interval: float = 30.0     # seconds between XAUTOCLAIM sweeps
    tenant_maxlen: int = DEFAULT_MAXLEN


@dataclass
class BridgeCounters:
    copied: int = 0
    duplicates: int = 0              # already copied before (a restart, a takeover)
    dead_lettered: int = 0


@dataclass(frozen=True, slots=True)
class _Append:
    """One shared-stream entry's copy, to its tenant's stream or to the bridge DLQ."""

    target: str
    marker: str          # set with the append; its presence means "already appended"
    maxlen: int
    fields: dict[str, Any]
    dead_letter: bool


class Bridge:
    """One bridge process's consumer in the `ragline-bridge` group of every shared stream."""

    def __init__(self, redis: AnyRedis, config: BridgeConfig | None = None) -> None:
        self.redis = redis
        self.config = config or BridgeConfig()
        self.counters = BridgeCounters()
        self._append_once = redis.register_script(APPEND_ONCE_SCRIPT)  # the marker and the stream share a slot
        self._streams = {keys.shared_stream_key(name): name for name in self.config.sources}

    async def run(self) -> None:
        """Bridge until cancelled, retrying with backoff while Redis is unreachable.
        Cancelling at any point is safe: unacknowledged entries are retried on restart."""
        logger.info("bridge %s moving %s into per-tenant streams", self.config.consumer, ", ".join(self._streams))
        pause = 0.0
        while True:
            try:
                await self.start()
                if pause:
                    logger.info("bridge: resumed")
                pause = 0.0
                await self._follow_all()
            except REDIS_ERRORS as error:
                if not pause:
                    logger.warning("bridge: Redis error (%s); retrying with backoff", error)
                pause = next_pause(pause)
                await asyncio.sleep(pause)

    async def start(self) -> None:
        """Create the groups, then finish what this consumer read before it stopped."""
        for stream in self._streams:
            await self._create_group(stream)
        for stream in self._streams:
            await self.retry_own_pending(stream)

    async def _follow_all(self) -> None:
        """Follow the shared streams: in one loop where one read may take them all (one
        server), else one loop per cluster slot; the first error stops every loop."""
        groups = same_slot_groups(self.redis, list(self._streams))
        if len(groups) == 1:
            await self._follow(groups[0])
            return
        tasks = [asyncio.create_task(self._follow(streams), name="ragline-bridge-slot") for streams in groups]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _follow(self, streams: list[str]) -> None:
        next_claim = 0.0
        task = asyncio.current_task()
        while True:
            if task is not None and task.cancelling():
                raise asyncio.CancelledError  # a cancel the Redis client swallowed mid-command
            if time.monotonic() >= next_claim:
                for stream in streams:
                    await self.claim_idle(stream)
                next_claim = time.monotonic() + self.config.claim_interval
            await self.step(streams)

    async def step(self, streams: list[str] | None = None) -> int:
        """Read and bridge one batch of new entries of `streams` (all by default; on a
        cluster, streams of one slot), blocking up to `block_ms`; how many."""
        total = 0
        wanted = dict.fromkeys(self._streams if streams is None else streams, ">")
        for stream, entries in await self._read(wanted, self.config.block_ms):
            await self.bridge(stream, entries)
            total += len(entries)
        return total

    async def retry_own_pending(self, stream: str) -> None:
        """Entries this consumer read but did not acknowledge (it was killed, or Redis failed)."""
        after = "0"
        while True:
            replies = await self._read({stream: after}, None)
            entries = replies[0][1] if replies else []
            if not entries:
                return
            await self.bridge(stream, entries)
            after = text(entries[-1][0])

    async def claim_idle(self, stream: str) -> None:
        """Take over entries left pending by consumers idle for `claim_idle_ms` (dead bridges)."""
        cursor = "0-0"
        while True:
            reply: Any = await self.redis.xautoclaim(
                stream, keys.BRIDGE_GROUP, self.config.consumer, self.config.claim_idle_ms,
                start_id=cursor, count=self.config.batch,
            )
            cursor, entries = text(reply[0]), [e for e in reply[1] if e[0] is not None]
            if entries:
                logger.info("bridge: took over %s idle entries of %s", len(entries), stream)
                await self.bridge(stream, entries)
            if cursor == "0-0":
                return

    async def _read(self, streams: dict[str, str], block: int | None) -> list[tuple[str, list[RawEntry]]]:
        replies: Any = await self.redis.xreadgroup(
            keys.BRIDGE_GROUP, self.config.consumer, streams, count=self.config.batch, block=block  # type: ignore[arg-type]
        )
        return [(text(stream), entries) for stream, entries in replies or []]

    async def bridge(self, stream: str, entries: list[RawEntry]) -> None:
        """Copy (or dead-letter) `entries` of `stream` in their order, then acknowledge them."""
        appends = await self.copy(stream, entries)
        await self._acknowledge(stream, [text(entry_id) for entry_id, _ in entries], appends)

    async def copy(self, stream: str, entries: list[RawEntry]) -> list[_Append]:
        """Append each entry to its tenant's stream (or the DLQ) in one round trip,
        skipping those whose marker says they were appended before."""
        source = self._streams[stream]
        plans = [_plan(stream, source, text(entry_id), raw, self.config.tenant_maxlen) for entry_id, raw in entries]
        appends = [plan for plan in plans if plan is not None]  # None: trimmed while pending
        if appends:
            async with self.redis.pipeline(transaction=False) as pipe:
                for append in appends:
                    args = [PENDING_MARKER_TTL_SECONDS, append.maxlen, *_flat(append.fields)]
                    await queue_script(pipe, self._append_once, [append.target, append.marker], args)
                written = await pipe.execute()
            self._count(appends, written)
        return appends

    async def _acknowledge(self, stream: str, ids: list[str], appends: list[_Append]) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xack(stream, keys.BRIDGE_GROUP, *ids)
            for append in appends:
                pipe.expire(append.marker, ACKED_MARKER_TTL_SECONDS)
            await pipe.execute()

    def _count(self, appends: list[_Append], written: list[Any]) -> None:
        fresh = [append for append, result in zip(appends, written, strict=True) if result == 1]
        dead = sum(append.dead_letter for append in fresh)
        duplicates = len(appends) - len(fresh)
        self.counters.copied += len(fresh) - dead
        self.counters.dead_lettered += dead
        self.counters.duplicates += duplicates
        if duplicates or dead:
            logger.info(
                "bridge: %s copied, %s already copied before, %s dead-lettered", len(fresh) - dead, duplicates, dead
            )

    async def _create_group(self, stream: str) -> None:
        """The group starts at the beginning: what producers wrote before the first bridge ran is moved too."""
        try:
            await self.redis.xgroup_create(stream, keys.BRIDGE_GROUP, id="0", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise


def _plan(stream: str, source: str, entry_id: str, raw: dict[Any, Any], tenant_maxlen: int) -> _Append | None:
    """Where one shared-stream entry goes: its tenant's stream, the DLQ, or nowhere (it is gone)."""
    if not raw:
        return None
    # Producers' bytes: names and the tenant decoded leniently (an invalid one is dead-
    # lettered, not a crash of the bridge); the values are copied as they are.
    fields = {text(name, "replace"): value for name, value in raw.items()}
    provenance = {"source_stream": stream, "source_id": entry_id}
    tenant = fields.get("tenant_id")
    tenant_id = None if tenant is None else text(tenant, "replace")
    if tenant_id is None or not keys.is_valid_id(tenant_id):
        reason = "missing tenant_id" if tenant_id is None else "invalid tenant_id"
        return _Append(
            keys.BRIDGE_DLQ_KEY, keys.bridge_dlq_seen_key(source, entry_id), DLQ_MAXLEN,
            {**fields, **provenance, "reason": reason}, dead_letter=True,
        )
    copied = {name: fields[name] for name in COPIED_FIELDS if name in fields}
    return _Append(
        keys.events_key(tenant_id), keys.bridge_marker_key(tenant_id, source, entry_id), tenant_maxlen,
        {**copied, **provenance}, dead_letter=False,
    )


def _flat(fields: dict[str, Any]) -> list[Any]:
    return [part for pair in fields.items() for part in pair]
