"""A load-generating client process: many graphql-transport-ws subscriptions.

Each subscription is one WebSocket connection (compression off) carrying one
`events` subscription. Every `next` frame is timestamped on receipt; latency
is receipt time minus the millisecond in the entry id. Per subscription the
entry ids are checked for order and duplicates, and the distinct ids of the
current phase are counted against what the publisher says it appended, which
gives losses. The orchestrator drives this process over stdin (bench.rpc);
run as `python -m bench.load`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from bench import rpc
from bench.metrics import LatencyHistogram, self_cpu_seconds
from bench.protocol import (
    SUBPROTOCOL,
    MessageType,
    init_message,
    make_token,
    subscribe_message,
)
from bench.servers import raise_nofile_limit

logger = logging.getLogger(__name__)

CONNECT_ATTEMPTS = 3
ERROR_SAMPLES = 5
# A stalled client models a slow reader with small buffers, so the backlog
# reaches the server quickly instead of hiding in the kernel's autotuned ones.
STALLED_RCVBUF = 4096
STALLED_MAX_QUEUE = 2

SUBSCRIBE_TEXT = orjson.dumps(subscribe_message()).decode()
PONG_TEXT = orjson.dumps({"type": MessageType.PONG.value}).decode()


def ws_options(stalled: bool) -> dict[str, Any]:
    """websockets client options: no compression, no keepalive noise, unbounded frame size."""
    return {
        "subprotocols": [SUBPROTOCOL],
        "compression": None,
        "open_timeout": 60,
        "ping_interval": None,
        "close_timeout": 2,
        "max_size": None,
        "max_queue": STALLED_MAX_QUEUE if stalled else 64,
        "user_agent_header": None,
        "proxy": None,
    }


@dataclass
class SubSpec:
    """Which tenant a subscription belongs to and whether it will be told to stall."""

    index: int
    tenant: str
    stall: bool = False


@dataclass
class Phase:
    """Tallies for one measured phase, across this process's subscriptions."""

    name: str
    started: float
    cpu_start: float
    hist: LatencyHistogram = field(default_factory=LatencyHistogram)
    first_rx: float | None = None
    last_rx: float = 0.0
    duplicates: int = 0
    out_of_order: int = 0
    targets: dict[str, int] | None = None
    remaining: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)


class Subscription:
    """One connection, one subscription, and what arrived on it."""

    def __init__(self, spec: SubSpec, fleet: Fleet) -> None:
        self.spec = spec
        self.fleet = fleet
        self.ws: ClientConnection | None = None
        self.task: asyncio.Task[None] | None = None
        self.last: tuple[int, int] = (0, 0)
        self.seen: set[str] = set()
        self.primed = False
        self.stalled = False
        self.closing = False
        self.closed = False
        self.counted = False
        self.close_code: int | None = None

    @property
    def healthy(self) -> bool:
        """Healthy subscriptions are the ones whose numbers are reported (stall candidates aside)."""
        return not self.spec.stall

    async def open(self, url: str, token: str) -> None:
        """Connect, init, wait for the ack, subscribe; retried a few times."""
        error: Exception | None = None
        for attempt in range(CONNECT_ATTEMPTS):
            try:
                self.ws = await self._connect(url)
                await self._handshake(token)
                self.task = asyncio.create_task(self.receive())
                return
            except (
                TimeoutError,
                OSError,
                InvalidHandshake,
                ConnectionClosed,
                ProtocolViolation,
            ) as exc:
                error = exc
                await self._drop()
                await asyncio.sleep(0.2 * (attempt + 1))
        assert error is not None
        raise error

    async def _connect(self, url: str) -> ClientConnection:
        if not self.spec.stall:
            return await connect(url, **ws_options(stalled=False))
        parts = urllib.parse.urlsplit(url)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, STALLED_RCVBUF)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, (parts.hostname, parts.port))
        except BaseException:
            sock.close()
            raise
        return await connect(url, sock=sock, **ws_options(stalled=True))

    async def _handshake(self, token: str) -> None:
        assert self.ws is not None
        await self.ws.send(orjson.dumps(init_message(token)).decode())
        reply = orjson.loads(await asyncio.wait_for(self.ws.recv(), 60))
        if reply.get("type") != MessageType.CONNECTION_ACK.value:
            raise ProtocolViolation(f'Expected "connection_ack", but got {reply!r:.200}')
        await self.ws.send(SUBSCRIBE_TEXT)

    async def _drop(self) -> None:
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()
            self.ws = None

    async def receive(self) -> None:
        """Record every frame; a stalled subscription stops reading and waits to be closed."""
        assert self.ws is not None
        try:
            async for raw in self.ws:
                kind = self.fleet.on_frame(self, raw, time.time())
                if kind == MessageType.PING.value:
                    await self.ws.send(PONG_TEXT)
                if self.stalled:
                    await asyncio.Event().wait()
        except ConnectionClosed:
            pass
        finally:
            self.close_code = self.ws.close_code
            self.closed = True
            self.fleet.on_closed(self)

    async def close(self) -> None:
        """Close politely; a stalled one is aborted since it will not read the close reply."""
        self.closing = True
        if self.task is not None and self.stalled:
            self.task.cancel()
        if self.ws is not None:
            if self.stalled:
                self.ws.transport.abort()
            else:
                with contextlib.suppress(Exception):
                    await self.ws.close()
        if self.task is not None:
            with contextlib.suppress(BaseException):
                await self.task


