"""The filters scenario: subscriptions with a payload filter (`where`) against none.

Two runs per target, each on a fresh target and one tenant, with the same number
of deliveries:

- unfiltered: S subscribers send FILTER_QUERY without variables; a burst of E
  events (E as the throughput scenario sizes its burst for S subscribers), each
  delivered to all S: S·E deliveries;
- filtered: subscriber i sends FILTER_QUERY with `where: {path: "station", eq:
  "s<i mod F>"}`; a burst of F·E events whose `payload.station` cycles over the F
  stations, each delivered to the S/F subscribers of its station: S·E deliveries
  again. Each subscriber expects only its station's events (the publisher counts
  them per station), so losses, duplicates and wrong-station frames are per
  matching subscriber.

Both bursts carry the same payloads (the unfiltered one's cycle over the stations
too), so the frames are the same size. Around each burst the target's
`ragline_filter_evaluations_total` is read from /metrics (once it stops moving):
with subscribers of one filter sharing one evaluation per event, the filtered
burst should cost F evaluations per event, and the unfiltered one none.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from bench.metrics import ProcessTree
from bench.protocol import FILTER_QUERY, station_filter, station_name, tenant_name
from bench.results import PhaseResult
from bench.rig import Rig
from bench.scenarios import (
    REFERENCE_MODULES,
    burst_events,
    scrape_counter,
    storm_env,
)
from bench.servers import TargetSpec

logger = logging.getLogger(__name__)

EVALUATIONS = "ragline_filter_evaluations_total"
PRIME_TIMEOUT_S = 120.0
# /metrics is read until it stops moving: members of a filter's cohort that got their
# station's last event may still be reading (and the first of them evaluating) the
# events after it when the phase ends.
COUNTER_QUIET_S = 0.5
COUNTER_TIMEOUT_S = 15.0
RATIO_TARGET = 0.9


def filters_unsupported(spec: TargetSpec) -> str | None:
    """Why a target cannot run the filters scenario: the reference servers take no `where`."""
    if any(part in REFERENCE_MODULES for part in spec.argv):
        return "no payload filters (`where`) (a reference server)"
    return None


def stations_of(count: int) -> list[str]:
    return [station_name(k) for k in range(count)]


def plan_filter_subs(
    subs: int, tenant: str, loaders: int, stations: list[str], filtered: bool
) -> list[list[dict[str, Any]]]:
    """Subscriber i on load process i mod L; filtered, with station i mod F's filter."""
    plan: list[list[dict[str, Any]]] = [[] for _ in range(loaders)]
    for i in range(subs):
        spec: dict[str, Any] = {"index": i, "tenant": tenant, "query": FILTER_QUERY}
        if filtered:
            station = stations[i % len(stations)]
            spec.update(where=station_filter(station), station=station)
        plan[i % loaders].append(spec)
    return plan


async def settled_counter(base_url: str, name: str) -> float | None:
    """The sample's value once two reads COUNTER_QUIET_S apart agree (or after
    COUNTER_TIMEOUT_S); None when the server does not export it."""
    deadline = time.monotonic() + COUNTER_TIMEOUT_S
    value: float | None = await asyncio.to_thread(scrape_counter, base_url, name)
    while value is not None and time.monotonic() < deadline:
        await asyncio.sleep(COUNTER_QUIET_S)
        again = await asyncio.to_thread(scrape_counter, base_url, name)
        if again == value:
            break
        value = again
    return value


async def filters_run(rig: Rig, spec: TargetSpec) -> dict[str, Any]:
    """The unfiltered run, then the filtered one, each on a fresh target."""
    config = rig.config
    subs, count = config.filter_subs, config.filter_count
    stations = stations_of(count)
    events = burst_events(rig, subs)
    unfiltered = await filter_pass(rig, spec, "unfiltered", stations, events)
    filtered = await filter_pass(rig, spec, "filtered", stations, count * events)
    summary = filters_summary(spec.name, subs, count, unfiltered, filtered)
    logger.info(
        "filters %s: %s subs, %s filters: %.0f deliveries/s filtered, %.0f unfiltered"
        " (ratio %s), %s evaluations per event",
        spec.name,
        subs,
        count,
        summary["throughput_filtered"],
        summary["throughput_unfiltered"],
        _fmt(summary["ratio"]),
        _fmt(summary["evaluations_per_event"]),
    )
    return summary


async def filter_pass(
    rig: Rig, spec: TargetSpec, name: str, stations: list[str], events: int
) -> dict[str, Any]:
    """S subscriptions on one tenant (filtered or not), primed, then one burst of `events`
    cycling over the stations; the filter evaluations counter read around the burst."""
    config = rig.config
    filtered = name == "filtered"
    tenant = tenant_name(0)
    extra_env = storm_env(config.filter_subs)  # S sockets on one tenant
    label = f"{spec.name}-filters-{name}-{config.filter_subs}"
    async with rig.target(spec, label, extra_env) as server:
        tree = ProcessTree(server.pid)
        plan = plan_filter_subs(config.filter_subs, tenant, len(rig.loaders), stations, filtered)
        connect = await rig.open_subs(server, plan)
        connect["never_primed"] = await rig.prime(
            [tenant], timeout=PRIME_TIMEOUT_S, stations=stations if filtered else None
        )
        before = await settled_counter(server.http_url, EVALUATIONS)
        phase = await rig.burst(
            tree, name, [tenant], events, config.payload_bytes, stations=stations
        )
        after = await settled_counter(server.http_url, EVALUATIONS)
    evaluations = None if before is None or after is None else after - before
    per_process = server.workers > 1  # /metrics answers for whichever worker took the request
    return {
        "events": phase.events,
        "workers": server.workers,
        "target_env": extra_env,
        "connect": connect,
        "phase": phase,
        "evaluations": evaluations,
        "evaluations_per_event": (
            None
            if evaluations is None or per_process or not phase.events
            else evaluations / phase.events
        ),
    }


def filters_summary(
    server: str, subs: int, count: int, unfiltered: dict[str, Any], filtered: dict[str, Any]
) -> dict[str, Any]:
    """The two runs side by side: rates, their ratio, evaluations per event, and the
    deliveries' accuracy over both."""
    plain: PhaseResult = unfiltered["phase"]
    sifted: PhaseResult = filtered["phase"]
    both = (plain, sifted)
    return {
        "server": server,
        "subs": subs,
        "filters": count,
        "workers": filtered["workers"],
        "events_unfiltered": plain.events,
        "events_filtered": sifted.events,
        "deliveries": sifted.expected,
        "deliveries_unfiltered": plain.expected,
        "throughput_unfiltered": plain.throughput,
        "throughput_filtered": sifted.throughput,
        "ratio": sifted.throughput / plain.throughput if plain.throughput else None,
        "evaluations_per_event": filtered["evaluations_per_event"],
        "evaluations_per_event_unfiltered": unfiltered["evaluations_per_event"],
        "lost": sum(p.missing for p in both),
        "duplicates": sum(p.duplicates for p in both),
        "out_of_order": sum(p.out_of_order for p in both),
        "unexpected": sum(p.unexpected for p in both),
        "never_primed": sum(r["connect"]["never_primed"] for r in (unfiltered, filtered)),
        "unfiltered": unfiltered,
        "filtered": filtered,
    }


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
