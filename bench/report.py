"""Turning results into the JSON file, the chart, the printed tables and the target checks.

Ratios are always taken between servers measured in the same invocation under
the same load and the same Redis topology, which is what makes numbers from a
noisy 2-core box usable.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.filters import RATIO_TARGET
from bench.results import LOADER_BUSY, PhaseResult, RunResult, is_sweep, to_jsonable
from bench.scenarios import ScenarioResults

logger = logging.getLogger(__name__)

REFERENCES = ("naive", "ceiling")
PUBLISHER_LAG_MS = 100.0  # a steady publisher this far behind schedule offered less than asked


@dataclass(frozen=True)
class Check:
    """One target from the issue, evaluated for the subject server."""

    name: str
    value: float | None
    limit: str
    passed: bool | None  # None: could not be evaluated in this invocation

    def row(self) -> str:
        verdict = {True: "PASS", False: "FAIL", None: "n/a"}[self.passed]
        return f"{verdict:<5} {self.name:<80} {_num(self.value):>10}  ({self.limit})"


def cells(runs: list[RunResult]) -> dict[tuple[str, int, int], dict[str, RunResult]]:
    """Runs grouped by (Redis topology, subscribers, tenants), keyed by server; topologies
    in the order they ran, then by size."""
    grouped: dict[tuple[str, int, int], dict[str, RunResult]] = defaultdict(dict)
    for run in runs:
        if run.error is None:
            grouped[(run.redis, run.subs, run.tenants)][run.server] = run
    order = topologies(runs)
    return dict(sorted(grouped.items(), key=lambda item: (order.index(item[0][0]), item[0][1:])))


def topologies(runs: list[RunResult]) -> list[str]:
    """The Redis topologies of the runs, in the order they ran."""
    return list(dict.fromkeys(run.redis for run in runs))


def cell_name(subs: int, tenants: int, redis: str) -> str:
    return f"{subs} subs / {tenants} tenants, {redis}"


def _burst(run: RunResult | None) -> float | None:
    return run.phases["burst"].throughput if run and "burst" in run.phases else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def ratios(runs: list[RunResult]) -> list[dict[str, Any]]:
    """Each non-reference server against naive and ceiling, per matrix cell and topology."""
    rows = []
    for (redis, subs, tenants), by_server in cells(runs).items():
        naive, ceiling = by_server.get("naive"), by_server.get("ceiling")
        for name, run in by_server.items():
            if name in REFERENCES and not (name == "ceiling" and len(by_server) == 2 and naive):
                continue
            rows.append(
                {
                    "redis": redis,
                    "subs": subs,
                    "tenants": tenants,
                    "server": name,
                    "throughput_vs_naive": _ratio(_burst(run), _burst(naive)),
                    "throughput_vs_ceiling": _ratio(_burst(run), _burst(ceiling)),
                    "cmds_per_delivery_vs_naive": _ratio(
                        run.total_cmds_per_delivery(),
                        naive.total_cmds_per_delivery() if naive else None,
                    ),
                    "ceiling_faster": (_burst(ceiling) or 0) >= (_burst(run) or 0)
                    if ceiling
                    else None,
                }
            )
    return rows


def checks(results: ScenarioResults, subject: str) -> list[Check]:
    """The issue's targets for the subject server, where this invocation measured them."""
    runs = [r for r in results.throughput if r.server == subject and r.error is None]
    out: list[Check] = []
    for row in (r for r in ratios(results.throughput) if r["server"] == subject):
        cell = cell_name(row["subs"], row["tenants"], row["redis"])
        out.append(_at_least(f"throughput vs naive, {cell}", row["throughput_vs_naive"], 5.0))
        out.append(_at_least(f"throughput vs ceiling, {cell}", row["throughput_vs_ceiling"], 0.5))
        out.append(
            _at_most(
                f"Redis cmds/delivery vs naive, {cell}", row["cmds_per_delivery_vs_naive"], 0.2
            )
        )
    for run in runs:
        cell = cell_name(run.subs, run.tenants, run.redis)
        out.append(
            _at_most(
                f"losses+dups+reorders, {cell}",
                float(sum(p.missing + p.duplicates + p.out_of_order for p in run.phases.values())),
                0.0,
            )
        )
        steady = run.phases.get("steady")
        out.append(
            _below(
                f"steady p99 ms at half max rate, {cell}", steady.p99_ms if steady else None, 50.0
            )
        )
        out.append(
            _at_most(
                f"Redis connections per process and primary, {cell}",
                run.redis_connections_per_process / run.redis_primaries,
                10.0,
            )
        )
    for idle in (i for i in results.idle if i["server"] == subject):
        connect, shared = idle["connect"], idle.get("per_connection", 1)
        if shared == 1:  # the target is for subscriptions with a connection each
            out.append(
                _at_most(
                    f"RSS KB per idle subscription ({idle['subs']} subs, {idle['redis']})",
                    idle["rss_per_sub_kb"],
                    20.0,
                )
            )
        out.append(
            _at_least(
                f"idle subscriptions live in one process ({idle['subs']} on"
                f" {connect.get('connections', connect['opened'])} connections, {idle['redis']})",
                connect["opened"] - connect.get("never_primed", 0),
                idle["subs"],
            )
        )
    for storm in (s for s in results.storm if s["server"] == subject):
        out.extend(_storm_checks(storm))
    for stalled in (s for s in results.stalled if s["server"] == subject):
        out.append(_stalled_check(stalled))
    for run in (f for f in results.filters if f["server"] == subject):
        out.extend(_filters_checks(run))
    for churn in (c for c in results.churn if c["server"] == subject):
        out.append(
            _at_most(
                f"groups left after churn (end - start), {churn['redis']}",
                float(churn["end"]["groups"] - churn["start"]["groups"]),
                0.0,
            )
        )
        growth = (
            churn["rss_growth_mb"] / churn["start"]["rss_mb"] * 100
            if churn["start"]["rss_mb"]
            else None
        )
        out.append(_at_most(f"RSS growth after churn (%), {churn['redis']}", growth, 5.0))
    return out


