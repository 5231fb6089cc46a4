"""`python -m bench`: run the selected scenarios against the selected servers and report."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import platform
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil

from bench.config import BenchConfig, build_parser, config_from_args
from bench.filters import filters_run, filters_unsupported
from bench.report import print_summary, write_chart, write_json
from bench.results import LOADER_BUSY, RunResult, to_jsonable
from bench.rig import Rig, build_rig
from bench.scenarios import (
    ScenarioResults,
    churn_run,
    idle_run,
    stalled_run,
    storm_run,
    storm_unsupported,
    throughput_run,
)
from bench.servers import TargetSpec, raise_nofile_limit, select_targets
from bench.topology import chosen_topologies
from ragline.streaming.connections import is_cluster_url

logger = logging.getLogger("bench")

PACKAGES = (
    "ragline",
    "strawberry-graphql",
    "fastapi",
    "uvicorn",
    "redis",
    "hiredis",
    "websockets",
    "orjson",
)


def available_targets(config: BenchConfig, results: ScenarioResults) -> list[TargetSpec]:
    """The requested targets that can start here; the others are reported as skipped."""
    specs = []
    for spec in select_targets(config.servers, config.targets):
        reason = spec.missing_reason()
        if reason:
            logger.warning("skipping %s: %s", spec.name, reason)
            results.skipped[spec.name] = reason
        else:
            specs.append(spec)
    return specs


async def run_throughput(rig: Rig, specs: list[TargetSpec], results: ScenarioResults) -> None:
    """The matrix: for each point, every server in turn, so they see the same conditions."""
    for tenants in rig.config.tenants:
        for subs in rig.config.subs:
            for spec in specs:
                logger.info("== throughput %s: %s subs, %s tenants", spec.name, subs, tenants)
                try:
                    results.throughput.append(await throughput_run(rig, spec, subs, tenants))
                except Exception as exc:
                    logger.exception("run failed")
                    results.throughput.append(_failed_run(rig, spec, subs, tenants, exc))


def _failed_run(rig: Rig, spec: TargetSpec, subs: int, tenants: int, exc: Exception) -> RunResult:
    return RunResult(
        spec.name,
        subs,
        tenants,
        rig.config.workers,
        {},
        0,
        0.0,
        0.0,
        0.0,
        0,
        0.0,
        error=f"{type(exc).__name__}: {exc}",
        redis=rig.topology.label,
        redis_primaries=len(rig.monitor.primaries),
    )


async def run_scenario(
    rig: Rig, name: str, specs: list[TargetSpec], results: ScenarioResults
) -> None:
    runners = {
        "idle": (idle_run, results.idle),
        "stalled": (stalled_run, results.stalled),
        "churn": (churn_run, results.churn),
    }
    runner, sink = runners[name]
    for spec in specs:
        logger.info("== %s %s on %s", name, spec.name, rig.topology.label)
        try:
            sink.append({**await runner(rig, spec), "redis": rig.topology.label})
        except Exception as exc:
            logger.exception("%s %s failed", name, spec.name)
            results.failures.append(
                {
                    "what": f"{name} {spec.name} on {rig.topology.label}",
                    "error": f"{type(exc).__name__}: {exc}",
                }
            )


def capable_targets(
    scenario: str, specs: list[TargetSpec], unsupported: Callable[[TargetSpec], str | None], results: ScenarioResults
) -> list[TargetSpec]:
    """The targets that can run `scenario`; the others are logged and listed as skipped."""
    capable = []
    for spec in specs:
        reason = unsupported(spec)
        if reason:
            logger.info("%s: skipping %s: %s", scenario, spec.name, reason)
            results.skipped[f"{spec.name} ({scenario})"] = reason
        else:
            capable.append(spec)
    return capable


async def run_storm(rig: Rig, specs: list[TargetSpec], results: ScenarioResults) -> None:
    """Each storm size on every target that has durable cursors; the others are skipped."""
    capable = capable_targets("storm", specs, storm_unsupported, results)
    for subs in rig.config.storm_subs:
        for spec in capable:
            logger.info("== storm %s: %s clients on %s", spec.name, subs, rig.topology.label)
            try:
                results.storm.append(
                    {**await storm_run(rig, spec, subs), "redis": rig.topology.label}
                )
            except Exception as exc:
                logger.exception("storm %s failed", spec.name)
                results.failures.append(
                    {
                        "what": f"storm {spec.name} N={subs} on {rig.topology.label}",
                        "error": f"{type(exc).__name__}: {exc}",
                    }
                )


async def run_filters(rig: Rig, specs: list[TargetSpec], results: ScenarioResults) -> None:
    """Unfiltered, then filtered subscribers on every target that takes `where`; the
    others are skipped."""
    capable = capable_targets("filters", specs, filters_unsupported, results)
    subs, count = rig.config.filter_subs, rig.config.filter_count
    for spec in capable:
        logger.info(
            "== filters %s: %s subs, %s filters on %s", spec.name, subs, count, rig.topology.label
        )
        try:
            results.filters.append({**await filters_run(rig, spec), "redis": rig.topology.label})
        except Exception as exc:
            logger.exception("filters %s failed", spec.name)
            results.failures.append(
                {
                    "what": f"filters {spec.name} S={subs} F={count} on {rig.topology.label}",
                    "error": f"{type(exc).__name__}: {exc}",
                }
            )


async def run(
    config: BenchConfig, out_dir: Path, stamp: str
) -> tuple[ScenarioResults, dict[str, Any]]:
    """Every scenario on every Redis topology asked for, one topology after the other."""
    results = ScenarioResults()
    specs = available_targets(config, results)
    log_dir = out_dir / f"{stamp}-logs"
    meta = describe(config, stamp)
    for topology in chosen_topologies(config.cluster, config.cluster_replicas, config.redis_url):
        logger.info("=== Redis: %s", topology.label)
        async with build_rig(config, topology, log_dir / topology.slug) as rig:
            meta["redis"].append(await describe_redis(rig))
            if "throughput" in config.scenarios:
                await run_throughput(rig, specs, results)
            for name in ("idle", "stalled", "churn"):
                if name in config.scenarios:
                    await run_scenario(rig, name, specs, results)
            if "storm" in config.scenarios:
                await run_storm(rig, specs, results)
            if "filters" in config.scenarios:
                await run_filters(rig, specs, results)
    meta["seconds"] = time.monotonic() - meta.pop("_started")
    return results, meta


async def describe_redis(rig: Rig) -> dict[str, Any]:
    """The topology one pass ran on, as the runs' `redis` field names it."""
    return {
        "label": rig.topology.label,
        "cluster": is_cluster_url(rig.redis_url),
        "masters": len(rig.monitor.primaries),
        "replicas": len(rig.monitor.nodes) - len(rig.monitor.primaries),
        "started_by_harness": rig.topology.url is None,
        "version": await rig.monitor.version(),
        "nodes": [node.describe() for node in rig.monitor.nodes],
    }


