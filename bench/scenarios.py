"""The four scenarios: throughput matrix, idle memory, stalled clients, churn.

Each takes the rig and one target spec and returns plain results; failures of
one run are recorded in its result rather than ending the invocation, so the
other servers still get measured.
"""

from __future__ import annotations

import asyncio
import logging
import re
import statistics
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from bench.metrics import ProcessTree
from bench.protocol import tenant_name
from bench.results import PhaseResult, RunResult, sweep_phase
from bench.rig import Rig, plan_subscriptions
from bench.servers import TargetServer, TargetSpec

logger = logging.getLogger(__name__)

MB = 1024 * 1024
WARMUP_SUBS = 20
FALLBACK_RATE = 100.0


def tenants_of(count: int) -> list[str]:
    return [tenant_name(i) for i in range(count)]


def steady_rate(rig: Rig, burst: PhaseResult, fraction: float = 0.5) -> float:
    """`fraction` of the burst's delivery rate, in published events/s (by default the
    target's 'half max rate', which --rate replaces)."""
    if rig.config.rate and fraction == 0.5:
        return rig.config.rate
    if not burst.delivered or not burst.events:
        return FALLBACK_RATE
    deliveries_per_event = burst.expected / burst.events
    return max(1.0, fraction * burst.throughput / deliveries_per_event)


