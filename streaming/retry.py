"""The pause between two attempts to reach Redis again: doubling, never a busy loop."""

from __future__ import annotations

FIRST_PAUSE = 0.1  # seconds before the first retry
MAX_PAUSE = 5.0    # longest pause between retries


def next_pause(previous: float) -> float:
    """The pause after one of `previous` seconds (0.0 at the first failure): from
    `FIRST_PAUSE`, doubling up to `MAX_PAUSE`."""
    return min(MAX_PAUSE, max(FIRST_PAUSE, previous * 2))
