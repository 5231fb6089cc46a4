"""What live control shares per process: the presence board and the revocations
(`streaming.presence`, `streaming.revocations`), and the stats tickers, which compute the
figures once per interval per distinct visibility (one tenant, or every tenant for admins)
for all of their subscribers, however many."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import suppress
from dataclasses import dataclass, field

from ..schema.types import Stats
from ..streaming.hub import Hub
from ..streaming.presence import PresenceBoard
from ..streaming.revocations import Revocations
from .figures import visible_stats


@dataclass
class LiveControl:
    """This process's presence board, revocations and stats tickers."""

    hub: Hub
    presence: PresenceBoard
    revocations: Revocations
    _tickers: dict[tuple[str | None, int], StatsTicker] = field(default_factory=dict)

    async def stats_updates(self, tenant_id: str | None, interval: int) -> AsyncIterator[Stats]:
        """The latest figures at once, then each new computation, of the ticker for
        (`tenant_id`, `interval`), started by its first subscriber, stopped after its last."""
        key = (tenant_id, interval)
        ticker = self._tickers.get(key)
        if ticker is None:
            ticker = self._tickers[key] = StatsTicker(self.hub, tenant_id, interval)
        queue: asyncio.Queue[Stats] = asyncio.Queue(maxsize=1)  # a reader that lags gets the latest
        ticker.listeners.add(queue)
        try:
            if ticker.latest is not None:
                yield ticker.latest
            while True:
                yield await queue.get()
        finally:
            ticker.listeners.discard(queue)
            if not ticker.listeners and self._tickers.get(key) is ticker:
                del self._tickers[key]
                await ticker.stop()

    async def close(self) -> None:
        for ticker in list(self._tickers.values()):
            await ticker.stop()
        self._tickers.clear()
        self.revocations.close()
        await self.presence.close()


class StatsTicker:
    """Computes one visibility's figures every `interval` seconds for its listeners."""

    def __init__(self, hub: Hub, tenant_id: str | None, interval: int) -> None:
        self.hub = hub
        self.tenant_id = tenant_id
        self.interval = interval
        self.latest: Stats | None = None
        self.listeners: set[asyncio.Queue[Stats]] = set()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            self.latest = stats = await visible_stats(self.hub, self.tenant_id)
            for queue in self.listeners:
                if queue.full():
                    queue.get_nowait()
                queue.put_nowait(stats)
            next_at += self.interval
            await asyncio.sleep(max(0.0, next_at - loop.time()))

    async def stop(self) -> None:
        self._task.cancel()
        with suppress(asyncio.CancelledError):
            await self._task


__all__ = ["LiveControl", "StatsTicker"]