def _storm_checks(storm: dict[str, Any]) -> list[Check]:
    """A reconnect storm: everyone live and caught up within 15 s, at most 2 ms of server CPU
    and 3 Redis commands per resume, nothing lost, nothing already seen sent again."""
    where = f"{storm['subs']} clients, {storm['redis']}"
    resume, first = storm["resume"], storm["first_subscribe"]
    return [
        _at_most(f"storm: first subscribe, s until all live, {where}", first.get("live_s"), 15.0),
        _at_most(f"storm: s until all caught up, {where}", resume.get("all_caught_up_s"), 15.0),
        _at_most(f"storm: server CPU ms per resume, {where}", resume.get("cpu_ms_per_resume"), 2.0),
        _at_most(f"storm: Redis commands per resume, {where}", resume.get("cmds_per_resume"), 3.0),
        _at_most(f"storm: lost + already-seen events, {where}", float(storm["lost"] + storm["already_seen"]), 0.0),
    ]


def _filters_checks(run: dict[str, Any]) -> list[Check]:
    """Filtering costs at most a tenth of the rate, subscribers of one filter share its
    evaluation, and every subscriber gets exactly its station's events."""
    where = f"{run['subs']} subs, {run['filters']} filters, {run['redis']}"
    evaluations = run["evaluations_per_event"]
    if evaluations is None and run["workers"] > 1:
        per_event = Check(
            f"filter evaluations per event, {where}",
            None,
            f"== {run['filters']}; /metrics is one of {run['workers']} worker processes'",
            None,
        )
    else:
        per_event = Check(
            f"filter evaluations per event (== distinct filters), {where}",
            evaluations,
            f"== {run['filters']}",
            None if evaluations is None else evaluations == run["filters"],
        )
    return [
        _at_least(f"filtered/unfiltered deliveries/s, {where}", run["ratio"], RATIO_TARGET),
        per_event,
        _at_most(
            f"filters: losses+dups+reorders+wrong station, {where}",
            float(run["lost"] + run["duplicates"] + run["out_of_order"] + run["unexpected"]),
            0.0,
        ),
    ]