def describe(config: BenchConfig, stamp: str) -> dict[str, Any]:
    """What a reader needs to compare two result files."""
    versions: dict[str, str | None] = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "stamp": stamp,
        "_started": time.monotonic(),
        "argv": [_redacted(arg, config.redis_url) for arg in sys.argv[1:]],
        "config": {
            **to_jsonable(config),
            "redis_url": _redacted(config.redis_url, config.redis_url),
        },
        "machine": {
            "cpus": os.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "versions": versions,
        "redis": [],  # one entry per topology, filled in as each pass starts
        "method": {
            "throughput": "burst deliveries / (last receipt - first XADD); deliveries = distinct ids per sub",
            "latency": "client receipt wall clock - entry id millisecond (same host clock; +0..1 ms)",
            "losses": "per subscription, publisher's per-tenant count minus distinct ids received",
            "server_cpu": "psutil user+system over the server's process tree, phase delta (server_cpu_s); server_system_s: its system part",
            "redis_cmds": "INFO commandstats delta summed over every primary, minus the harness's own commands (XADD, INFO, CLIENT, XINFO) and replication's (REPLCONF, PSYNC)",
            "redis_cpu": "INFO cpu used_cpu_user+sys delta summed over every primary",
            "redis_connections": "CLIENT LIST entries on every node not named bench-* nor replication links, max of after-prime and after-steady",
            "redis_topology": "each run's `redis` names an entry of meta.redis; clusters started by the harness are fresh per topology (tests/cluster.py)",
            "rss_per_sub": "(tree RSS with S primed subs - RSS before connecting) / S",
            "storm": "N users, one durable events subscription each, one tenant; caught up = every client has every stream entry after the last id it had received before leaving; resume CPU and Redis commands from the first reconnect until all caught up + settle_seconds, per resume = / clients reconnected; already_seen = distinct ids a client got on resume that it had got before leaving; lost = expected ids never got",
            "filters": "one tenant, S subscribers, each run on a fresh target; unfiltered: E events to all S; filtered: subscriber i has where {path: station, eq: s<i mod F>}, F*E events with payload.station cycling over the F stations, each to its S/F subscribers (same S*E deliveries); deliveries/s as the throughput burst's; losses per subscriber = its station's published count minus distinct ids received; evaluations per event = ragline_filter_evaluations_total delta over the burst (read once it stops moving) / events published",
            "machine_cpu": "psutil.cpu_times over all cores, busy (total - idle - iowait) delta / total delta, from before a phase's first publish until every load process reported",
            "client_bound": f"a phase is flagged (loaders_busy) when a load process used more than {LOADER_BUSY:.0%} of a core over it, in every phase; and ceiling rate >= subject rate",
        },
    }


def _redacted(text: str | None, url: str | None) -> str | None:
    """`text` with the password of `url` (--redis-url) masked, for the JSON."""
    password = urlsplit(url).password if url else None
    return text.replace(password, "***") if text and password else text


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    config = config_from_args(args)
    raise_nofile_limit()
    out_dir = config.out
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    results, meta = asyncio.run(run(config, out_dir, stamp))
    json_path = out_dir / f"{stamp}.json"
    write_json(json_path, meta, results, config.subject)
    chart = out_dir / f"{stamp}.png"
    print_summary(results, config.subject)
    print()
    for redis in meta["redis"]:
        print(
            f"redis:   {redis['label']} (primaries {redis['masters']},"
            f" replicas {redis['replicas']}, Redis {redis['version']})"
        )
    print(f"results: {json_path}")
    if write_chart(results.throughput, chart):
        print(f"chart:   {chart}")
    print(f"logs:    {out_dir / (stamp + '-logs')}   ({meta['seconds']:.0f}s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
