"""`/metrics`: the gateway's figures in the Prometheus text format.

Nothing here runs per event. The hot paths only add to plain ints (the hub's
per-tenant counters, `resolvers.metrics.DeliveryMetrics`, the figures below);
a prometheus-client `Collector` reads them when Prometheus scrapes, into a
registry of the app's own (several apps may share a process in tests).
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from prometheus_client import CollectorRegistry, GCCollector, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from redis.asyncio.retry import Retry

from ..resolvers.metrics import LATENCY_BUCKETS, DeliveryMetrics
from ..streaming.hub import Hub
from .auth import Authenticator


class Observed(Protocol):
    """What /metrics reads of the process (gateway.runtime.Runtime)."""

    hub: Hub | None
    metrics: GatewayMetrics
    authenticator: Authenticator

T = TypeVar("T")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass
class GatewayMetrics:
    """This app's figures besides the hub's counters; each update is one addition."""

    delivery: DeliveryMetrics = field(default_factory=DeliveryMetrics)
    ping_timeouts: int = 0          # graphql-transport-ws sockets closed for a missing pong
    refusals: dict[str, int] = field(default_factory=dict)  # by gateway.limits.Limit

    def refused(self, limit: str) -> None:
        self.refusals[limit] = self.refusals.get(limit, 0) + 1


@dataclass
class RedisFigures:
    """Failed Redis attempts and recoveries of this process, from `CountingRetry`."""

    errors: int = 0
    reconnects: int = 0
    failing: bool = False


REDIS = RedisFigures()  # per process, like the connections it counts


class CountingRetry(Retry):
    """redis-py's retry policy, counting each failed attempt (connection errors and
    timeouts, retries included) and each first success after failures (a reconnect).

    redis-py deep-copies the policy into every connection; the copies count into
    the same process-wide `REDIS`."""

    async def call_with_retry(
        self,
        do: Callable[[], Awaitable[T]],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> T:
        async def counted_fail(*args: Any) -> None:
            REDIS.errors += 1
            REDIS.failing = True
            await fail(*args)

        result = await super().call_with_retry(do, counted_fail, is_retryable, with_failure_count)
        if REDIS.failing:
            REDIS.failing = False
            REDIS.reconnects += 1
        return result

    def __deepcopy__(self, memo: dict[int, Any]) -> CountingRetry:
        return CountingRetry(copy.deepcopy(self._backoff, memo), self._retries, self._supported_errors)


class GatewayCollector(Collector):
    """Reads the runtime's figures at scrape time."""

    def __init__(self, runtime: Observed) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Metric]:
        yield from self._tenant_metrics()
        yield from self._delivery_metrics(self.runtime.metrics.delivery)
        yield from self._health_metrics()

    def _tenant_metrics(self) -> Iterator[Metric]:
        hub = self.runtime.hub
        figures = hub.figures() if hub is not None else {}
        rows = sorted(figures.items())
        specs = (
            (GaugeMetricFamily, "ragline_connections", "Open connections (WebSockets and HTTP streams)", "connections"),
            (GaugeMetricFamily, "ragline_subscriptions", "Open subscriptions", "subscriptions"),
            (GaugeMetricFamily, "ragline_pending_events", "Events read for subscribers and not yet written", "pending"),
            (CounterMetricFamily, "ragline_events_delivered", "Events written to subscribers", "delivered"),
            (CounterMetricFamily, "ragline_dead_letters", "Bad entries moved to the dead-letter stream", "dead_lettered"),
        )
        for kind, name, documentation, column in specs:
            family = kind(name, documentation, labels=["tenant"])
            for tenant, row in rows:
                family.add_metric([tenant], row[column])
            yield family
        counters = hub.counters.tenants() if hub is not None else {}
        skipped = CounterMetricFamily("ragline_events_skipped", "Events a subscriber's filter skipped", labels=["tenant"])
        acked = CounterMetricFamily(
            "ragline_events_acknowledged", "Events the cursor moved past (delivered or skipped)", labels=["tenant"]
        )
        for tenant, counts in sorted(counters.items()):
            skipped.add_metric([tenant], counts.skipped)
            acked.add_metric([tenant], counts.delivered + counts.skipped)
        yield skipped
        yield acked

    def _delivery_metrics(self, delivery: DeliveryMetrics) -> Iterator[Metric]:
        kinds = GaugeMetricFamily(
            "ragline_subscriptions_by_kind", "Open subscriptions by kind", labels=["kind", "durable"]
        )
        for (kind, durable), count in sorted(delivery.subscriptions.items()):
            kinds.add_metric([kind, str(durable).lower()], count)
        yield kinds
        latency = delivery.latency
        buckets, running = [], 0
        for bound, count in zip((*LATENCY_BUCKETS, float("inf")), latency.counts, strict=True):
            running += count
            buckets.append(("+Inf" if bound == float("inf") else f"{bound:g}", running))
        yield HistogramMetricFamily(
            "ragline_delivery_latency_seconds",
            "From an entry's id time to its frame being written",
            buckets=buckets,
            sum_value=latency.sum_ms / 1000,
        )

    def _health_metrics(self) -> Iterator[Metric]:
        runtime, metrics = self.runtime, self.runtime.metrics
        hub = runtime.hub
        yield GaugeMetricFamily("ragline_redis_available", "Whether Redis answers", value=int(hub is not None and hub.available))
        yield CounterMetricFamily("ragline_redis_errors", "Failed Redis attempts, retries included", value=REDIS.errors)
        yield CounterMetricFamily("ragline_redis_reconnects", "Redis connections re-established after failures", value=REDIS.reconnects)
        yield CounterMetricFamily(
            "ragline_slow_consumer_closes", "Connections ended for a client not reading in time",
            value=metrics.delivery.slow_consumers,
        )
        yield CounterMetricFamily(
            "ragline_filter_evaluations", "Payload filters (where) evaluated: once per event per distinct filter",
            value=metrics.delivery.filter_evaluations,
        )
        yield CounterMetricFamily("ragline_ping_timeouts", "Sockets closed for a missing pong", value=metrics.ping_timeouts)
        yield _labelled(CounterMetricFamily, "ragline_auth_failures", "Refused tokens by reason", "reason",
                        runtime.authenticator.failures)
        yield _labelled(CounterMetricFamily, "ragline_limit_refusals", "Requests refused by a limit", "limit",
                        metrics.refusals)


def _labelled(kind: type[Any], name: str, documentation: str, label: str, counts: dict[str, int]) -> Metric:
    family = kind(name, documentation, labels=[label])
    for value, count in sorted(counts.items()):
        family.add_metric([value], count)
    metric: Metric = family
    return metric


def registry_for(runtime: Observed) -> CollectorRegistry:
    """A registry of the gateway's figures and this process's (memory, CPU, file descriptors,
    and what the cyclic garbage collector found: `python_gc_*`)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(runtime))
    ProcessCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
