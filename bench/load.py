"""A load-generating client process: many graphql-transport-ws subscriptions.

Each subscription is one WebSocket connection (compression off) carrying one
`events` subscription. Every `next` frame is timestamped on receipt; latency
is receipt time minus the millisecond in the entry id. Per subscription the
entry ids are checked for order and duplicates, and the distinct ids of the
current phase are counted against what the publisher says it appended, which
gives losses. A subscription may carry a `where` (the filters scenario) and the
station it filters on: it then expects only its station's events, counted
against the publisher's per-station counts, and any other station's event it
gets is counted as unexpected. The storm scenario's clients (`storm_*` commands) are kept apart:
one durable subscription per user, the ids each got before leaving and after
coming back. The orchestrator drives this process over stdin (bench.rpc);
run as `python -m bench.load`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
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
    EVENTS_QUERY,
    OPERATION_ID,
    STATION_FIELD,
    STORM_QUERY,
    SUBPROTOCOL,
    MessageType,
    complete_message,
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
    """Which tenant a subscription belongs to and whether it will be told to stall; the
    filters scenario's also say which document to send, with which `where`, and the
    station whose events alone the subscription expects."""

    index: int
    tenant: str
    stall: bool = False
    query: str | None = None  # None: EVENTS_QUERY
    where: dict[str, Any] | None = None  # sent as the `where` variable
    station: str | None = None  # expects only events whose payload has this station
    connection: int | None = None  # subscriptions with the same number share one connection
    operation_id: str | None = None  # None: OPERATION_ID


def subscribe_text(spec: SubSpec, operation_id: str = OPERATION_ID) -> str:
    """The spec's `subscribe` message as text, for the operation `operation_id`."""
    if spec.query is None and spec.where is None and operation_id == OPERATION_ID:
        return SUBSCRIBE_TEXT
    variables = None if spec.where is None else {"where": spec.where}
    message = subscribe_message(spec.query or EVENTS_QUERY, variables)
    message["id"] = operation_id
    return orjson.dumps(message).decode()


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
    unexpected: int = 0  # a filtered subscription got another station's event
    targets: dict[str, int] | None = None
    station_targets: dict[str, dict[str, int]] | None = None  # per tenant, per station

    def target(self, spec: SubSpec) -> int:
        """What a subscription expects in this phase: its tenant's count, or for a filtered
        one its tenant's count of its station."""
        if spec.station is not None:
            return (self.station_targets or {}).get(spec.tenant, {}).get(spec.station, 0)
        return (self.targets or {}).get(spec.tenant, 0)
    remaining: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)


class Subscription:
    """One subscription and what arrived on it, on a connection of its own, or one of the
    operations of the connection a first subscription opened (`join`)."""

    def __init__(self, spec: SubSpec, fleet: Fleet) -> None:
        self.spec = spec
        self.fleet = fleet
        self.operation_id = spec.operation_id or OPERATION_ID
        # On the subscription that opened the connection, when others share it: every
        # subscription of the connection by operation id, itself included.
        self.operations: dict[str, Subscription] | None = None
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

    def join(self, other: Subscription) -> None:
        """`other` will be an operation of this subscription's connection."""
        if self.operations is None:
            self.operations = {self.operation_id: self}
        other.operation_id = str(len(self.operations) + 1)
        self.operations[other.operation_id] = other

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
            except CONNECT_ERRORS as exc:
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
        await init_and_subscribe(self.ws, token, subscribe_text(self.spec, self.operation_id))
        for other in self.others():
            await self.ws.send(subscribe_text(other.spec, other.operation_id))

    def others(self) -> list[Subscription]:
        """The other subscriptions of this one's connection."""
        return [sub for sub in (self.operations or {}).values() if sub is not self]

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
            for sub in self.operations.values() if self.operations else (self,):
                sub.close_code = self.ws.close_code
                sub.closed = True
                self.fleet.on_closed(sub)

    async def close(self) -> None:
        """Close politely; a stalled one is aborted since it will not read the close reply."""
        self.closing = True
        for other in self.others():
            other.closing = True
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


CONNECT_ERRORS = (TimeoutError, OSError, InvalidHandshake, ConnectionClosed, ProtocolViolation)