class ProtocolViolation(Exception):
    """The server answered with something the protocol does not allow here."""


class Fleet:
    """All subscriptions of this process and the tallies of the current phase."""

    def __init__(self) -> None:
        self.subs: list[Subscription] = []
        self.phase: Phase | None = None
        self.errors: list[str] = []
        self.server_closed = 0
        self.last_any_rx = 0.0  # any frame, of any phase: the server is still working

    def note_error(self, text: str) -> None:
        if len(self.errors) < ERROR_SAMPLES:
            self.errors.append(text[:300])

    def on_frame(self, sub: Subscription, raw: str | bytes, now: float) -> str:
        """The per-frame hot path: parse, check order, count, time."""
        self.last_any_rx = now
        message = orjson.loads(raw)
        kind = message.get("type")
        if kind != MessageType.NEXT.value:
            if kind in (MessageType.ERROR.value, MessageType.COMPLETE.value):
                self.note_error(f"sub {sub.spec.index}: {message!r}")
            return str(kind)
        event = message["payload"]["data"]["events"]
        self._record(sub, event["id"], event["payload"], now)
        return str(kind)

    def _record(self, sub: Subscription, entry_id: str, payload: Any, now: float) -> None:
        millis, _, seq = entry_id.partition("-")
        key = (int(millis), int(seq))
        phase = self.phase
        sub.primed = True
        if key <= sub.last:
            if phase is not None:
                if key == sub.last or entry_id in sub.seen:
                    phase.duplicates += 1
                else:
                    phase.out_of_order += 1
            return
        sub.last = key
        if isinstance(payload, str):
            payload = orjson.loads(payload)
        if phase is None or payload.get("phase") != phase.name:
            return
        sub.seen.add(entry_id)
        if sub.healthy:
            phase.hist.add(now - int(millis) / 1000)
            phase.first_rx = phase.first_rx or now
            phase.last_rx = now
            self._maybe_complete(sub, phase)

    def _maybe_complete(self, sub: Subscription, phase: Phase) -> None:
        """Count a healthy subscription out of the wait once it has everything (or is gone)."""
        if phase.targets is None or sub.counted:
            return
        if sub.closed or len(sub.seen) >= phase.targets.get(sub.spec.tenant, 0):
            sub.counted = True
            phase.remaining -= 1
            if phase.remaining <= 0:
                phase.done.set()

    def on_closed(self, sub: Subscription) -> None:
        if not sub.closing:
            self.server_closed += 1
            self.note_error(f"sub {sub.spec.index} closed by server, code {sub.close_code}")
        if self.phase is not None and sub.healthy:
            self._maybe_complete(sub, self.phase)


FLEET = Fleet()


