"""Faults injected into a gateway process from the test side; the product has no switch for them.

A `GatewayProcess(..., fault="hold_type('x')")` runs `faults.hold_type('x')` before the
gateway starts, in that process only.
"""

from __future__ import annotations

import asyncio

from ragline.streaming.entries import Entry
from ragline.streaming.hub import Deliveries


def hold_type(event_type: str) -> None:
    """Entries of `event_type` are read and handed to the writer, which then waits forever:
    a process that dies now has read the entry but never sent it."""
    read = Deliveries.__anext__

    async def read_then_hold(self: Deliveries) -> Entry:
        entry = await read(self)
        if entry.event_type == event_type:
            await asyncio.Event().wait()
        return entry

    Deliveries.__anext__ = read_then_hold  # type: ignore[method-assign]
