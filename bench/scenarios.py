"""The scenarios: throughput matrix, idle memory, stalled clients, churn, reconnect storm
(the sixth, payload filters, is in bench.filters).

Each takes the rig and one target spec and returns plain results; failures of
one run are recorded in its result rather than ending the invocation, so the
other servers still get measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import statistics
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from bench.metrics import MachineCpu, ProcessTree, server_commands
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
        connect = await rig.open_subs(
            server, plan_subscriptions(subs, tenants, len(rig.loaders), unique_ids=rig.config.unique_ids)
        )
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
            server,
            plan_subscriptions(config.idle_subs, tenants, len(rig.loaders), per_connection=config.idle_per_connection),
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
            "per_connection": config.idle_per_connection,
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
        "gc_collected_per_cycle": _per_cycle(start["gc"], end["gc"], "collected", config.churn_cycles),
        "gc_full_collections": _delta(start["gc"], end["gc"], "full_collections"),
    }


def _delta(start: dict[str, float], end: dict[str, float], name: str) -> float | None:
    return end[name] - start[name] if name in start and name in end else None


def _per_cycle(start: dict[str, float], end: dict[str, float], name: str, cycles: int) -> float | None:
    delta = _delta(start, end, name)
    return None if delta is None or not cycles else delta / cycles


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
        "gc": await asyncio.to_thread(scrape_gc, server.http_url),
    }


_GAUGE = re.compile(r"^([a-zA-Z_:][\w:]*(?:\{[^}]*\})?)\s+([-+0-9.eE]+|NaN)$")
_INTERESTING = ("task", "subscri", "connection", "consumer", "group", "pending")


def scrape_gc(base_url: str) -> dict[str, float]:
    """The cyclic collector's totals, when the server exports prometheus-client's
    `python_gc_*` (the gateway does): objects it freed (all generations) and full
    (generation 2) collections."""
    try:
        with urllib.request.urlopen(base_url + "/metrics", timeout=5) as response:
            text = response.read().decode("utf-8", "replace")
    except Exception:  # noqa: BLE001 - a server without /metrics has no figures
        return {}
    figures: dict[str, float] = {}
    for line in text.splitlines():
        match = _GAUGE.match(line.strip())
        if match is None:
            continue
        name, value = match.group(1), float(match.group(2))
        if name.startswith("python_gc_objects_collected_total"):
            figures["collected"] = figures.get("collected", 0.0) + value
        elif name == 'python_gc_collections_total{generation="2"}':
            figures["full_collections"] = value
    return figures


def scrape_counter(base_url: str, name: str) -> float | None:
    """A Prometheus sample's value at /metrics (summed over its labels, if any); None when
    the server has no /metrics or no such sample."""
    try:
        with urllib.request.urlopen(base_url + "/metrics", timeout=5) as response:
            text = response.read().decode("utf-8", "replace")
    except Exception:  # noqa: BLE001 - a server without /metrics has no figures
        return None
    total: float | None = None
    for line in text.splitlines():
        match = _GAUGE.match(line.strip())
        if match and match.group(1).partition("{")[0] == name:
            total = (total or 0.0) + float(match.group(2))
    return total


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


# -- storm: N durable subscribers leave in batches, then all reconnect at once ------------

STORM_PRIME_TIMEOUT_S = 120.0
# The gateway's per-process limit of WebSockets per tenant; the storm puts N on one tenant.
TENANT_LIMIT_VARIABLE = "RAGLINE_MAX_CONNECTIONS_PER_TENANT"
REFERENCE_MODULES = ("bench.naive", "bench.ceiling")


def storm_unsupported(spec: TargetSpec) -> str | None:
    """Why a target cannot run the storm: the reference servers have no durable cursors."""
    if any(part in REFERENCE_MODULES for part in spec.argv):
        return "no durable cursors (a reference server)"
    return None


def storm_env(subs: int) -> dict[str, str]:
    """Raise the gateway's per-tenant connection limit when N (with room for sockets of
    leaving clients not yet counted out) would reach it; nothing otherwise."""
    need = 2 * subs
    default = _gateway_default("max_connections_per_tenant")
    if isinstance(default, int) and (default == 0 or need <= default):
        return {}
    return {TENANT_LIMIT_VARIABLE: str(need)}


def _gateway_default(name: str) -> object:
    try:
        from ragline.gateway.settings import Settings
    except ImportError:
        return None
    return next((f.default for f in dataclasses.fields(Settings) if f.name == name), None)


def plan_storm(subs: int, loaders: int, batches: int) -> list[list[dict[str, int]]]:
    """Client i goes to load process i mod L and leaves in batch i * B div N (so every
    batch spans every load process)."""
    plan: list[list[dict[str, int]]] = [[] for _ in range(loaders)]
    for i in range(subs):
        plan[i % loaders].append({"index": i, "batch": i * batches // subs})
    return plan


async def storm_run(rig: Rig, spec: TargetSpec, subs: int) -> dict[str, Any]:
    """First subscribe, leave in batches while events are published, publish more with
    everyone gone, then every client resumes its durable cursor at once."""
    config = rig.config
    tenant = tenant_name(0)
    extra_env = storm_env(subs)
    async with rig.target(spec, f"{spec.name}-storm-{subs}", extra_env) as server:
        tree = ProcessTree(server.pid)
        try:
            first = await storm_first_subscribe(rig, server, tree, tenant, subs)
            leave = await storm_leave(rig, tenant)
            await rig.publisher.call(
                "burst",
                tenants=[tenant],
                events_per_tenant=config.storm_gone_events,
                phase="storm-gone",
            )
            await asyncio.sleep(config.settle_seconds)
            stream_ids = await rig.monitor.stream_ids(tenant)
            resume = await storm_resume(rig, server, tree, stream_ids)
            await asyncio.sleep(config.settle_seconds)  # late frames: duplicates, resends
            reports = await asyncio.gather(*(l.call("storm_report") for l in rig.loaders))
        finally:
            with contextlib.suppress(Exception):
                await asyncio.gather(*(l.call("storm_close") for l in rig.loaders))
    outcome = storm_outcome(reports)
    logger.info(
        "storm %s N=%s: caught up in %ss, %s already-seen resent, %s lost, %s duplicates",
        spec.name,
        subs,
        _fmt_s(resume["all_caught_up_s"]),
        outcome["already_seen"],
        outcome["lost"],
        outcome["duplicates"],
    )
    return {
        "server": spec.name,
        "subs": subs,
        "tenant": tenant,
        "workers": server.workers,
        "target_env": extra_env,
        "batches": config.storm_batches,
        "batch_events": config.storm_batch_events,
        "gone_events": config.storm_gone_events,
        "stream_entries": len(stream_ids),
        "first_subscribe": first,
        "leave": leave,
        "resume": resume,
        **outcome,
    }


async def storm_first_subscribe(
    rig: Rig, server: TargetServer, tree: ProcessTree, tenant: str, subs: int
) -> dict[str, Any]:
    """All N subscribe at once; live = each got a first event (primes published until then)."""
    config = rig.config
    plan = plan_storm(subs, len(rig.loaders), config.storm_batches)
    cpu_before = tree.cpu_seconds()
    started = time.time()
    replies = await asyncio.gather(
        *(
            loader.call(
                "storm_open",
                url=server.ws_url,
                secret=rig.secret,
                tenant=tenant,
                clients=clients,
                concurrency=config.connect_concurrency,
            )
            for loader, clients in zip(rig.loaders, plan)
        )
    )
    never_primed = await rig.prime(
        [tenant], timeout=STORM_PRIME_TIMEOUT_S, state="storm_status", quiet=False
    )
    cpu_s = tree.cpu_seconds() - cpu_before
    states = await asyncio.gather(*(l.call("storm_status") for l in rig.loaders))
    live_at = max((s["last_first_rx"] or 0.0 for s in states), default=0.0)
    await rig.wait_quiet(timeout=60, state="storm_status")
    first = {
        "opened": sum(r["opened"] for r in replies),
        "failed": sum(r["failed"] for r in replies),
        "connect_s": max(r["seconds"] for r in replies),
        "live_s": live_at - started if live_at and not never_primed else None,
        "cpu_s": cpu_s,
        "never_primed": never_primed,
    }
    logger.info(
        "storm: %s subscribed (%s failed), all live after %ss, server CPU %.2fs",
        first["opened"],
        first["failed"],
        _fmt_s(first["live_s"]),
        cpu_s,
    )
    return first


async def storm_leave(rig: Rig, tenant: str) -> dict[str, Any]:
    """Batch after batch leaves cleanly; after each, events are published and the clients
    still connected are waited for, so each batch left having received a known amount."""
    config = rig.config
    started = time.monotonic()
    received: list[int] = []
    late = 0
    for batch in range(config.storm_batches):
        replies = await asyncio.gather(
            *(
                l.call("storm_leave", batch=batch, concurrency=config.connect_concurrency)
                for l in rig.loaders
            )
        )
        received.extend(n for r in replies for n in r["received"])
        published = await rig.publisher.call(
            "burst",
            tenants=[tenant],
            events_per_tenant=config.storm_batch_events,
            phase="storm-leave",
        )
        if batch < config.storm_batches - 1 and published["last_id"]:
            waits = await asyncio.gather(
                *(
                    l.call(
                        "storm_wait",
                        last_id=published["last_id"],
                        idle_timeout=config.idle_timeout,
                        timeout=config.phase_timeout,
                    )
                    for l in rig.loaders
                )
            )
            late += sum(w["waiting"] for w in waits)
    return {
        "left": len(received),
        "seconds": time.monotonic() - started,
        "received_min": min(received, default=0),
        "received_max": max(received, default=0),
        "received_mean": statistics.mean(received) if received else 0.0,
        "never_got_batch_events": late,  # connected clients that missed a wait (should be 0)
    }


async def storm_resume(
    rig: Rig, server: TargetServer, tree: ProcessTree, stream_ids: list[str]
) -> dict[str, Any]:
    """All reconnect at once; time until every one has caught up. CPU and Redis commands
    run from the first reconnect until all caught up plus settle_seconds, so the cursor
    flush that follows the deliveries is counted."""
    config = rig.config
    redis_before = await rig.monitor.snapshot()
    cpu_before = tree.cpu_seconds()
    machine_before = MachineCpu.now()
    started = time.time()
    replies = await asyncio.gather(
        *(
            l.call(
                "storm_resume",
                url=server.ws_url,
                stream_ids=stream_ids,
                concurrency=config.connect_concurrency,
                idle_timeout=config.idle_timeout,
                timeout=config.phase_timeout,
            )
            for l in rig.loaders
        )
    )
    await asyncio.sleep(config.settle_seconds)
    cpu_s = tree.cpu_seconds() - cpu_before
    machine_after = MachineCpu.now()
    redis_after = await rig.monitor.snapshot()
    commands = server_commands(redis_before, redis_after, {})
    clients = sum(r["clients"] for r in replies)
    opened = sum(r["opened"] for r in replies)
    caught_up = sum(r["caught_up"] for r in replies)
    done_at = max((r["done_at"] or 0.0 for r in replies), default=0.0)
    return {
        "clients": clients,
        "opened": opened,
        "failed": sum(r["failed"] for r in replies),
        "connect_s": max(r["connect_s"] for r in replies),
        "caught_up": caught_up,
        "all_caught_up_s": done_at - started if caught_up == clients and done_at else None,
        "cpu_s": cpu_s,
        "cpu_ms_per_resume": cpu_s * 1000 / opened if opened else None,
        "redis_commands": commands,
        "cmds_per_resume": sum(commands.values()) / opened if opened else None,
        "machine_cpu_util": machine_after.util_since(machine_before),
        "loader_cpu_util": [
            r["cpu_s"] / r["wall_s"] if r["wall_s"] >= 0.5 else None for r in replies
        ],
    }


def storm_outcome(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """The load processes' per-client tallies, summed."""
    numbers = {
        name: sum(r[name] for r in reports)
        for name, value in reports[0].items()
        if isinstance(value, int)
    }
    by_batch: dict[str, dict[str, int]] = {}
    for report in reports:
        for batch, row in report["by_batch"].items():
            into = by_batch.setdefault(str(batch), {})
            for name, value in row.items():
                into[name] = into.get(name, 0) + value
    return {
        **numbers,
        "by_batch": dict(sorted(by_batch.items(), key=lambda item: int(item[0]))),
        "samples": [s for r in reports for s in r["samples"]][:10],
        "errors": sorted({e for r in reports for e in r["errors"]})[:10],
    }


def _fmt_s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


@dataclass
class ScenarioResults:
    """Everything one invocation measured, by scenario."""

    throughput: list[RunResult] = field(default_factory=list)
    idle: list[dict[str, Any]] = field(default_factory=list)
    stalled: list[dict[str, Any]] = field(default_factory=list)
    churn: list[dict[str, Any]] = field(default_factory=list)
    storm: list[dict[str, Any]] = field(default_factory=list)
    filters: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    failures: list[dict[str, str]] = field(default_factory=list)
