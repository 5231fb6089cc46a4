"""What the harness measures: latency histograms, server process trees, and Redis.

Latencies are kept as log-bucketed histograms (2% resolution) so the client
processes can each summarise millions of receipts and the orchestrator can
merge them exactly. Server CPU and RSS come from psutil over the target's
process tree (workers included); the whole machine's CPU from psutil's
system-wide times, all cores. Redis numbers come from INFO and CLIENT
LIST on every node (one server, or each node of a cluster); the monitor
counts its own commands so they can be subtracted.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import psutil
import redis.asyncio as aioredis
from redis.crc import key_slot

from bench.protocol import BENCH_CLIENT_PREFIX, events_group_prefix, stream_key
from ragline.streaming.connections import is_cluster_url, node_url, parse_cluster_url

logger = logging.getLogger(__name__)

_LOG_BASE = math.log(1.02)
MONITOR_NAME = f"{BENCH_CLIENT_PREFIX}monitor"
ALL_SLOTS = ((0, 16_383),)
# What replicas send their primary; replication's own traffic, not the server's.
REPLICATION_COMMANDS = frozenset({"replconf", "psync", "sync"})
# CLIENT LIST flags of replication links: a replica on its primary, a primary on its replica.
REPLICATION_FLAGS = frozenset("SM")


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
        return sum(self.cpu_split())

    def cpu_split(self) -> tuple[float, float]:
        """User and system CPU of every process in the tree, so far: the system part is the
        kernel's, the socket writes' mostly (on loopback, a write also runs the peer's
        receive path)."""
        user = system = 0.0
        for proc in self.processes():
            try:
                times = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            user += times.user
            system += times.system
        return user, system

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


MIN_UTIL_WINDOW_S = 0.5  # CPU times tick at 10 ms: shorter windows say nothing


@dataclass(frozen=True)
class MachineCpu:
    """The whole machine's CPU seconds so far, every core summed (psutil.cpu_times), and
    when they were read: what the server, Redis, the publisher, the load processes and
    anything else on the box used together."""

    at: float
    busy_s: float
    total_s: float

    @classmethod
    def now(cls) -> MachineCpu:
        """psutil.cpu_percent's definition: busy = total - idle - iowait (steal counts as
        busy: a core the hypervisor gave elsewhere was not free for the benchmark)."""
        times = psutil.cpu_times()
        # Linux counts guest time in user and nice as well; psutil leaves it out of the total.
        total = sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
        idle = times.idle + getattr(times, "iowait", 0.0)
        return cls(time.monotonic(), total - idle, total)

    def util_since(self, before: MachineCpu) -> float | None:
        """Share of all cores busy since `before` (1.0 = every core busy the whole time);
        None for too short a window."""
        total = self.total_s - before.total_s
        if self.at - before.at < MIN_UTIL_WINDOW_S or total <= 0:
            return None
        return (self.busy_s - before.busy_s) / total


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


@dataclass(frozen=True)
class RedisNode:
    """One server of the Redis under test; a primary says which hash slots it serves."""

    url: str  # a plain URL to this node alone
    primary: bool = True
    slots: tuple[tuple[int, int], ...] = ALL_SLOTS

    @property
    def address(self) -> str:
        """host:port (or the socket path), without the URL's credentials."""
        parts = urlsplit(self.url)
        return parts.netloc.rpartition("@")[2] or parts.path

    def serves(self, key: str) -> bool:
        slot = key_slot(key.encode())
        return any(start <= slot <= end for start, end in self.slots)

    def describe(self) -> dict[str, Any]:
        """For the JSON: where it is and what it does (no credentials)."""
        role = "primary" if self.primary else "replica"
        return {"address": self.address, "role": role, "slots": [list(r) for r in self.slots]}


async def discover_nodes(url: str) -> list[RedisNode]:
    """The one server of a plain URL, or every node in a cluster's slot map, primaries first."""
    if not is_cluster_url(url):
        return [RedisNode(url)]
    seed_host, seed_port = parse_cluster_url(url)[0][0]
    async with aioredis.Redis.from_url(
        node_url(url, seed_host, seed_port), decode_responses=True, client_name=MONITOR_NAME
    ) as seed:
        slot_map = await seed.execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
    primaries: dict[tuple[str, int], list[tuple[int, int]]] = {}
    replicas: set[tuple[str, int]] = set()
    for start, end, primary, *copies in slot_map:
        # A lone node that never met another does not know its own address: "".
        primaries.setdefault((primary[0] or seed_host, int(primary[1])), []).append((start, end))
        replicas.update((copy[0] or seed_host, int(copy[1])) for copy in copies)
    nodes = [
        RedisNode(node_url(url, host, port), True, tuple(sorted(slots)))
        for (host, port), slots in sorted(primaries.items())
    ]
    return nodes + [
        RedisNode(node_url(url, host, port), False, ()) for host, port in sorted(replicas)
    ]


