"""Cleaning up after processes that died, and after idle durable cursors.

Every gateway process keeps a liveness key alive (`ragline:process:<id>`,
with a TTL, holding the process's per-tenant figures for `stats`). Its ephemeral groups carry its id in their name, so when the
key is gone (kill -9, OOM, a network partition longer than the TTL) any
process may destroy them. Durable groups live until nobody holds them for
`durable_ttl`; the presence fields of a dead process (`streaming.presence`) go with its
groups. A sweep runs in every process, but a short lock makes only one
of them do it per interval. On a Redis Cluster the sweep's SCAN runs on every
primary; the liveness keys and the lock are single-key commands on any slot.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson
from redis.exceptions import ResponseError

from . import keys
from .connections import REDIS_ERRORS, AnyRedis
from .replies import text

logger = logging.getLogger(__name__)
Figures = Callable[[], dict[str, dict[str, int]]]


@dataclass(frozen=True)
class JanitorConfig:
    process_id: str
    orphan_timeout: float = 30.0     # a process silent this long is dead
    interval: float = 30.0           # seconds between sweeps (cluster-wide)
    durable_ttl: float = 24 * 3600.0  # idle durable cursors expire after this


@dataclass
class SweepReport:
    ephemeral_removed: int = 0
    durable_removed: int = 0
    presence_removed: int = 0


class Janitor:
    """Heartbeat of this process, and the periodic sweep."""

    def __init__(self, redis: AnyRedis, config: JanitorConfig, figures: Figures = dict) -> None:
        self.redis = redis
        self.config = config
        self.figures = figures  # published with the heartbeat, so `stats` can sum every process

    async def beat(self) -> None:
        ttl = max(1, int(self.config.orphan_timeout))
        await self.redis.set(keys.process_key(self.config.process_id), orjson.dumps(self.figures()), ex=ttl)

    async def retire(self) -> None:
        """On a clean exit: this process's groups are already gone; so is its key."""
        await self.redis.delete(keys.process_key(self.config.process_id))

    async def run(self) -> None:
        beat_every = max(0.2, self.config.orphan_timeout / 3)
        next_sweep = time.monotonic() + self.config.interval
        while True:
            await asyncio.sleep(min(beat_every, self.config.interval))
            try:
                await self.beat()
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + self.config.interval
                    if await self._take_turn():
                        await self.sweep()
            except REDIS_ERRORS as error:
                logger.debug("janitor skipped a round: %s", error)

    async def _take_turn(self) -> bool:
        lock_ttl = max(1, int(self.config.interval * 0.9))
        return bool(await self.redis.set(keys.JANITOR_LOCK_KEY, self.config.process_id, nx=True, ex=lock_ttl))

    async def sweep(self) -> SweepReport:
        """Remove orphaned ephemeral groups and expired durable ones, everywhere."""
        report = SweepReport()
        alive: dict[str, bool] = {}
        async for raw_key in self.redis.scan_iter(match=f"{keys.PREFIX}:{{*}}:events", count=500):
            key = text(raw_key, "replace")  # anyone may create a key that matches
            tenant_id = keys.tenant_from_events_key(key)
            if tenant_id is not None:
                await self._sweep_stream(key, tenant_id, alive, report)
        async for raw_key in self.redis.scan_iter(match=f"{keys.PREFIX}:{{*}}:presence", count=500):
            key = text(raw_key, "replace")
            if keys.tenant_from_presence_key(key) is not None:
                await self._sweep_presence(key, alive, report)
        if report.ephemeral_removed or report.durable_removed:
            logger.info(
                "janitor removed %s orphaned and %s expired durable groups",
                report.ephemeral_removed, report.durable_removed,
            )
        return report

    async def _sweep_stream(self, key: str, tenant_id: str, alive: dict[str, bool], report: SweepReport) -> None:
        try:
            groups = await self.redis.xinfo_groups(key)
        except ResponseError:
            return
        registry = keys.durable_registry_key(tenant_id)
        for info in groups:
            group = text(info["name"], "replace")  # as may a group on our stream
            parsed = keys.parse_group(group, tenant_id)
            if parsed is None:
                continue
            mark, parts = parsed
            if mark == keys.EPHEMERAL_MARK and parts and not await self._alive(parts[0], alive):
                await self.redis.xgroup_destroy(key, group)
                report.ephemeral_removed += 1
            elif mark == keys.DURABLE_MARK and await self._durable_expired(registry, group, alive):
                await self.redis.xgroup_destroy(key, group)
                await self.redis.hdel(registry, f"owner:{group}", f"seen:{group}", f"pos:{group}")
                report.durable_removed += 1

    async def _sweep_presence(self, key: str, alive: dict[str, bool], report: SweepReport) -> None:
        """Delete the presence fields of processes that died (nobody counts them already)."""
        dead = [
            field for field in map(text, await self.redis.hkeys(key))
            if not await self._alive(field.partition("|")[0], alive)
        ]
        if dead:
            report.presence_removed += await self.redis.hdel(key, *dead)

    async def _durable_expired(self, registry: str, group: str, alive: dict[str, bool]) -> bool:
        owner, seen = await self.redis.hmget(registry, [f"owner:{group}", f"seen:{group}"])
        if owner is not None and await self._alive(text(owner).split(":")[0], alive):
            return False
        if seen is None:  # never recorded: start its clock now
            await self.redis.hset(registry, f"seen:{group}", int(time.time()))
            return False
        return time.time() - float(text(seen)) > self.config.durable_ttl

    async def _alive(self, process_id: str, cache: dict[str, bool]) -> bool:
        if process_id not in cache:
            cache[process_id] = bool(await self.redis.exists(keys.process_key(process_id)))
        return cache[process_id]