def _stalled_check(stalled: dict[str, Any], limit: float = 10.0) -> Check:
    """A change smaller than the run's own noise (two baseline bursts apart) proves nothing."""
    name = f"healthy throughput change with 5% stalled (%), {stalled['redis']}"
    change, noise = stalled["change"], stalled["noise"]
    value = None if change is None else abs(change) * 100
    if value is None or noise is None or noise * 100 >= limit:
        noisy = "-" if noise is None else f"{noise * 100:.0f}%"
        return Check(name, value, f"< {limit:g}; baseline noise {noisy} too high to judge", None)
    return _below(name, value, limit)


def _at_least(name: str, value: float | None, limit: float) -> Check:
    return Check(name, value, f">= {limit:g}", None if value is None else value >= limit)


def _at_most(name: str, value: float | None, limit: float) -> Check:
    return Check(name, value, f"<= {limit:g}", None if value is None else value <= limit)


def _below(name: str, value: float | None, limit: float) -> Check:
    return Check(name, value, f"< {limit:g}", None if value is None else value < limit)


def _num(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def throughput_table(runs: list[RunResult]) -> str:
    """One line per run: the issue's per-run numbers."""
    head = (
        f"{'server':<9} {'redis':<17} {'subs':>6} {'ten':>4} {'deliv/s':>9} "
        f"{'p50ms':>7} {'p99ms':>7} {'maxms':>7} "
        f"{'lost':>5} {'cpu/1k':>7} {'cmd/dl':>7} {'rconn':>6} {'KB/sub':>7} {'load%':>9} "
        f"{'box%':>7} {'st.rate':>8}"
    )
    lines = [head, "-" * len(head)]
    for run in runs:
        if run.error:
            lines.append(
                f"{run.server:<9} {run.redis:<17} {run.subs:>6} {run.tenants:>4}"
                f"  FAILED: {run.error[:80]}"
            )
            continue
        burst, steady = run.phases.get("burst"), run.phases.get("steady")
        if burst is None or steady is None:
            continue
        loaders = "/".join("-" if u is None else f"{u * 100:.0f}" for u in burst.loader_cpu_util)
        lines.append(
            f"{run.server:<9} {run.redis:<17} {run.subs:>6} {run.tenants:>4} "
            f"{_num(burst.throughput):>9} "
            f"{_num(steady.p50_ms, 1):>7} {_num(steady.p99_ms, 1):>7} {_num(steady.max_ms, 1):>7} "
            f"{run.losses:>5} {_num(_cpu_per_1k(run), 3):>7} {_num(run.total_cmds_per_delivery(), 3):>7} "
            f"{_num(run.redis_connections_per_process, 0):>6} {_num(run.rss_per_sub_kb, 1):>7} "
            f"{loaders:>9} {_pct(burst.machine_cpu_util)}/{_pct(steady.machine_cpu_util):<3} "
            f"{_num(steady.publish_rate, 0):>8}"
        )
    return "\n".join(lines)


def _pct(share: float | None) -> str:
    """A share (1.0 = all) as a whole percentage, three characters wide."""
    return f"{'-' if share is None else f'{share * 100:.0f}':>3}"


def sweep_table(runs: list[RunResult]) -> str:
    """Each run's steady phases by offered load (fraction of its burst max), with the CPU
    the server and the load processes used: where latency turns up, and who was busy."""
    head = (
        f"{'server':<9} {'redis':<17} {'subs':>6} {'ten':>4} {'load':>5} {'deliv/s':>9} "
        f"{'p50ms':>7} {'p99ms':>7} {'maxms':>7} {'srv cpu':>8} {'load cpu':>9} {'box cpu':>8} "
        f"{'cmd/dl':>7}"
    )
    lines = [head, "-" * len(head)]
    for run in runs:
        burst = run.phases.get("burst")
        if run.error or burst is None or not burst.throughput:
            continue
        for phase in sorted(run.steady_phases(), key=lambda p: p.throughput):
            cpu = phase.server_cpu_s / phase.duration_s if phase.duration_s else None
            loaders = "/".join("-" if u is None else f"{u * 100:.0f}" for u in phase.loader_cpu_util)
            lines.append(
                f"{run.server:<9} {run.redis:<17} {run.subs:>6} {run.tenants:>4} "
                f"{phase.throughput / burst.throughput:>5.2f} {_num(phase.throughput):>9} "
                f"{_num(phase.p50_ms, 1):>7} {_num(phase.p99_ms, 1):>7} {_num(phase.max_ms, 1):>7} "
                f"{_num(None if cpu is None else cpu * 100, 0):>7}% {loaders:>9} "
                f"{_pct(phase.machine_cpu_util):>7}% {_num(phase.redis_cmds_per_delivery, 3):>7}"
            )
    return "\n".join(lines)


def busy_phases(runs: list[RunResult]) -> list[tuple[RunResult, PhaseResult]]:
    """Every phase (burst, steady, sweep) whose load processes were near saturation."""
    return [
        (run, phase)
        for run in runs
        if run.error is None
        for phase in run.phases.values()
        if phase.loaders_busy
    ]


def _loaders(phase: PhaseResult) -> str:
    return "/".join("-" if u is None else f"{u * 100:.0f}%" for u in phase.loader_cpu_util)


def _cpu_per_1k(run: RunResult) -> float | None:
    delivered = sum(p.delivered for p in run.phases.values())
    cpu = sum(p.server_cpu_s for p in run.phases.values())
    return cpu * 1000 / delivered if delivered else None


def ratio_table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'redis':<17} {'subs':>6} {'ten':>4} {'server':<9} {'vs naive':>9} {'vs ceiling':>11}"
        f" {'cmds vs naive':>14} {'ceiling faster':>15}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['redis']:<17} {r['subs']:>6} {r['tenants']:>4} {r['server']:<9}"
            f" {_num(r['throughput_vs_naive']):>9} "
            f"{_num(r['throughput_vs_ceiling']):>11} {_num(r['cmds_per_delivery_vs_naive'], 3):>14} "
            f"{r['ceiling_faster']!s:>15}"
        )
    return "\n".join(lines)