class RedisMonitor:
    """The orchestrator's connections to every node of the harness's Redis, counting its own commands.

    Command counts and CPU are summed over the primaries only: a replica
    re-executes its primary's writes (counting them too would count each
    twice), and no server under test reads from replicas. Connections are
    counted on every node.
    """

    def __init__(self, nodes: list[RedisNode]) -> None:
        self.nodes = nodes
        self.primaries = [node for node in nodes if node.primary]
        self.clients = {
            node.address: aioredis.Redis.from_url(
                node.url, decode_responses=True, client_name=MONITOR_NAME
            )
            for node in nodes
        }
        self.own_calls: Counter[str] = Counter()

    @classmethod
    async def connect(cls, url: str) -> RedisMonitor:
        return cls(await discover_nodes(url))

    async def close(self) -> None:
        await asyncio.gather(*(client.aclose() for client in self.clients.values()))

    async def _on_each(
        self,
        nodes: list[RedisNode],
        command: str,
        call: Callable[[aioredis.Redis], Awaitable[Any]],
    ) -> list[Any]:
        """`call` on every node at once; counted as the monitor's own where stats are summed."""
        self.own_calls[command] += sum(1 for node in nodes if node.primary)
        return list(await asyncio.gather(*(call(self.clients[n.address]) for n in nodes)))

    async def snapshot(self) -> RedisSnapshot:
        """INFO commandstats + cpu; own_calls is copied before so it excludes this call."""
        own = dict(self.own_calls)
        stats = await self._on_each(self.primaries, "info", lambda r: r.info("commandstats"))
        cpu = await self._on_each(self.primaries, "info", lambda r: r.info("cpu"))
        calls: Counter[str] = Counter()
        for node_stats in stats:
            for name, values in node_stats.items():
                # Redis 7 reports subcommands ("client|list"); count them under the command.
                command = name.removeprefix("cmdstat_").split("|")[0]
                if command not in REPLICATION_COMMANDS:
                    calls[command] += int(values["calls"])
        cpu_s = sum(float(c["used_cpu_user"]) + float(c["used_cpu_sys"]) for c in cpu)
        return RedisSnapshot(time.time(), dict(calls), cpu_s, own)

    async def server_connections(self) -> int:
        """Connected clients on every node that are neither the harness's own (named
        bench-*) nor replication links."""
        lists = await self._on_each(self.nodes, "client", lambda r: r.client_list())
        return sum(1 for clients in lists for client in clients if _is_server_client(client))

    async def group_count(self, tenants: Iterable[str]) -> int:
        """`events` consumer groups over the tenants' streams (what subscriptions leave behind)."""
        total = 0
        for tenant in tenants:
            key = stream_key(tenant)
            self.own_calls["xinfo"] += 1
            try:
                groups = await self.clients[self.owner(key).address].xinfo_groups(key)
            except aioredis.ResponseError:  # no such stream: no groups
                continue
            prefix = events_group_prefix(tenant)
            total += sum(1 for g in groups if str(g["name"]).startswith(prefix))
        return total

    async def stream_ids(self, tenant: str) -> list[str]:
        """Every entry id in a tenant's stream, oldest first (the storm's few dozen entries)."""
        key = stream_key(tenant)
        self.own_calls["xrange"] += 1
        entries = await self.clients[self.owner(key).address].xrange(key)
        return [str(entry_id) for entry_id, _ in entries or []]

    def owner(self, key: str) -> RedisNode:
        """The primary that holds `key`."""
        return next(node for node in self.primaries if node.serves(key))

    async def flush(self) -> None:
        """Start each run on an empty Redis: FLUSHALL on every primary (replicas follow)."""
        await self._on_each(self.primaries, "flushall", lambda r: r.flushall())

    async def version(self) -> str:
        self.own_calls["info"] += 1
        client = self.clients[self.primaries[0].address]
        return str((await client.info("server"))["redis_version"])


def _is_server_client(client: dict[str, str]) -> bool:
    name, flags = client.get("name", ""), client.get("flags", "")
    return not name.startswith(BENCH_CLIENT_PREFIX) and not REPLICATION_FLAGS & set(flags)


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
