"""Server pings on graphql-transport-ws, and what happens to a peer that does not answer.

Strawberry answers a client's `ping` but never sends one. Without traffic a
dead peer (a phone that lost its network, a NAT that forgot the flow: no
FIN ever arrives) would keep its subscriptions, its consumer groups and its
slot in the connection limits until the kernel gives up on the TCP
connection, which can take many minutes. Every `interval` the gateway sends a
`ping`; if no `pong` comes within `timeout` (or the ping itself cannot be
written, because the peer stopped reading), the connection is given up: a
peer that died at any moment is detected within `interval + timeout`, less
than two intervals when `timeout <= interval`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


class Heartbeat:
    """Pings every `interval`; calls `on_timeout` once if a pong is late, then stops."""

    def __init__(
        self,
        interval: float,
        timeout: float,
        send_ping: Callable[[], Awaitable[None]],
        on_timeout: Callable[[], Awaitable[None]],
    ) -> None:
        self.interval = interval
        self.timeout = timeout
        self._send_ping = send_ping
        self._on_timeout = on_timeout
        self._pong = asyncio.Event()

    def pong(self) -> None:
        """The client answered the ping in flight."""
        self._pong.set()

    async def run(self) -> None:
        """Until cancelled, or until a ping goes unanswered."""
        while True:
            await asyncio.sleep(self.interval)
            self._pong.clear()
            try:
                async with asyncio.timeout(self.timeout):
                    await self._send_ping()
                    await self._pong.wait()
            except TimeoutError:
                await self._on_timeout()
                return
