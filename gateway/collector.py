"""Garbage-collector settings for a long-running gateway process.

CPython's collector scans every tracked object in a full (generation 2) collection.
With 1,000 subscriptions a process holds some 250,000 of them, and a full collection
paused the event loop for 100-150 ms about every 10 s under a steady event rate:
every event in flight meanwhile waited, which was the whole of the p99 latency tail
(`python -m bench`, 50 tenants at a quarter of the maximum rate: p99 76-164 ms with
the defaults, 25 ms with these settings, the median unchanged at about 2 ms).

Two standard remedies, applied once the server is up:
- `gc.freeze()` moves what start-up built (modules, the schema, compiled plans) out of
  the collector's sight for good; it is never garbage.
- Young collections every `young_threshold` allocations instead of CPython's 700: an
  event's fan-out allocates records, frames and coroutines that live a few
  milliseconds; with 700 they survive two young collections, are promoted, and it
  is their promotion that triggers the full collections. A young collection of
  20,000 objects takes a few milliseconds.
"""

from __future__ import annotations

import gc

DEFAULT_YOUNG_THRESHOLD = 20_000


def tune(young_threshold: int = DEFAULT_YOUNG_THRESHOLD) -> None:
    """Freeze what exists now and raise the young-generation threshold; 0 keeps
    CPython's defaults."""
    if young_threshold <= 0:
        return
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(young_threshold, middle, old)