def burst_events(rig: Rig, subs: int) -> int:
    """Events per tenant: --events, raised until the burst has --min-deliveries.

    A burst of a few thousand frames drains from buffers in a blink and
    overstates the sustainable rate that the steady phase is derived from.
    """
    return max(rig.config.events, -(-rig.config.min_deliveries // max(subs, 1)))


async def throughput_run(rig: Rig, spec: TargetSpec, subs: int, tenant_count: int) -> RunResult:
    """Burst then steady rate at one (subscribers, tenants) point."""
    tenants = tenants_of(tenant_count)
    label = f"{spec.name}-s{subs}-t{tenant_count}"
    async with rig.target(spec, label) as server:
        tree = ProcessTree(server.pid)
        rss_base = tree.rss_bytes()
        connect = await rig.open_subs(server, plan_subscriptions(subs, tenants, len(rig.loaders)))
        connect["never_primed"] = await rig.prime(tenants)
        rss_subs = tree.rss_bytes()
        connections = await rig.monitor.server_connections()
        run = RunResult(
            server=spec.name,
            subs=subs,
            tenants=tenant_count,
            workers=server.workers,
            connect=connect,
            processes=tree.process_count(),
            rss_base_mb=rss_base / MB,
            rss_subs_mb=rss_subs / MB,
            rss_per_sub_kb=(rss_subs - rss_base) / max(connect["opened"], 1) / 1024,
            redis_connections=connections,
            redis_connections_per_process=connections / server.workers,
            redis=rig.topology.label,
            redis_primaries=len(rig.monitor.primaries),
        )
        events = burst_events(rig, subs)
        burst = await rig.burst(tree, "burst", tenants, events, rig.config.payload_bytes)
        run.phases["burst"] = burst
        rate = steady_rate(rig, burst)
        run.phases["steady"] = await rig.steady(
            tree, "steady", tenants, rate, rig.config.steady_seconds
        )
        for fraction in rig.config.sweep:
            name = sweep_phase(fraction)
            run.phases[name] = await rig.steady(
                tree, name, tenants, steady_rate(rig, burst, fraction), rig.config.steady_seconds
            )
        run.redis_connections = max(run.redis_connections, await rig.monitor.server_connections())
        run.redis_connections_per_process = run.redis_connections / server.workers
        await rig.close_subs()
        run.groups_after_close = await rig.wait_groups(tenants, 0, timeout=10)
    return run


async def warm_up(rig: Rig, server: TargetServer, tenants: list[str]) -> None:
    """A few subscriptions opened, primed and closed, so one-off costs are not counted per sub."""
    await rig.open_subs(server, plan_subscriptions(WARMUP_SUBS, tenants, len(rig.loaders)))
    await rig.prime(tenants)
    await rig.close_subs()
    await rig.wait_groups(tenants, 0, timeout=10)
    await asyncio.sleep(rig.config.settle_seconds)


async def idle_run(rig: Rig, spec: TargetSpec) -> dict[str, Any]:
    """RSS growth per idle (live, primed) subscription, and cleanup after closing them all."""
    config = rig.config
    tenants = tenants_of(config.idle_tenants)
    async with rig.target(spec, f"{spec.name}-idle") as server:
        tree = ProcessTree(server.pid)
        await warm_up(rig, server, tenants)
        rss_base = tree.rss_bytes()
        connect = await rig.open_subs(
            server, plan_subscriptions(config.idle_subs, tenants, len(rig.loaders))
        )
        connect["never_primed"] = await rig.prime(tenants, timeout=120)
        await asyncio.sleep(2 * config.settle_seconds)
        rss_subs = tree.rss_bytes()
        live = {
            "redis_connections": await rig.monitor.server_connections(),
            "groups": await rig.monitor.group_count(tenants),
        }
        await rig.close_subs()
        groups_after = await rig.wait_groups(tenants, 0, timeout=30)
        await asyncio.sleep(2 * config.settle_seconds)
        opened = max(connect["opened"], 1)
        return {
            "server": spec.name,
            "subs": config.idle_subs,
            "tenants": config.idle_tenants,
            "workers": server.workers,
            "connect": connect,
            "connect_rate": connect["opened"] / max(connect["seconds"], 1e-9),
            "rss_base_mb": rss_base / MB,
            "rss_subs_mb": rss_subs / MB,
            "rss_after_close_mb": tree.rss_bytes() / MB,
            "rss_per_sub_kb": (rss_subs - rss_base) / opened / 1024,
            **live,
            "redis_connections_per_process": live["redis_connections"] / server.workers,
            "groups_after_close": groups_after,
        }


async def stalled_run(rig: Rig, spec: TargetSpec) -> dict[str, Any]:
    """Healthy clients' burst throughput before and after a fraction of clients stop reading."""
    config = rig.config
    tenants = tenants_of(config.stalled_tenants)
    stall_every = max(1, round(1 / config.stalled_fraction))
    async with rig.target(spec, f"{spec.name}-stalled") as server:
        tree = ProcessTree(server.pid)
        plan = plan_subscriptions(config.stalled_subs, tenants, len(rig.loaders), stall_every)
        await rig.open_subs(server, plan)
        never_primed = await rig.prime(tenants)
        rss_start = tree.rss_bytes()
        phases: dict[str, PhaseResult] = {}
        for name in ("before1", "before2"):
            phases[name] = await rig.burst(
                tree, name, tenants, config.stalled_events, config.stalled_payload_bytes
            )
        stalled = sum(
            r["stalled"] for r in await asyncio.gather(*(l.call("stall") for l in rig.loaders))
        )
        for name in ("after1", "after2"):
            phases[name] = await rig.burst(
                tree, name, tenants, config.stalled_events, config.stalled_payload_bytes
            )
        rss_end = tree.rss_bytes()
    summary = stalled_summary(spec.name, config.stalled_subs, stalled, phases, rss_start, rss_end)
    return {**summary, "never_primed": never_primed}


def stalled_summary(
    server: str,
    subs: int,
    stalled: int,
    phases: dict[str, PhaseResult],
    rss_start: int,
    rss_end: int,
) -> dict[str, Any]:
    before = [phases["before1"].throughput, phases["before2"].throughput]
    after = [phases["after1"].throughput, phases["after2"].throughput]
    base = statistics.mean(before)
    return {
        "server": server,
        "subs": subs,
        "stalled": stalled,
        "healthy_throughput_before": base,
        "healthy_throughput_after": statistics.mean(after),
        "change": (statistics.mean(after) - base) / base if base else None,
        "noise": abs(before[0] - before[1]) / base if base else None,
        "healthy_losses": sum(p.missing for p in phases.values()),
        "stalled_received": phases["after2"].stalled,
        "healthy_p99_ms_after": phases["after2"].p99_ms,
        "rss_start_mb": rss_start / MB,
        "rss_end_mb": rss_end / MB,
        "phases": phases,
    }


async def churn_run(rig: Rig, spec: TargetSpec) -> dict[str, Any]:
    """Connect-subscribe-disconnect cycles; RSS, groups and server gauges before and after."""
    config = rig.config
    tenants = tenants_of(config.churn_tenants)
    async with rig.target(spec, f"{spec.name}-churn") as server:
        tree = ProcessTree(server.pid)
        await rig.publisher.call("trickle_start", tenants=tenants, rate=config.churn_rate)
        try:
            await churn_cycles(rig, server, tenants, config.churn_warmup)
            await asyncio.sleep(config.settle_seconds)
            start = await churn_state(rig, server, tree, tenants, 0)
            outcome = await churn_cycles(rig, server, tenants, config.churn_cycles)
        finally:
            await rig.publisher.call("trickle_stop")
        end = await churn_state(rig, server, tree, tenants, start["groups"])
    return {
        "server": spec.name,
        "cycles": config.churn_cycles,
        **outcome,
        "start": start,
        "end": end,
        "rss_growth_mb": end["rss_mb"] - start["rss_mb"],
    }


async def churn_cycles(
    rig: Rig, server: TargetServer, tenants: list[str], cycles: int
) -> dict[str, Any]:
    """Split the cycles over the load processes and add up what they report."""
    share = [
        cycles // len(rig.loaders) + (i < cycles % len(rig.loaders))
        for i in range(len(rig.loaders))
    ]
    replies = await asyncio.gather(
        *(
            loader.call(
                "churn",
                url=server.ws_url,
                secret=rig.secret,
                tenants=tenants,
                cycles=n,
                concurrency=rig.config.churn_concurrency,
                wait_event=True,
                event_timeout=5.0,
            )
            for loader, n in zip(rig.loaders, share)
        )
    )
    seconds = max(r["seconds"] for r in replies)
    total = {k: sum(r[k] for r in replies) for k in ("ok", "failed", "with_event")}
    logger.info("churn: %s cycles in %.1fs (%s failed)", cycles, seconds, total["failed"])
    return {
        **total,
        "seconds": seconds,
        "cycles_per_s": cycles / max(seconds, 1e-9),
        "errors": sorted({e for r in replies for e in r["errors"]})[:10],
    }


async def churn_state(
    rig: Rig, server: TargetServer, tree: ProcessTree, tenants: list[str], groups_target: int
) -> dict[str, Any]:
    """RSS, group count, Redis connections and whatever gauges the server exposes."""
    groups = await rig.wait_groups(tenants, groups_target, timeout=30)
    await asyncio.sleep(2 * rig.config.settle_seconds)
    return {
        "rss_mb": tree.rss_bytes() / MB,
        "groups": groups,
        "redis_connections": await rig.monitor.server_connections(),
        "threads": sum(p.num_threads() for p in tree.processes()),
        "gauges": await asyncio.to_thread(scrape_gauges, server.http_url),
    }


_GAUGE = re.compile(r"^([a-zA-Z_:][\w:]*(?:\{[^}]*\})?)\s+([-+0-9.eE]+|NaN)$")
_INTERESTING = ("task", "subscri", "connection", "consumer", "group", "pending")


def scrape_gauges(base_url: str) -> dict[str, float]:
    """Best effort: Prometheus samples at /metrics whose names suggest live state (tasks, subs)."""
    try:
        with urllib.request.urlopen(base_url + "/metrics", timeout=5) as response:
            text = response.read().decode("utf-8", "replace")
    except Exception:  # noqa: BLE001 - a server without /metrics simply has no gauges
        return {}
    gauges: dict[str, float] = {}
    for line in text.splitlines():
        match = _GAUGE.match(line.strip())
        if match and any(word in match.group(1).lower() for word in _INTERESTING):
            gauges[match.group(1)] = float(match.group(2))
    return gauges


@dataclass
class ScenarioResults:
    """Everything one invocation measured, by scenario."""

    throughput: list[RunResult] = field(default_factory=list)
    idle: list[dict[str, Any]] = field(default_factory=list)
    stalled: list[dict[str, Any]] = field(default_factory=list)
    churn: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    failures: list[dict[str, str]] = field(default_factory=list)
