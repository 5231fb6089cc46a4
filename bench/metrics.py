"""What the harness measures: latency histograms, server process trees, and Redis.

Latencies are kept as log-bucketed histograms (2% resolution) so the client
processes can each summarise millions of receipts and the orchestrator can
merge them exactly. Server CPU and RSS come from psutil over the target's
process tree (workers included). Redis numbers come from INFO and CLIENT
LIST; the monitor counts its own commands so they can be subtracted.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import psutil
import redis.asyncio as aioredis

from bench.protocol import BENCH_CLIENT_PREFIX, events_group_prefix, stream_key

logger = logging.getLogger(__name__)

_LOG_BASE = math.log(1.02)


@dataclass
class LatencyHistogram:
    """Latencies in seconds, bucketed by powers of 1.02 of a microsecond."""

    counts: Counter[int] = field(default_factory=Counter)
    total: int = 0
    max_s: float = 0.0
    sum_s: float = 0.0

    def add(self, seconds: float) -> None:
        micros = seconds * 1e6
        self.counts[int(math.log(micros) / _LOG_BASE) if micros > 1.0 else 0] += 1
        self.total += 1
        self.sum_s += seconds
        self.max_s = max(self.max_s, seconds)

    def merge(self, other: LatencyHistogram) -> None:
        self.counts.update(other.counts)
        self.total += other.total
        self.sum_s += other.sum_s
        self.max_s = max(self.max_s, other.max_s)

    def percentile(self, q: float) -> float | None:
        """The q-quantile (0..1) in seconds, to within the bucket width; None when empty."""
        if not self.total:
            return None
        rank = q * self.total
        seen = 0
        for bucket in sorted(self.counts):
            seen += self.counts[bucket]
            if seen >= rank:
                return min(math.exp((bucket + 0.5) * _LOG_BASE) / 1e6, self.max_s)
        return self.max_s

    def to_dict(self) -> dict[str, Any]:
        return {
            "counts": dict(self.counts),
            "total": self.total,
            "max_s": self.max_s,
            "sum_s": self.sum_s,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyHistogram:
        counts = Counter({int(k): int(v) for k, v in data["counts"].items()})
        return cls(counts, int(data["total"]), float(data["max_s"]), float(data["sum_s"]))


class ProcessTree:
    """A target's process and all its descendants (uvicorn workers), summed."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self._cpu_of_gone: dict[int, float] = {}

    def processes(self) -> list[psutil.Process]:
        try:
            return [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cpu_seconds(self) -> float:
        """User+system CPU of every process in the tree, so far."""
        total = 0.0
        for proc in self.processes():
            try:
                times = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
        return total

    def rss_bytes(self) -> int:
        total = 0
        for proc in self.processes():
            try:
                total += proc.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        return total

    def process_count(self) -> int:
        return len(self.processes())


def self_cpu_seconds() -> float:
    """This process's own CPU (used by the load and publisher processes)."""
    times = psutil.Process().cpu_times()
    return float(times.user + times.system)


@dataclass(frozen=True)
class RedisSnapshot:
    """Cumulative Redis counters at one moment, and the monitor's own calls until then."""

    at: float
    calls: dict[str, int]
    cpu_s: float
    own_calls: dict[str, int]


class RedisMonitor:
    """The orchestrator's connection to the harness's Redis, counting its own commands."""

    def __init__(self, url: str) -> None:
        self.redis = aioredis.Redis.from_url(
            url, decode_responses=True, client_name=f"{BENCH_CLIENT_PREFIX}monitor"
        )
        self.own_calls: Counter[str] = Counter()

    async def close(self) -> None:
        await self.redis.aclose()

    async def snapshot(self) -> RedisSnapshot:
        """INFO commandstats + cpu; own_calls is copied before so it excludes this call."""
        own = dict(self.own_calls)
        self.own_calls["info"] += 2
        stats = await self.redis.info("commandstats")
        cpu = await self.redis.info("cpu")
        calls: Counter[str] = Counter()
        for name, values in stats.items():
            # Redis 7 reports subcommands ("client|list"); count them under the command.
            calls[name.removeprefix("cmdstat_").split("|")[0]] += int(values["calls"])
        return RedisSnapshot(
            time.time(), dict(calls), float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]), own
        )

    async def server_connections(self) -> int:
        """Connected clients that are not the harness's own (named bench-*)."""
        self.own_calls["client"] += 1
        clients = await self.redis.client_list()
        return sum(1 for c in clients if not c.get("name", "").startswith(BENCH_CLIENT_PREFIX))

    async def group_count(self, tenants: Iterable[str]) -> int:
        """`events` consumer groups over the tenants' streams (what subscriptions leave behind)."""
        total = 0
        for tenant in tenants:
            self.own_calls["xinfo"] += 1
            try:
                groups = await self.redis.xinfo_groups(stream_key(tenant))
            except aioredis.ResponseError:  # no such stream: no groups
                continue
            prefix = events_group_prefix(tenant)
            total += sum(1 for g in groups if str(g["name"]).startswith(prefix))
        return total

    async def flush(self) -> None:
        """Start each run on an empty Redis."""
        self.own_calls["flushall"] += 1
        await self.redis.flushall()

    async def version(self) -> str:
        self.own_calls["info"] += 1
        return str((await self.redis.info("server"))["redis_version"])


def server_commands(
    before: RedisSnapshot, after: RedisSnapshot, harness_calls: dict[str, int]
) -> dict[str, int]:
    """Commands the server under test issued between two snapshots, by name.

    Subtracts the monitor's own commands and those the harness's helpers
    (the publisher) report having sent in the window.
    """
    delta: Counter[str] = Counter()
    for name, calls in after.calls.items():
        delta[name] = calls - before.calls.get(name, 0)
    for name, calls in after.own_calls.items():
        delta[name] -= calls - before.own_calls.get(name, 0)
    for name, calls in harness_calls.items():
        delta[name] -= calls
    return {name: n for name, n in sorted(delta.items()) if n}
