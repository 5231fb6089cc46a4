"""Delivery figures updated per event: plain ints, read by `/metrics` at scrape time.

Per event the cost is one clock read and one bisect over the bucket bounds (shared by
up to `LatencyHistogram.REUSE` writes of one entry in a row) and two additions;
nothing is allocated beyond the numbers themselves, nothing is locked, nothing is
logged.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from dataclasses import dataclass, field

from ..streaming.entries import Entry

# Seconds, as Prometheus's `le` bounds; the last count is +Inf.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_BOUNDS_MS = tuple(bound * 1000 for bound in LATENCY_BUCKETS)
_now, _bucket = time.time, bisect_left  # module globals: one lookup each per event


class LatencyHistogram:
    """Time from an entry's id (when Redis appended it) to its frame being written.

    The fan-out writer writes one entry to a cohort's members one after another: their
    latencies differ by the microseconds between two writes, so the clock is read once
    for up to `REUSE` writes of the same entry in a row, not for every one."""

    __slots__ = ("_bucket", "_elapsed", "_entry", "_reuses", "counts", "sum_ms")
    REUSE = 32  # at a few µs per write, a reading at most ~0.2 ms old

    def __init__(self) -> None:
        self.counts = [0] * (len(_BOUNDS_MS) + 1)  # per bucket, not cumulative
        self.sum_ms = 0.0
        self._entry: Entry | None = None  # the entry observed last, its latency and bucket
        self._elapsed = 0.0
        self._bucket = 0
        self._reuses = 0  # how many more writes of it may use that reading

    def observe(self, entry: Entry) -> None:
        """Called once the entry's frame was written. Replays (`after`, durable catch-up)
        count with their age, which is what a subscriber waited for them."""
        if entry is self._entry and self._reuses:
            self._reuses -= 1
            elapsed, index = self._elapsed, self._bucket
        else:
            elapsed = _now() * 1000.0 - entry.sort_key[0]
            if elapsed < 0.0:  # noqa: PLR1730 (a producer-chosen id ahead of our clock; cheaper than max())
                elapsed = 0.0
            index = _bucket(_BOUNDS_MS, elapsed)
            self._entry, self._elapsed, self._bucket, self._reuses = entry, elapsed, index, self.REUSE
        self.counts[index] += 1
        self.sum_ms += elapsed


@dataclass
class DeliveryMetrics:
    """What the delivery loops of every transport update."""

    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    slow_consumers: int = 0  # subscriptions ended because their client did not read in time
    filter_evaluations: int = 0  # payload filters (`where`) evaluated: once per event and cohort
    # open subscriptions by (kind, durable); kind: "events", "orders" or "compat"
    subscriptions: dict[tuple[str, bool], int] = field(default_factory=dict)

    def opened(self, kind: str, durable: bool) -> None:
        key = (kind, durable)
        self.subscriptions[key] = self.subscriptions.get(key, 0) + 1

    def closed(self, kind: str, durable: bool) -> None:
        self.subscriptions[(kind, durable)] -= 1
