"""Faults injected into a gateway process from the test side; the product has no switch for them.

A `GatewayProcess(..., fault="hold_type('x')")` runs `faults.hold_type('x')` before the
gateway starts, in that process only.
"""

from __future__ import annotations

import asyncio
from contextvars import ContextVar
from typing import Any

from ragline.streaming.entries import Entry, Record
from ragline.streaming.hub import Deliveries, DirectWrites, Hub
from ragline.streaming.store import RedisStore


def hold_type(event_type: str) -> None:
    """Entries of `event_type` are read and handed to the writer, which then waits forever:
    a process that dies now has read the entry but never sent it. The reader's own pass
    (`DirectWrites`) leaves them to the subscription's task, which is where they wait."""
    read, take = Deliveries.__anext__, DirectWrites.take

    async def read_then_hold(self: Deliveries) -> Entry:
        entry = await read(self)
        if entry.event_type == event_type:
            await asyncio.Event().wait()
        return entry

    def not_those(self: DirectWrites, entry: Record) -> bool:
        return not (isinstance(entry, Entry) and entry.event_type == event_type) and take(self, entry)

    Deliveries.__anext__ = read_then_hold  # type: ignore[method-assign]
    DirectWrites.take = not_those  # type: ignore[method-assign]


def slow_cursor_writes(flush: float, release: float) -> None:
    """Every periodic cursor flush reaches Redis `flush` seconds late, and every release of a
    durable cursor (a subscription ending) `release` seconds late: a slow network, a busy
    Redis. With `flush < release`, a flush that left before a subscription ended lands
    while it is being released."""
    flushing: ContextVar[bool] = ContextVar("flushing", default=False)
    run_flush, move_groups, release_durable = Hub.flush, RedisStore.move_groups, RedisStore.release_durable

    async def late_flush(self: Hub, *args: Any, **kwargs: Any) -> None:
        flushing.set(True)  # the flush loop's own task
        await run_flush(self, *args, **kwargs)

    async def late_moves(self: RedisStore, moves: Any, *args: Any) -> list[bool]:
        moves = list(moves)
        if flushing.get():
            await asyncio.sleep(flush)
        return await move_groups(self, moves, *args)

    async def late_release(self: RedisStore, *args: Any) -> None:
        await asyncio.sleep(release)
        await release_durable(self, *args)

    Hub.flush = late_flush  # type: ignore[method-assign]
    RedisStore.move_groups = late_moves  # type: ignore[method-assign]
    RedisStore.release_durable = late_release  # type: ignore[method-assign]