def topology_table(runs: list[RunResult]) -> str:
    """Each server and size on each Redis topology side by side: burst deliveries/s, steady
    p99 and Redis commands per delivery; empty when only one topology ran."""
    labels = topologies(runs)
    if len(labels) < 2:
        return ""
    grid: dict[tuple[str, int, int], dict[str, RunResult]] = defaultdict(dict)
    for (redis, subs, tenants), by_server in cells(runs).items():
        for server, run in by_server.items():
            grid[(server, subs, tenants)][redis] = run
    names = "".join(f" | {label:<25}" for label in labels)
    head = f"{'server':<9} {'subs':>6} {'ten':>4}" + (
        f" | {'deliv/s':>9} {'p99ms':>7} {'cmd/dl':>7}" * len(labels)
    )
    lines = [" " * 21 + names, head, "-" * len(head)]
    for (server, subs, tenants), by_redis in grid.items():
        row = "".join(f" | {_topology_cell(by_redis.get(label))}" for label in labels)
        lines.append(f"{server:<9} {subs:>6} {tenants:>4}{row}")
    return "\n".join(lines)


def _topology_cell(run: RunResult | None) -> str:
    steady = run.phases.get("steady") if run else None
    if run is None or steady is None:
        return f"{'-':>9} {'-':>7} {'-':>7}"
    return (
        f"{_num(_burst(run)):>9} {_num(steady.p99_ms, 1):>7}"
        f" {_num(run.total_cmds_per_delivery(), 3):>7}"
    )