async def open_subscriptions(
    url: str, secret: str, specs: list[dict[str, Any]], concurrency: int
) -> dict[str, Any]:
    """Open the given subscriptions (adding to any already open)."""
    started = time.monotonic()
    tokens: dict[str, str] = {}
    gate = asyncio.Semaphore(concurrency)
    new = [Subscription(SubSpec(**s), FLEET) for s in specs]

    async def open_one(sub: Subscription) -> None:
        # One user per subscription, as real clients are: the gateway limits connections per user.
        user = f"bench-user-{sub.spec.index}"
        token = tokens.setdefault(f"{sub.spec.tenant}/{user}", make_token(secret, sub.spec.tenant, user))
        async with gate:
            await sub.open(url, token)

    results = await asyncio.gather(*(open_one(s) for s in new), return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    for exc in failed[:ERROR_SAMPLES]:
        FLEET.note_error(f"connect failed: {type(exc).__name__}: {exc}")
    FLEET.subs.extend(s for s, r in zip(new, results) if not isinstance(r, BaseException))
    gc.collect()
    gc.freeze()  # tens of thousands of long-lived objects: keep GC pauses out of latencies
    return {
        "opened": len(new) - len(failed),
        "failed": len(failed),
        "seconds": time.monotonic() - started,
    }


async def unprimed() -> dict[str, Any]:
    """How many open subscriptions have not yet received any event."""
    live = [s for s in FLEET.subs if not s.closed]
    waiting = [s for s in live if not s.primed]
    sample = [f"sub {s.spec.index} ({s.spec.tenant})" for s in waiting[:ERROR_SAMPLES]]
    quiet_s = time.time() - FLEET.last_any_rx if FLEET.last_any_rx else None
    return {"unprimed": len(waiting), "open": len(live), "sample": sample, "quiet_s": quiet_s}


async def begin_phase(name: str) -> dict[str, Any]:
    """Reset per-phase tallies; events tagged with this phase name count from now on."""
    for sub in FLEET.subs:
        sub.seen = set()
        sub.counted = False
    FLEET.phase = Phase(name, time.time(), self_cpu_seconds())
    return {"subs": len(FLEET.subs)}


async def wait_phase(
    expected: dict[str, int], idle_timeout: float, timeout: float
) -> dict[str, Any]:
    """Wait until every healthy subscription has its tenant's expected count, or progress stops."""
    phase = FLEET.phase
    assert phase is not None
    healthy = [s for s in FLEET.subs if s.healthy]
    phase.targets = expected
    phase.remaining = len(healthy)
    if not healthy:
        phase.done.set()
    for sub in healthy:
        FLEET._maybe_complete(sub, phase)
    await _wait_until_done_or_idle(phase, idle_timeout, timeout)
    return phase_report(phase, healthy, expected)


async def _wait_until_done_or_idle(phase: Phase, idle_timeout: float, timeout: float) -> None:
    started = time.time()
    while not phase.done.is_set():
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(phase.done.wait(), 0.25)
        now = time.time()
        progress = max(phase.last_rx, FLEET.last_any_rx, started)
        if now - progress > idle_timeout or now - started > timeout:
            logger.warning(
                "phase %s: giving up with %s subscriptions incomplete", phase.name, phase.remaining
            )
            return


def phase_report(
    phase: Phase, healthy: list[Subscription], expected: dict[str, int]
) -> dict[str, Any]:
    """The phase's tallies as plain data for the orchestrator."""
    stalled = [s for s in FLEET.subs if not s.healthy]
    want = [expected.get(s.spec.tenant, 0) for s in healthy]
    got = [min(len(s.seen), w) for s, w in zip(healthy, want)]
    return {
        "subs": len(healthy),
        "expected": sum(want),
        "received": sum(got),
        "missing": sum(want) - sum(got),
        "incomplete_subs": sum(1 for g, w in zip(got, want) if g < w),
        "duplicates": phase.duplicates,
        "out_of_order": phase.out_of_order,
        "first_rx": phase.first_rx,
        "last_rx": phase.last_rx or None,
        "hist": phase.hist.to_dict(),
        "cpu_s": self_cpu_seconds() - phase.cpu_start,
        "wall_s": time.time() - phase.started,
        "closed_subs": sum(1 for s in healthy if s.closed),
        "stalled": {
            "subs": len(stalled),
            "received": sum(len(s.seen) for s in stalled),
            "closed": sum(1 for s in stalled if s.closed),
        },
        "errors": list(FLEET.errors),
    }


async def stall() -> dict[str, int]:
    """Stall candidates stop reading from now on."""
    count = 0
    for sub in FLEET.subs:
        if sub.spec.stall:
            sub.stalled = True
            count += 1
    return {"stalled": count}


async def close_all(concurrency: int = 500) -> dict[str, Any]:
    """Close every subscription and forget it."""
    started = time.monotonic()
    gate = asyncio.Semaphore(concurrency)

    async def close_one(sub: Subscription) -> None:
        async with gate:
            await sub.close()

    subs, FLEET.subs = FLEET.subs, []
    await asyncio.gather(*(close_one(s) for s in subs))
    FLEET.phase = None
    gc.unfreeze()
    return {
        "closed": len(subs),
        "seconds": time.monotonic() - started,
        "server_closed": FLEET.server_closed,
    }


async def churn(
    url: str,
    secret: str,
    tenants: list[str],
    cycles: int,
    concurrency: int,
    wait_event: bool,
    event_timeout: float,
) -> dict[str, Any]:
    """Connect-subscribe-disconnect cycles; the way of leaving rotates (complete, close, abort)."""
    started = time.monotonic()
    cpu_start = self_cpu_seconds()
    gate = asyncio.Semaphore(concurrency)
    tokens = {t: make_token(secret, t, "bench-churn") for t in tenants}
    outcome: dict[str, int] = {"ok": 0, "failed": 0, "with_event": 0}

    async def one(i: int) -> None:
        async with gate:
            try:
                got = await churn_cycle(
                    url, tokens[tenants[i % len(tenants)]], i % 3, wait_event, event_timeout
                )
            except (
                TimeoutError,
                OSError,
                InvalidHandshake,
                ConnectionClosed,
                ProtocolViolation,
            ) as exc:
                outcome["failed"] += 1
                FLEET.note_error(f"churn cycle {i}: {type(exc).__name__}: {exc}")
                return
            outcome["ok"] += 1
            outcome["with_event"] += int(got)

    await asyncio.gather(*(one(i) for i in range(cycles)))
    seconds = time.monotonic() - started
    return {
        **outcome,
        "cycles": cycles,
        "seconds": seconds,
        "cpu_s": self_cpu_seconds() - cpu_start,
        "errors": list(FLEET.errors),
    }


async def churn_cycle(
    url: str, token: str, way_out: int, wait_event: bool, event_timeout: float
) -> bool:
    """One cycle; returns whether an event arrived before leaving."""
    ws = await connect(url, **ws_options(stalled=False))
    got_event = False
    try:
        await ws.send(orjson.dumps(init_message(token)).decode())
        reply = orjson.loads(await asyncio.wait_for(ws.recv(), 30))
        if reply.get("type") != MessageType.CONNECTION_ACK.value:
            raise ProtocolViolation(f'Expected "connection_ack", but got {reply!r:.200}')
        await ws.send(SUBSCRIBE_TEXT)
        if wait_event:
            got_event = await _first_next(ws, event_timeout)
        if way_out == 0:
            await ws.send(orjson.dumps({"id": "1", "type": MessageType.COMPLETE.value}).decode())
    finally:
        if way_out == 2:
            ws.transport.abort()
        else:
            await ws.close()
    return got_event


async def _first_next(ws: ClientConnection, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            message = orjson.loads(await asyncio.wait_for(ws.recv(), left))
        except TimeoutError:
            return False
        if message.get("type") == MessageType.NEXT.value:
            return True
    return False


async def hello() -> dict[str, Any]:
    return {"pid": os.getpid()}


HANDLERS: dict[str, rpc.Handler] = {
    "hello": hello,
    "open": open_subscriptions,
    "unprimed": unprimed,
    "begin_phase": begin_phase,
    "wait_phase": wait_phase,
    "stall": stall,
    "close_all": close_all,
    "churn": churn,
}


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s load %(levelname)s %(message)s")
    raise_nofile_limit()
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # the harness works without it, only slower
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(rpc.serve(HANDLERS))


if __name__ == "__main__":
    main()
