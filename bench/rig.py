"""The test rig: Redis, the publisher, the load processes, and the steps every scenario uses.

A scenario asks the rig to start a target, open subscriptions, wait until all
of them are live, and measure a phase; the rig owns every process it starts
and stops them all on the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.config import BenchConfig
from bench.metrics import MachineCpu, ProcessTree, RedisMonitor
from bench.results import PhaseInputs, PhaseResult, summarize_phase
from bench.rpc import HelperProcess
from bench.servers import TargetServer, TargetSpec, bench_env, start_target, stop_target
from bench.topology import Topology, redis_executable, redis_running

logger = logging.getLogger(__name__)

PRIME_INTERVAL_S = 0.25


@dataclass
class Rig:
    """Long-lived processes shared by every run on one Redis topology."""

    config: BenchConfig
    topology: Topology
    redis_url: str
    monitor: RedisMonitor
    publisher: HelperProcess
    loaders: list[HelperProcess]
    secret: str
    log_dir: Path

    @property
    def helper_pids(self) -> list[int]:
        return [self.publisher.pid, *(l.pid for l in self.loaders)]

    @contextlib.asynccontextmanager
    async def target(
        self, spec: TargetSpec, label: str, extra_env: dict[str, str] | None = None
    ) -> AsyncIterator[TargetServer]:
        """A fresh target on an empty Redis; stopped however the run ends."""
        await self.monitor.flush()
        server = await start_target(
            spec, self.config.workers, self.redis_url, self.secret, self.log_dir, label, extra_env
        )
        try:
            yield server
        finally:
            with contextlib.suppress(Exception):
                await self.close_subs()
            await stop_target(server)

    async def open_subs(
        self, server: TargetServer, plan: list[list[dict[str, Any]]]
    ) -> dict[str, Any]:
        """Open the planned subscriptions, each load process its share, concurrently."""
        replies = await asyncio.gather(
            *(
                loader.call(
                    "open",
                    url=server.ws_url,
                    secret=self.secret,
                    specs=specs,
                    concurrency=self.config.connect_concurrency,
                )
                for loader, specs in zip(self.loaders, plan)
            )
        )
        opened = sum(r["opened"] for r in replies)
        connections = sum(r["connections"] for r in replies)
        failed = sum(r["failed"] for r in replies)
        seconds = max(r["seconds"] for r in replies)
        logger.info(
            "opened %s subscriptions on %s connections (%s failed) in %.1fs", opened, connections, failed, seconds
        )
        return {"opened": opened, "connections": connections, "failed": failed, "seconds": seconds}

    async def prime(
        self,
        tenants: list[str],
        timeout: float = 60.0,
        state: str = "unprimed",
        quiet: bool = True,
        stations: list[str] | None = None,
    ) -> int:
        """Publish one event per tenant until every open subscription got one.

        graphql-transport-ws has no "subscribed" message, so a first event is
        the only proof that the server's side of a subscription is live.
        Primes are re-published only when priming stops advancing, so a slow
        server is not buried under a backlog of them. Returns how many never
        got one (they then show up as losses). `state` is the load processes'
        command that counts the unprimed ("storm_status" for the storm's
        clients); with quiet=False it returns as soon as all are primed,
        without waiting for the backlog to drain (the caller does that).
        With `stations` (filtered subscriptions) a prime is one event per tenant
        and station.
        """
        deadline = time.monotonic() + timeout
        last_waiting = -1
        while True:
            states = await self._prime_states(state)
            waiting = int(sum(s["unprimed"] for s in states))
            if waiting == 0:
                break
            if time.monotonic() > deadline:
                samples = [x for s in states for x in s["sample"]][:10]
                logger.warning(
                    "%s subscriptions got no event in %ss, e.g. %s", waiting, timeout, samples
                )
                return waiting
            if waiting == last_waiting or last_waiting < 0:
                await self.publisher.call("prime", tenants=tenants, stations=stations)
            last_waiting = waiting
            await asyncio.sleep(PRIME_INTERVAL_S)
        if quiet:
            await self.wait_quiet(timeout=max(0.0, deadline - time.monotonic()) + 30, state=state)
        return 0

    async def _prime_states(self, state: str = "unprimed") -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(l.call(state) for l in self.loaders)))

    async def wait_quiet(self, timeout: float, state: str = "unprimed") -> None:
        """Wait until no frame arrived for settle_seconds: the server has drained its backlog."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = await self._prime_states(state)
            quiet = min((s["quiet_s"] for s in states if s["quiet_s"] is not None), default=None)
            if quiet is None or quiet >= self.config.settle_seconds:
                return
            await asyncio.sleep(self.config.settle_seconds - quiet)
        logger.warning("frames still arriving after %.0fs; measuring anyway", timeout)

    async def close_subs(self) -> dict[str, Any]:
        replies = await asyncio.gather(*(l.call("close_all") for l in self.loaders))
        return {
            "closed": sum(r["closed"] for r in replies),
            "server_closed": sum(r["server_closed"] for r in replies),
        }

    async def measure(
        self, tree: ProcessTree, name: str, publish: Callable[[], Awaitable[dict[str, Any]]]
    ) -> PhaseResult:
        """One phase: reset the clients' tallies, publish, wait for delivery, take deltas."""
        redis_before = await self.monitor.snapshot()
        cpu_before = tree.cpu_split()
        machine_before = MachineCpu.now()
        await asyncio.gather(*(l.call("begin_phase", name=name) for l in self.loaders))
        published = await publish()
        replies = await asyncio.gather(
            *(
                l.call(
                    "wait_phase",
                    expected=published["counts"],
                    by_station=published.get("station_counts") or None,
                    idle_timeout=self.config.idle_timeout,
                    timeout=self.config.phase_timeout,
                )
                for l in self.loaders
            )
        )
        cpu_after = tree.cpu_split()
        machine_after = MachineCpu.now()
        redis_after = await self.monitor.snapshot()
        result = summarize_phase(
            PhaseInputs(
                name,
                published,
                replies,
                redis_before,
                redis_after,
                sum(cpu_after) - sum(cpu_before),
                machine_before,
                machine_after,
                cpu_after[1] - cpu_before[1],
            )
        )
        logger.info(
            "%s: %s/%s delivered, %.0f/s, p99 %s ms, missing %s, machine CPU %s%%%s",
            name,
            result.delivered,
            result.expected,
            result.throughput,
            _fmt(result.p99_ms),
            result.missing,
            _fmt(None if result.machine_cpu_util is None else result.machine_cpu_util * 100),
            " (a load process near saturation)" if result.loaders_busy else "",
        )
        return result

    async def burst(
        self,
        tree: ProcessTree,
        name: str,
        tenants: list[str],
        events: int,
        payload_bytes: int,
        stations: list[str] | None = None,
    ) -> PhaseResult:
        """`events` per tenant, pipelined; with `stations`, each tenant's events cycle over
        them (`payload.station`) and filtered subscriptions expect their station's."""
        return await self.measure(
            tree,
            name,
            lambda: self.publisher.call(
                "burst",
                tenants=tenants,
                events_per_tenant=events,
                phase=name,
                payload_bytes=payload_bytes,
                stations=stations,
            ),
        )

    async def steady(
        self, tree: ProcessTree, name: str, tenants: list[str], rate: float, seconds: float
    ) -> PhaseResult:
        return await self.measure(
            tree,
            name,
            lambda: self.publisher.call(
                "steady",
                tenants=tenants,
                rate=rate,
                seconds=seconds,
                phase=name,
                payload_bytes=self.config.payload_bytes,
            ),
        )

    async def wait_groups(self, tenants: list[str], target: int, timeout: float) -> int:
        """Poll the group count until it reaches `target` (cleanup is asynchronous)."""
        deadline = time.monotonic() + timeout
        while True:
            count = await self.monitor.group_count(tenants)
            if count <= target or time.monotonic() > deadline:
                return count
            await asyncio.sleep(0.25)