def scenario_tables(results: ScenarioResults) -> str:
    """Short lines for idle, stalled and churn."""
    lines = []
    for i in results.idle:
        lines.append(
            f"idle    {i['server']:<9} {i['redis']:<17} subs={i['subs']} opened={i['connect']['opened']} "
            f"connections={i['connect'].get('connections', i['connect']['opened'])} "
            f"never_primed={i['connect'].get('never_primed', 0)} "
            f"KB/sub={_num(i['rss_per_sub_kb'], 1)} rconn/proc={_num(i['redis_connections_per_process'], 0)} "
            f"groups={i['groups']} groups_after_close={i['groups_after_close']} "
            f"rss {i['rss_base_mb']:.0f}->{i['rss_subs_mb']:.0f}->{i['rss_after_close_mb']:.0f} MB"
        )
    for s in results.stalled:
        change = None if s["change"] is None else s["change"] * 100
        noise = None if s["noise"] is None else s["noise"] * 100
        lines.append(
            f"stalled {s['server']:<9} {s['redis']:<17} subs={s['subs']} stalled={s['stalled']} "
            f"healthy {_num(s['healthy_throughput_before'])} -> {_num(s['healthy_throughput_after'])} deliv/s "
            f"change={_num(change, 1)}% (noise {_num(noise, 1)}%) losses={s['healthy_losses']} "
            f"p99_after={_num(s['healthy_p99_ms_after'], 1)}ms rss {s['rss_start_mb']:.0f}->{s['rss_end_mb']:.0f} MB"
        )
    for c in results.churn:
        lines.append(
            f"churn   {c['server']:<9} {c['redis']:<17} cycles={c['cycles']} ok={c['ok']} failed={c['failed']} "
            f"{_num(c['cycles_per_s'], 0)}/s groups {c['start']['groups']}->{c['end']['groups']} "
            f"rss {c['start']['rss_mb']:.1f}->{c['end']['rss_mb']:.1f} MB "
            f"rconn {c['start']['redis_connections']}->{c['end']['redis_connections']}"
            + (
                f" gc {_num(c['gc_collected_per_cycle'], 1)} cyclic objects/cycle, "
                f"{_num(c['gc_full_collections'], 0)} full collections"
                if c.get("gc_collected_per_cycle") is not None
                else ""
            )
            + (
                f" gauges {_gauge_totals(c['start']['gauges'])}->{_gauge_totals(c['end']['gauges'])}"
                if c["end"]["gauges"]
                else ""
            )
        )
    return "\n".join(lines)


def storm_table(storms: list[dict[str, Any]]) -> str:
    """One line per storm run: the first subscribe, then the resume of every durable cursor."""
    head = (
        f"{'server':<9} {'redis':<17} {'N':>6} {'live s':>7} {'sub cpu':>8} "
        f"{'caught s':>9} {'res cpu':>8} {'ms/res':>7} {'cmd/res':>8} "
        f"{'seen again':>10} {'lost':>6} {'dups':>5} {'failed':>6} {'box%':>5}"
    )
    lines = [head, "-" * len(head)]
    for r in storms:
        first, resume = r["first_subscribe"], r["resume"]
        caught = resume["all_caught_up_s"]
        lines.append(
            f"{r['server']:<9} {r['redis']:<17} {r['subs']:>6} "
            f"{_num(first['live_s']):>7} {_num(first['cpu_s']):>8} "
            f"{_num(caught) if caught is not None else 'TIMEOUT':>9} {_num(resume['cpu_s']):>8} "
            f"{_num(resume['cpu_ms_per_resume']):>7} {_num(resume['cmds_per_resume']):>8} "
            f"{r['already_seen']:>10} {r['lost']:>6} {r['duplicates']:>5} "
            f"{first['failed'] + resume['failed']:>6} {_pct(resume['machine_cpu_util']):>5}"
        )
    return "\n".join(lines)


