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
from contextlib import suppress


class Heartbeat:
    """Pings every `interval`; calls `on_timeout` once if a pong is late, then stops.

    Loop timers, not a task per connection: a sleeping task with its coroutine
    and an Event cost about 3 KB per idle socket. A task exists only while a
    ping is being written or a timeout is being handled.
    """

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
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._waiting = False  # a ping is out and its pong has not come

    def start(self) -> None:
        self._timer = self._loop.call_later(self.interval, self._ping)

    def pong(self) -> None:
        """The client answered the ping in flight."""
        if self._waiting and self._timer is not None:
            self._waiting = False
            self._timer.cancel()
            self._timer = self._loop.call_later(self.interval, self._ping)

    async def stop(self) -> None:
        """No more pings; a ping being written or a timeout being handled is cancelled."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task

    def _ping(self) -> None:
        # The timeout runs from here: a ping that cannot even be written (the peer
        # stopped reading, the buffers are full) times out as a missing pong does.
        self._waiting = True
        self._timer = self._loop.call_later(self.timeout, self._expired)
        self._track(self._loop.create_task(_call(self._send_ping)))

    def _expired(self) -> None:
        self._timer = None
        self._waiting = False
        if self._task is not None:
            self._task.cancel()  # a ping still being written
        self._track(self._loop.create_task(_call(self._on_timeout)))

    def _track(self, task: asyncio.Task[None]) -> None:
        """`task` is the one running; let go of it once it ended (a cancelled one keeps a
        traceback whose frames refer to the callbacks' owner, which refers to this)."""
        self._task = task
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        if self._task is task:
            self._task = None


async def _call(job: Callable[[], Awaitable[None]]) -> None:
    """`job()` as a coroutine, for `create_task`."""
    await job()
