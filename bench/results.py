"""Plain-data results and the arithmetic that turns raw replies into them.

Kept free of I/O so the numbers' definitions can be read in one place:
throughput is distinct deliveries divided by (last receipt - first publish);
latency is receipt time minus the entry id's millisecond; CPU and Redis
commands are deltas over the phase divided by deliveries.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from bench.metrics import (
    MIN_UTIL_WINDOW_S,
    LatencyHistogram,
    MachineCpu,
    RedisSnapshot,
    server_commands,
)

LOADER_BUSY = 0.85  # a load process above this share of a core may be limiting the phase
SWEEP_PREFIX = "steady@"  # the --sweep phases: "steady@0.1" is a tenth of the burst's rate


def sweep_phase(fraction: float) -> str:
    return f"{SWEEP_PREFIX}{fraction:g}"


def is_sweep(name: str) -> bool:
    return name.startswith(SWEEP_PREFIX)


@dataclass
class PhaseResult:
    """One measured phase (a burst or a steady rate) of one run."""

    name: str
    events: int
    expected: int
    delivered: int
    missing: int
    duplicates: int
    out_of_order: int
    duration_s: float
    throughput: float
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    publish_rate: float
    publisher_max_lag_ms: float
    publisher_cpu_util: float | None
    loader_cpu_util: list[float | None]
    server_cpu_s: float
    server_cpu_per_1k: float | None
    redis_commands: dict[str, int]
    redis_cmds_per_delivery: float | None
    redis_cpu_per_1k: float | None
    stalled: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    # Whole machine, share of all cores busy (1.0 = all), from before the phase's first
    # publish until every load process reported; None for a window under 0.5 s.
    machine_cpu_util: float | None = None
    loaders_busy: bool = False  # a load process above LOADER_BUSY of a core: may be client-bound
    # frames of the phase a filtered subscription got for another station (should be 0)
    unexpected: int = 0
    server_system_s: float = 0.0  # the kernel's part of server_cpu_s

    @property
    def losses(self) -> int:
        return self.missing


@dataclass
class PhaseInputs:
    """Everything gathered around one phase, before summarising."""

    name: str
    published: dict[str, Any]
    loader_replies: list[dict[str, Any]]
    redis_before: RedisSnapshot
    redis_after: RedisSnapshot
    server_cpu_s: float
    machine_before: MachineCpu
    machine_after: MachineCpu
    server_system_s: float = 0.0


def summarize_phase(inputs: PhaseInputs) -> PhaseResult:
    """Merge the load processes' tallies with server and Redis deltas."""
    replies = inputs.loader_replies
    hist = LatencyHistogram()
    for reply in replies:
        hist.merge(LatencyHistogram.from_dict(reply["hist"]))
    delivered = sum(r["received"] for r in replies)
    last_rx = max((r["last_rx"] or 0.0) for r in replies)
    t_start = float(inputs.published["t_start"])
    duration = max(last_rx - t_start, 1e-9) if last_rx else 0.0
    commands = server_commands(
        inputs.redis_before, inputs.redis_after, inputs.published["commands"]
    )
    redis_cpu = inputs.redis_after.cpu_s - inputs.redis_before.cpu_s
    loader_util = [_util(r["cpu_s"], (r["last_rx"] or t_start) - t_start) for r in replies]
    return PhaseResult(
        name=inputs.name,
        events=int(inputs.published["events"]),
        expected=sum(r["expected"] for r in replies),
        delivered=delivered,
        missing=sum(r["missing"] for r in replies),
        duplicates=sum(r["duplicates"] for r in replies),
        out_of_order=sum(r["out_of_order"] for r in replies),
        duration_s=duration,
        throughput=delivered / duration if duration else 0.0,
        p50_ms=_ms(hist.percentile(0.50)),
        p99_ms=_ms(hist.percentile(0.99)),
        max_ms=_ms(hist.max_s if hist.total else None),
        publish_rate=float(inputs.published["rate"]),
        publisher_max_lag_ms=float(inputs.published.get("max_lag_s", 0.0)) * 1000,
        publisher_cpu_util=_util(inputs.published["cpu_s"], inputs.published["t_end"] - t_start),
        loader_cpu_util=loader_util,
        server_cpu_s=inputs.server_cpu_s,
        server_cpu_per_1k=_per(inputs.server_cpu_s * 1000, delivered),
        redis_commands=commands,
        redis_cmds_per_delivery=_per(sum(commands.values()), delivered),
        redis_cpu_per_1k=_per(redis_cpu * 1000, delivered),
        stalled={k: sum(r["stalled"][k] for r in replies) for k in ("subs", "received", "closed")},
        errors=sorted({e for r in replies for e in r["errors"]})[:10],
        machine_cpu_util=inputs.machine_after.util_since(inputs.machine_before),
        loaders_busy=max((u or 0.0 for u in loader_util), default=0.0) > LOADER_BUSY,
        unexpected=sum(int(r.get("unexpected", 0)) for r in replies),
        server_system_s=inputs.server_system_s,
    )


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def _per(numerator: float, deliveries: int) -> float | None:
    return numerator / deliveries if deliveries else None


def _util(cpu_s: float, wall_s: float) -> float | None:
    """CPU seconds per wall second (1.0 = one core busy); None for too short a window."""
    return cpu_s / wall_s if wall_s >= MIN_UTIL_WINDOW_S else None


@dataclass
class RunResult:
    """One server at one (subscribers, tenants) point of the throughput matrix."""

    server: str
    subs: int
    tenants: int
    workers: int
    connect: dict[str, Any]
    processes: int
    rss_base_mb: float
    rss_subs_mb: float
    rss_per_sub_kb: float
    redis_connections: int
    redis_connections_per_process: float
    phases: dict[str, PhaseResult] = field(default_factory=dict)
    groups_after_close: int | None = None
    error: str | None = None
    redis: str = "single"  # the topology's label (meta.redis in the JSON describes it)
    redis_primaries: int = 1  # redis_connections span them all; the target is per primary

    @property
    def losses(self) -> int:
        return sum(p.missing for p in self.phases.values())

    def steady_phases(self) -> list[PhaseResult]:
        """The half-rate steady phase and the `--sweep` ones."""
        return [p for name, p in self.phases.items() if name == "steady" or is_sweep(name)]

    def total_cmds_per_delivery(self) -> float | None:
        """Redis commands per delivery over the burst and the half-rate steady phase together
        (the `--sweep` phases have their own figure in the latency table: at a tenth of the
        rate a cursor move per subscription per flush interval weighs more per delivery)."""
        phases = [p for name, p in self.phases.items() if not is_sweep(name)]
        delivered = sum(p.delivered for p in phases)
        commands = sum(sum(p.redis_commands.values()) for p in phases)
        return commands / delivered if delivered else None


def to_jsonable(value: Any) -> Any:
    """Dataclasses (nested) to plain dicts for json."""
    if hasattr(value, "__dataclass_fields__"):
        return {k: to_jsonable(v) for k, v in asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value