def storm_notes(storms: list[dict[str, Any]]) -> list[str]:
    """What a storm run saw besides the table's numbers: who got events again or missed
    them (by leave batch), reordering, errors."""
    notes = []
    for r in storms:
        name = f"{r['server']} N={r['subs']} ({r['redis']})"
        opened = r["resume"]["opened"]
        if opened:
            by_command = sorted(r["resume"]["redis_commands"].items(), key=lambda kv: -kv[1])
            notes.append(
                f"{name}: Redis commands per resume: "
                + ", ".join(f"{cmd} {n / opened:.2f}" for cmd, n in by_command)
            )
        if r["already_seen"] or r["lost"]:
            batches = ", ".join(
                f"{b}: {row['already_seen']}/{row['lost']}" for b, row in r["by_batch"].items()
            )
            notes.append(
                f"{name}: {r['clients_already_seen']} clients got already-seen events again,"
                f" {r['clients_lost']} lost some; by leave batch (again/lost) {batches}"
            )
            notes.extend(f"  e.g. {sample}" for sample in r["samples"][:3])
        odd = {
            k: r[k]
            for k in ("out_of_order", "unexpected", "gaps_before", "never_primed", "server_closed")
            if r.get(k)
        }
        if odd or r["resume"]["caught_up"] < r["resume"]["clients"]:
            notes.append(
                f"{name}: caught up {r['resume']['caught_up']}/{r['resume']['clients']}"
                + "".join(f", {k} {v}" for k, v in odd.items())
            )
        notes.extend(f"{name}: {error}" for error in r["errors"][:3])
    return notes