async def init_and_subscribe(ws: ClientConnection, token: str, subscribe_text: str, timeout: float = 60) -> None:
    """`connection_init`, wait for the ack (at most `timeout` s), then `subscribe`."""
    await ws.send(orjson.dumps(init_message(token)).decode())
    reply = orjson.loads(await asyncio.wait_for(ws.recv(), timeout))
    if reply.get("type") != MessageType.CONNECTION_ACK.value:
        raise ProtocolViolation(f'Expected "connection_ack", but got {reply!r:.200}')
    await ws.send(subscribe_text)


class Listener:
    """What every group of clients of this process keeps: error samples, how many sockets
    the server closed, and when any frame last arrived."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.server_closed = 0
        self.last_any_rx = 0.0  # any frame, of any phase: the server is still working

    def note_error(self, text: str) -> None:
        if len(self.errors) < ERROR_SAMPLES:
            self.errors.append(text[:300])

    def read(self, raw: str | bytes, now: float, who: str) -> tuple[str, dict[str, Any] | None]:
        """A frame's type, and the message if it is a `next` (an `error` or `complete` is
        noted as an error of `who`)."""
        self.last_any_rx = now
        message = orjson.loads(raw)
        kind = message.get("type")
        if kind != MessageType.NEXT.value:
            if kind in (MessageType.ERROR.value, MessageType.COMPLETE.value):
                self.note_error(f"{who}: {message!r}")
            return str(kind), None
        return str(kind), message


class Fleet(Listener):
    """All subscriptions of this process and the tallies of the current phase."""

    def __init__(self) -> None:
        super().__init__()
        self.subs: list[Subscription] = []
        self.phase: Phase | None = None

    def on_frame(self, sub: Subscription, raw: str | bytes, now: float) -> str:
        """The per-frame hot path: parse, check order, count, time."""
        kind, message = self.read(raw, now, f"sub {sub.spec.index}")
        if message is None:
            return kind
        if sub.operations is not None:  # one of the connection's operations
            sub = sub.operations.get(str(message.get("id")), sub)
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
        station = sub.spec.station
        if station is not None and payload.get(STATION_FIELD) != station:
            phase.unexpected += 1
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
        if sub.closed or len(sub.seen) >= phase.target(sub.spec):
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
    openers: list[Subscription] = []  # one per connection
    by_connection: dict[int, Subscription] = {}
    for sub in new:
        first = sub if sub.spec.connection is None else by_connection.setdefault(sub.spec.connection, sub)
        if first is sub:
            openers.append(sub)
        else:
            first.join(sub)

    async def open_one(sub: Subscription) -> None:
        # One user per connection, as real clients are: the gateway limits connections per user.
        user = f"bench-user-{sub.spec.index}"
        token = tokens.setdefault(f"{sub.spec.tenant}/{user}", make_token(secret, sub.spec.tenant, user))
        async with gate:
            await sub.open(url, token)

    results = await asyncio.gather(*(open_one(s) for s in openers), return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    for exc in failed[:ERROR_SAMPLES]:
        FLEET.note_error(f"connect failed: {type(exc).__name__}: {exc}")
    opened = [s for s, r in zip(openers, results) if not isinstance(r, BaseException)]
    FLEET.subs.extend(itertools.chain.from_iterable([s, *s.others()] for s in opened))
    gc.collect()
    gc.freeze()  # tens of thousands of long-lived objects: keep GC pauses out of latencies
    lost = sum(len(s.operations or (s,)) for s, r in zip(openers, results) if isinstance(r, BaseException))
    return {
        "opened": len(new) - lost,
        "connections": len(opened),
        "failed": lost,
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
    expected: dict[str, int],
    idle_timeout: float,
    timeout: float,
    by_station: dict[str, dict[str, int]] | None = None,
) -> dict[str, Any]:
    """Wait until every healthy subscription has its expected count (its tenant's, or for a
    filtered one its tenant's of its station: `by_station`), or progress stops."""
    phase = FLEET.phase
    assert phase is not None
    healthy = [s for s in FLEET.subs if s.healthy]
    phase.targets = expected
    phase.station_targets = by_station
    phase.remaining = len(healthy)
    if not healthy:
        phase.done.set()
    for sub in healthy:
        FLEET._maybe_complete(sub, phase)
    await _wait_until_done_or_idle(phase, idle_timeout, timeout)
    return phase_report(phase, healthy)


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


def phase_report(phase: Phase, healthy: list[Subscription]) -> dict[str, Any]:
    """The phase's tallies as plain data for the orchestrator."""
    stalled = [s for s in FLEET.subs if not s.healthy]
    want = [phase.target(s.spec) for s in healthy]
    got = [min(len(s.seen), w) for s, w in zip(healthy, want)]
    return {
        "subs": len(healthy),
        "expected": sum(want),
        "received": sum(got),
        "missing": sum(want) - sum(got),
        "incomplete_subs": sum(1 for g, w in zip(got, want) if g < w),
        "duplicates": phase.duplicates,
        "out_of_order": phase.out_of_order,
        "unexpected": phase.unexpected,
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
        await init_and_subscribe(ws, token, SUBSCRIBE_TEXT, timeout=30)
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


# -- the storm: durable subscribers that leave in batches and all come back at once --------

STORM_SUBSCRIBE_TEXT = orjson.dumps(subscribe_message(STORM_QUERY)).decode()
COMPLETE_TEXT = orjson.dumps(complete_message()).decode()
STORM_POLL_S = 0.05
NO_KEY = (-1, -1)


def id_key(entry_id: str) -> tuple[int, int]:
    """A stream entry id as a sortable (millis, seq)."""
    millis, _, seq = entry_id.partition("-")
    return int(millis), int(seq or 0)


class StormClient:
    """One storm user: its own connection and durable subscription, and the ids it got on
    its first connection (`before`) and on the one it reconnected with (`after`)."""

    def __init__(self, index: int, batch: int, token: str, storm: Storm) -> None:
        self.index = index
        self.batch = batch
        self.token = token
        self.storm = storm
        self.ws: ClientConnection | None = None
        self.task: asyncio.Task[None] | None = None
        self.resumed = False  # frames count as `after` once it reconnects
        self.before: list[str] = []
        self.after: list[str] = []
        self.last_key = NO_KEY  # the newest id received on the first connection
        self.first_rx: float | None = None
        self.live = False  # its socket is open
        self.closing = False  # we are closing it (not the server)
        self.left = False
        self.close_code: int | None = None
        self.expected: set[str] = set()  # on resume: the stream's ids after last_key
        self.missing: set[str] = set()  # ... not received yet
        self.done_at: float | None = None

    async def connect(self, url: str) -> None:
        """Connect, init, wait for the ack, subscribe; retried a few times."""
        error: Exception | None = None
        for attempt in range(CONNECT_ATTEMPTS):
            ws = None
            try:
                ws = await connect(url, **ws_options(stalled=False))
                await init_and_subscribe(ws, self.token, STORM_SUBSCRIBE_TEXT)
            except CONNECT_ERRORS as exc:
                error = exc
                if ws is not None:
                    with contextlib.suppress(Exception):
                        await ws.close()
                await asyncio.sleep(0.2 * (attempt + 1))
                continue
            self.ws, self.live, self.closing = ws, True, False
            self.task = asyncio.create_task(self.receive(ws))
            return
        assert error is not None
        raise error

    async def receive(self, ws: ClientConnection) -> None:
        try:
            async for raw in ws:
                if self.storm.on_frame(self, raw, time.time()) == MessageType.PING.value:
                    await ws.send(PONG_TEXT)
        except ConnectionClosed:
            pass
        finally:
            self.close_code = ws.close_code
            self.live = False
            self.storm.on_closed(self)

    async def leave(self) -> None:
        """Leave cleanly: `complete` the operation, then close the socket normally (1000).
        Frames that arrive before the close completes still count as received."""
        self.left = True
        await self.close(complete=True)

    async def close(self, complete: bool = False) -> None:
        self.closing = True
        if self.ws is not None:
            with contextlib.suppress(Exception):
                if complete:
                    await self.ws.send(COMPLETE_TEXT)
                await self.ws.close(1000)
        if self.task is not None:
            with contextlib.suppress(BaseException):
                await self.task


class Storm(Listener):
    """This process's storm clients and the bookkeeping of their ids."""

    def __init__(self) -> None:
        super().__init__()
        self.clients: list[StormClient] = []
        self.stream_ids: list[str] = []

    def on_frame(self, client: StormClient, raw: str | bytes, now: float) -> str:
        kind, message = self.read(raw, now, f"storm client {client.index}")
        if message is None:
            return kind
        data = (message.get("payload") or {}).get("data") or {}
        event = data.get("events")
        if not isinstance(event, dict) or "id" not in event:
            self.note_error(f"storm client {client.index}: {message!r}")
            return str(kind)
        entry_id = str(event["id"])
        if client.resumed:
            client.after.append(entry_id)
            if entry_id in client.missing:
                client.missing.discard(entry_id)
                if not client.missing:
                    client.done_at = now
        else:
            client.before.append(entry_id)
            client.last_key = max(client.last_key, id_key(entry_id))
            if client.first_rx is None:
                client.first_rx = now
        return str(kind)

    def on_closed(self, client: StormClient) -> None:
        if not client.closing:
            self.server_closed += 1
            self.note_error(
                f"storm client {client.index} closed by server, code {client.close_code}"
            )


STORM = Storm()


async def storm_open(
    url: str, secret: str, tenant: str, clients: list[dict[str, int]], concurrency: int
) -> dict[str, Any]:
    """Open the storm's clients, each user `storm-user-<index>` with its own connection,
    all at once (at most `concurrency` handshakes in flight)."""
    started = time.monotonic()
    gate = asyncio.Semaphore(concurrency)
    new = [
        StormClient(
            c["index"], c["batch"], make_token(secret, tenant, f"storm-user-{c['index']}"), STORM
        )
        for c in clients
    ]
    STORM.clients.extend(new)

    async def open_one(client: StormClient) -> None:
        async with gate:
            await client.connect(url)

    results = await asyncio.gather(*(open_one(c) for c in new), return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    for exc in failed[:ERROR_SAMPLES]:
        STORM.note_error(f"storm connect failed: {type(exc).__name__}: {exc}")
    return {
        "opened": len(new) - len(failed),
        "failed": len(failed),
        "seconds": time.monotonic() - started,
    }


async def storm_status() -> dict[str, Any]:
    """rig.prime's view (open clients without a first event), and when the last of them
    got its first event."""
    live = [c for c in STORM.clients if c.live]
    waiting = [c for c in live if c.first_rx is None]
    firsts = [c.first_rx for c in STORM.clients if c.first_rx is not None]
    quiet_s = time.time() - STORM.last_any_rx if STORM.last_any_rx else None
    return {
        "unprimed": len(waiting),
        "open": len(live),
        "sample": [f"storm client {c.index}" for c in waiting[:ERROR_SAMPLES]],
        "quiet_s": quiet_s,
        "last_first_rx": max(firsts, default=None),
    }


async def storm_leave(batch: int, concurrency: int) -> dict[str, Any]:
    """The clients of this leave batch leave cleanly, all at once."""
    started = time.monotonic()
    gate = asyncio.Semaphore(concurrency)
    leaving = [c for c in STORM.clients if c.batch == batch and not c.left]

    async def leave_one(client: StormClient) -> None:
        async with gate:
            await client.leave()

    await asyncio.gather(*(leave_one(c) for c in leaving))
    return {
        "left": len(leaving),
        "seconds": time.monotonic() - started,
        "received": [len(c.before) for c in leaving],
    }


async def storm_wait(last_id: str, idle_timeout: float, timeout: float) -> dict[str, Any]:
    """Wait until every client still connected has received `last_id` (so the amounts each
    batch had before leaving are well defined), or progress stops."""
    target = id_key(last_id)
    started = time.time()
    while True:
        waiting = [c for c in STORM.clients if c.live and not c.left and c.last_key < target]
        now = time.time()
        if not waiting:
            break
        if now - max(STORM.last_any_rx, started) > idle_timeout or now - started > timeout:
            logger.warning("storm: %s clients never got %s", len(waiting), last_id)
            break
        await asyncio.sleep(STORM_POLL_S)
    return {"waiting": len(waiting), "seconds": time.time() - started}


async def storm_resume(
    url: str,
    stream_ids: list[str],
    concurrency: int,
    idle_timeout: float,
    timeout: float,
) -> dict[str, Any]:
    """Every client reconnects at once (same user, same durable name, no `after`); returns
    when each has every stream entry after the last one it had received, or progress stops.
    `done_at` is when the last of them got there (wall clock)."""
    started = time.time()
    cpu_start = self_cpu_seconds()
    STORM.stream_ids = stream_ids
    keyed = [(id_key(i), i) for i in stream_ids]
    for client in STORM.clients:
        client.resumed = True
        client.after = []
        # A client that never got an event has no position to check a resume against.
        client.expected = {i for k, i in keyed if k > client.last_key} if client.before else set()
        client.missing = set(client.expected)
        client.done_at = None if client.missing else started
    gate = asyncio.Semaphore(concurrency)
    progress = started

    async def reopen(client: StormClient) -> None:
        nonlocal progress
        async with gate:
            await client.connect(url)
        progress = max(progress, time.time())

    connecting = asyncio.gather(*(reopen(c) for c in STORM.clients), return_exceptions=True)
    while True:
        if connecting.done():
            pending = [c for c in STORM.clients if c.missing and c.live]
            if not pending:
                break
        now = time.time()
        if now - max(progress, STORM.last_any_rx) > idle_timeout or now - started > timeout:
            logger.warning(
                "storm: giving up with %s clients not caught up",
                sum(1 for c in STORM.clients if c.missing),
            )
            break
        await asyncio.sleep(STORM_POLL_S)
    results = await connecting
    connect_s = progress - started
    failed = [r for r in results if isinstance(r, BaseException)]
    for exc in failed[:ERROR_SAMPLES]:
        STORM.note_error(f"storm reconnect failed: {type(exc).__name__}: {exc}")
    caught_up = [c for c in STORM.clients if not c.missing]
    done = [c.done_at for c in caught_up if c.done_at is not None]
    return {
        "clients": len(STORM.clients),
        "opened": len(STORM.clients) - len(failed),
        "failed": len(failed),
        "connect_s": connect_s,
        "caught_up": len(caught_up),
        "done_at": max(done, default=None),
        "started": started,
        "cpu_s": self_cpu_seconds() - cpu_start,
        "wall_s": time.time() - started,
    }


async def storm_report() -> dict[str, Any]:
    """Per client: what the resume sent again, missed, doubled or reordered; summed, by
    leave batch, with a few samples."""
    totals: dict[str, int] = dict.fromkeys(
        (
            "clients",
            "never_primed",
            "expected",
            "received",
            "already_seen",
            "clients_already_seen",
            "lost",
            "clients_lost",
            "duplicates",
            "out_of_order",
            "unexpected",
            "gaps_before",
        ),
        0,
    )
    by_batch: dict[int, dict[str, int]] = {}
    samples: list[str] = []
    position = {entry_id: n for n, entry_id in enumerate(STORM.stream_ids)}
    for client in STORM.clients:
        totals["clients"] += 1
        if not client.before:
            totals["never_primed"] += 1
            continue
        before = set(client.before)
        got = set(client.after)
        again = got & before
        lost = client.expected - got
        keys = [id_key(i) for i in client.after]
        known = [position[i] for i in before if i in position]
        gaps = (
            sum(1 for i in STORM.stream_ids[min(known) : max(known) + 1] if i not in before)
            if known
            else 0
        )
        row = {
            "expected": len(client.expected),
            "received": len(got & client.expected),
            "already_seen": len(again),
            "clients_already_seen": int(bool(again)),
            "lost": len(lost),
            "clients_lost": int(bool(lost)),
            "duplicates": len(client.after) - len(got),
            "out_of_order": sum(1 for a, b in itertools.pairwise(keys) if b < a),
            "unexpected": len(got - before - client.expected),
            "gaps_before": gaps,
        }
        for name, value in row.items():
            totals[name] += value
        batch = by_batch.setdefault(client.batch, dict.fromkeys(("clients", "received_before"), 0))
        batch["clients"] += 1
        batch["received_before"] += len(before)
        for name in ("already_seen", "lost", "duplicates"):
            batch[name] = batch.get(name, 0) + row[name]
        if (again or lost) and len(samples) < ERROR_SAMPLES:
            samples.append(
                f"storm-user-{client.index} (batch {client.batch}): had {len(before)} up to"
                f" {client.before[-1]}; on resume got {len(client.after)}"
                f" (first {client.after[0] if client.after else '-'}),"
                f" again {sorted(again, key=id_key)[:3]}, lost {sorted(lost, key=id_key)[:3]}"
            )
    return {
        **totals,
        "by_batch": by_batch,
        "samples": samples,
        "server_closed": STORM.server_closed,
        "errors": list(STORM.errors),
    }


async def storm_close() -> dict[str, Any]:
    """Close every storm client and forget them."""
    clients, STORM.clients = STORM.clients, []
    gate = asyncio.Semaphore(500)

    async def close_one(client: StormClient) -> None:
        async with gate:
            await client.close()

    await asyncio.gather(*(close_one(c) for c in clients))
    STORM.stream_ids, STORM.errors, STORM.server_closed = [], [], 0
    return {"closed": len(clients)}


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
    "storm_open": storm_open,
    "storm_status": storm_status,
    "storm_leave": storm_leave,
    "storm_wait": storm_wait,
    "storm_resume": storm_resume,
    "storm_report": storm_report,
    "storm_close": storm_close,
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
