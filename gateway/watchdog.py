"""Slow consumers on `/graphql` (every operation's writes, on every path), found without a timer per write.

A frame write normally completes at once (the transport buffers it); only a
peer that stopped reading makes one wait, once the buffers are full. Arming
`asyncio.timeout` around every write costs a timer-heap push and its cancel
per event per subscriber, which profiling showed to be the largest cost of a
delivery after the socket write itself. Instead each writer stamps when its
current write began; one loop timer per process, armed only while there are
writers, looks every `timeout / 4` (at most every second) for writes pending
longer than `timeout` and cancels them. A stalled write is so ended after
between `timeout` and `1.25 * timeout`.
"""

from __future__ import annotations

import asyncio

MAX_SWEEP_INTERVAL = 1.0


class Writer:
    """One task's writes: `since` is when the pending write began, 0.0 when none is.
    Its `task` is dropped once the task stops writing (`WriteWatch.forget`): the task's
    frames refer to the writer, so keeping it would make a cycle of each ended task."""

    __slots__ = ("since", "stalled", "task")

    def __init__(self, task: asyncio.Task[object]) -> None:
        self.task: asyncio.Task[object] | None = task
        self.since = 0.0
        self.stalled = False  # set when the watch cancelled the task for a stalled write


class WriteWatch:
    """The writers of this process, and the timer that ends their stalled writes."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.interval = min(MAX_SWEEP_INTERVAL, timeout / 4)
        self._writers: set[Writer] = set()
        self._timer: asyncio.TimerHandle | None = None

    def watch(self) -> Writer:
        """A writer for the current task; `forget` it when the task stops writing."""
        task = asyncio.current_task()
        assert task is not None
        writer = Writer(task)
        self._writers.add(writer)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.interval, self._sweep)
        return writer

    def forget(self, writer: Writer) -> None:
        self._writers.discard(writer)
        writer.task = None

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        oldest = loop.time() - self.timeout
        for writer in self._writers:
            task = writer.task
            if 0.0 < writer.since <= oldest and not writer.stalled and task is not None:
                writer.stalled = True
                task.cancel()
        self._timer = loop.call_later(self.interval, self._sweep) if self._writers else None


def stalled(writer: Writer) -> bool:
    """Whether the CancelledError being handled is the watch's, not anybody else's
    (then the caller ends the subscription as a slow consumer instead of unwinding)."""
    task = writer.task
    return writer.stalled and task is not None and task.uncancel() == 0


__all__ = ["WriteWatch", "Writer", "stalled"]