def filters_table(runs: list[dict[str, Any]]) -> str:
    """One line per filters run: the unfiltered and the filtered burst side by side."""
    head = (
        f"{'server':<9} {'redis':<17} {'subs':>6} {'filters':>7} {'events u/f':>12} "
        f"{'deliveries':>10} {'unf dl/s':>9} {'filt dl/s':>9} {'ratio':>6} {'eval/ev':>7} "
        f"{'lost u/f':>9} {'dups u/f':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in runs:
        plain, sifted = r["unfiltered"]["phase"], r["filtered"]["phase"]
        lines.append(
            f"{r['server']:<9} {r['redis']:<17} {r['subs']:>6} {r['filters']:>7} "
            f"{f'{plain.events}/{sifted.events}':>12} {r['deliveries']:>10} "
            f"{_num(r['throughput_unfiltered']):>9} {_num(r['throughput_filtered']):>9} "
            f"{_num(r['ratio']):>6} {_num(r['evaluations_per_event']):>7} "
            f"{f'{plain.missing}/{sifted.missing}':>9} "
            f"{f'{plain.duplicates}/{sifted.duplicates}':>9}"
        )
    return "\n".join(lines)


def filters_notes(runs: list[dict[str, Any]]) -> list[str]:
    """What a filters run saw besides the table: the machine's and the load processes' CPU,
    evaluations without a filter, wrong-station frames, reorders, unprimed subscribers,
    errors."""
    notes = []
    for r in runs:
        name = f"{r['server']} {r['subs']} subs, {r['filters']} filters ({r['redis']})"
        plain, sifted = r["unfiltered"]["phase"], r["filtered"]["phase"]
        notes.append(
            f"{name}: box% {_pct(plain.machine_cpu_util).strip()}"
            f"/{_pct(sifted.machine_cpu_util).strip()},"
            f" load% {_loaders(plain)} / {_loaders(sifted)},"
            f" server CPU s per 1k deliveries {_num(plain.server_cpu_per_1k, 3)}"
            f"/{_num(sifted.server_cpu_per_1k, 3)},"
            f" Redis cmds per delivery {_num(plain.redis_cmds_per_delivery, 3)}"
            f"/{_num(sifted.redis_cmds_per_delivery, 3)} (unfiltered/filtered)"
        )
        if r["evaluations_per_event"] is None and r["workers"] > 1:
            notes.append(
                f"{name}: evaluations per event not given: with {r['workers']} workers /metrics"
                " answers for one of them"
            )
        unfiltered = r["evaluations_per_event_unfiltered"]
        if unfiltered:
            notes.append(f"{name}: {_num(unfiltered)} filter evaluations per event without a filter")
        odd = {k: r[k] for k in ("unexpected", "out_of_order", "never_primed") if r.get(k)}
        if odd:
            notes.append(f"{name}: " + ", ".join(f"{k} {v}" for k, v in odd.items()))
        if plain.loaders_busy or sifted.loaders_busy:
            notes.append(f"{name}: a load process was above {LOADER_BUSY:.0%} of a core")
        notes.extend(f"{name}: {error}" for error in sorted({*plain.errors, *sifted.errors})[:3])
    return notes


def _gauge_totals(gauges: dict[str, float]) -> dict[str, float]:
    """Prometheus samples summed over their labels, for a one-line summary."""
    totals: dict[str, float] = defaultdict(float)
    for name, value in gauges.items():
        totals[name.partition("{")[0]] += value
    return dict(totals)


def write_chart(runs: list[RunResult], path: Path) -> bool:
    """Burst throughput and steady p99 against subscriber count, one line per server, tenant
    count and Redis topology (a marker per topology)."""
    series: dict[str, list[RunResult]] = defaultdict(list)
    for run in runs:
        if run.error is None and "burst" in run.phases:
            tenants = f"{run.tenants} tenant{'s' if run.tenants > 1 else ''}"
            series[f"{run.server}, {tenants}, {run.redis}"].append(run)
    if not series:
        return False
    try:
        import matplotlib
    except ImportError:
        print("chart:   skipped, matplotlib is missing (pip install -e '.[bench]')")
        return False

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    servers = sorted({points[0].server for points in series.values()})
    colors = {name: f"C{i}" for i, name in enumerate(servers)}  # one colour per server
    markers = dict(zip(topologies(runs), itertools.cycle("os^Dv")))  # one per topology
    for label, points in sorted(series.items()):
        points.sort(key=lambda r: r.subs)
        subs = [r.subs for r in points]
        style = colors[points[0].server] + ("--" if points[0].tenants > 1 else "-")
        marker = markers[points[0].redis]
        left.plot(
            subs, [r.phases["burst"].throughput for r in points], style, marker=marker, label=label
        )
        right.plot(
            subs,
            [r.phases["steady"].p99_ms or float("nan") for r in points],
            style,
            marker=marker,
            label=label,
        )
    for axis, title, unit in (
        (left, "Burst throughput", "deliveries/s"),
        (right, "p99 latency at steady rate", "ms"),
    ):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("subscribers")
        axis.set_ylabel(unit)
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_json(path: Path, meta: dict[str, Any], results: ScenarioResults, subject: str) -> None:
    document = {
        "meta": meta,
        "throughput": to_jsonable(results.throughput),
        "ratios": ratios(results.throughput),
        "idle": to_jsonable(results.idle),
        "stalled": to_jsonable(results.stalled),
        "churn": to_jsonable(results.churn),
        "storm": to_jsonable(results.storm),
        "filters": to_jsonable(results.filters),
        "checks": to_jsonable(checks(results, subject)),
        "skipped": results.skipped,
        "failures": results.failures,
    }
    path.write_text(json.dumps(document, indent=2, default=str))


def print_summary(results: ScenarioResults, subject: str) -> None:
    """The tables a person reads at the end of a run."""
    if results.throughput:
        print(
            "\nPer run (deliv/s = burst; latency = steady phase; cpu/1k = server CPU s per 1,000 deliveries;"
        )
        print("cmd/dl = Redis commands per delivery; rconn = Redis connections per server process;")
        print(
            "load% = CPU of each load process during the burst, in % of a core; box% = the whole"
            " machine's CPU, all cores, in the burst/steady phase; st.rate = steady events/s published)\n"
        )
        print(throughput_table(results.throughput))
        rows = ratios(results.throughput)
        if rows:
            print("\nRatios (burst throughput; same load, same invocation)\n")
            print(ratio_table(rows))
        if any(is_sweep(name) for r in results.throughput for name in r.phases):
            print(
                "\nLatency against load (load = delivered/s over the burst's max; srv cpu = server"
                " process CPU, load cpu = each load process's, in % of a core; box cpu = the whole"
                " machine's, all cores; cmd/dl = Redis commands per delivery in that phase)\n"
            )
            print(sweep_table(results.throughput))
        side_by_side = topology_table(results.throughput)
        if side_by_side:
            print(
                "\nBy Redis topology (burst deliveries/s, steady p99 ms, Redis commands/delivery)\n"
            )
            print(side_by_side)
        busy = busy_phases(results.throughput)
        if busy:
            print(
                f"\nNote: a load process was above {LOADER_BUSY:.0%} of a core in: "
                + ", ".join(
                    f"{r.server}/{r.subs}/{r.tenants} {p.name} ({_loaders(p)})" for r, p in busy
                )
                + " (those phases may be client-bound; compare with the ceiling's rate)"
            )
        lagging = [
            r
            for r in results.throughput
            if "steady" in r.phases and r.phases["steady"].publisher_max_lag_ms > PUBLISHER_LAG_MS
        ]
        if lagging:
            print(
                f"Note: the steady publisher fell over {PUBLISHER_LAG_MS:.0f} ms behind schedule in: "
                + ", ".join(
                    f"{r.server}/{r.subs}/{r.tenants} ({r.phases['steady'].publisher_max_lag_ms:.0f} ms)"
                    for r in lagging
                )
                + " (CPU contention; latency is still measured from each entry's own timestamp)"
            )
    extra = scenario_tables(results)
    if extra:
        print("\n" + extra)
    if results.storm:
        print(
            "\nReconnect storm (N users, one durable cursor each, on one tenant; live s = first"
            " subscribe until all N got an event; sub cpu = server CPU s over it; caught s ="
            " reconnect until every client had every event after its last; res cpu = server CPU s"
            " over the resume; ms/res, cmd/res = server CPU ms and Redis commands per resume;"
            " seen again = events a client got again that it had before leaving; lost = events"
            " a client never got; dups = duplicates within the resume; box% = whole machine)\n"
        )
        print(storm_table(results.storm))
        for note in storm_notes(results.storm):
            print(note)
    if results.filters:
        print(
            "\nPayload filters (one tenant; u/f = unfiltered/filtered run, each on a fresh server;"
            " unfiltered: every event to every subscriber; filtered: subscriber i has where"
            " station = s<i mod filters>, events cycle over the stations, each to its"
            " subs/filters subscribers; same deliveries in both; ratio = filtered/unfiltered"
            " deliveries/s; eval/ev = ragline_filter_evaluations_total per filtered event)\n"
        )
        print(filters_table(results.filters))
        for note in filters_notes(results.filters):
            print(note)
    found = checks(results, subject)
    evaluated = [c for c in found if c.passed is not None]
    if evaluated:
        print(f"\nTargets for {subject!r}\n")
        print("\n".join(c.row() for c in evaluated))
    for check in found:
        if check.passed is None:
            print(f"n/a   {check.name} ({check.limit})")
    for name, reason in results.skipped.items():
        print(f"\nskipped {name}: {reason}")
    for failure in results.failures:
        print(f"\nFAILED {failure['what']}: {failure['error']}")