def plan_subscriptions(
    subs: int,
    tenants: list[str],
    loaders: int,
    stall_every: int = 0,
    per_connection: int = 1,
    unique_ids: bool = False,
) -> list[list[dict[str, Any]]]:
    """Spread subscriptions so every load process gets every tenant; every n-th may stall.

    Connection c goes to load process c mod L and tenant (c div L) mod T, so tenants and
    processes are not correlated when T and L share a factor. Each subscription has its
    own connection, unless `per_connection` > 1: subscription i is then one of the
    operations of connection i div `per_connection` (one user, one tenant). Every
    operation id is `1` (the first operation of each connection), or with `unique_ids`
    a UUID of its own, as graphql-ws clients choose them.
    """
    plan: list[list[dict[str, Any]]] = [[] for _ in range(loaders)]
    for i in range(subs):
        c = i // per_connection
        stall = bool(stall_every) and i % stall_every == stall_every - 1
        tenant = tenants[(c // loaders) % len(tenants)]
        spec: dict[str, Any] = {"index": i, "tenant": tenant, "stall": stall}
        if per_connection > 1:
            spec["connection"] = c
        if unique_ids:
            spec["operation_id"] = str(uuid.uuid4())
        plan[c % loaders].append(spec)
    return plan


@contextlib.asynccontextmanager
async def build_rig(config: BenchConfig, topology: Topology, log_dir: Path) -> AsyncIterator[Rig]:
    """Start Redis (unless external), the publisher and the load processes; stop them all at the end."""
    log_dir.mkdir(parents=True, exist_ok=True)
    with redis_running(topology, redis_executable(config.redis_server), log_dir) as redis_url:
        monitor = await RedisMonitor.connect(redis_url)
        helpers: list[HelperProcess] = []
        try:
            env = bench_env()
            publisher = await HelperProcess.start(
                "publisher", "bench.publisher", log_dir / "publisher.log", env
            )
            helpers.append(publisher)
            await publisher.call("connect", url=redis_url)
            for i in range(config.loaders):
                loader = await HelperProcess.start(
                    f"load{i}", "bench.load", log_dir / f"load{i}.log", env
                )
                helpers.append(loader)
                await loader.call("hello")
            secret = secrets.token_hex(32)
            yield Rig(config, topology, redis_url, monitor, publisher, helpers[1:], secret, log_dir)
        finally:
            for helper in helpers:
                await helper.stop()
            await monitor.close()


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
