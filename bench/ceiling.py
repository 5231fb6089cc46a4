"""The transport-only ceiling: the cheapest way to put the same frames on the same sockets.

A minimal graphql-transport-ws speaker on the same uvicorn stack and WebSocket
protocol as the gateway. WebSockets on /graphql go to a bare ASGI handler, as
the gateway's `GraphQLWebSockets` sends them to its view: no Starlette routing
or `WebSocket` object. It acknowledges connection_init (same JWT check) and
subscribe, reads every subscribed tenant's stream with one XREAD loop per
process (no consumer groups, no acknowledgements, no GraphQL), encodes each
entry's `next` frame once, and one writer task per process hands each read's
frames to every subscriber's raw ASGI `send` in turn (one socket's in a row,
as the gateway writes them), the callable the gateway's fast path writes
through (`gateway.sockets.GraphQLSocket.send_payloads`), while the next XREAD is in flight.
There is no task and no queue per subscriber: a write completes at once unless the socket's transport is paused
(its buffer is full: the client reads slower than it is sent to), and only
then does that subscriber get a task that finishes the write and the frames
queued behind it, in order (see `Subscriber`). Whatever the gateway does
beyond this costs throughput; the ratio gateway/ceiling says how much. On a
Redis Cluster it has one XREAD loop per subscribed hash slot instead (see Hub).

Run as `python -m bench.ceiling [--workers N]` with the RAGLINE_* variables.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Generator
from datetime import UTC, datetime
from typing import Any, cast

import jwt
import orjson
import redis.asyncio as aioredis
import uvicorn
from redis.asyncio.cluster import ClusterNode, RedisCluster
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from bench.protocol import (
    CLOSE_FORBIDDEN,
    GRAPHQL_PATH,
    SUBPROTOCOL,
    MessageType,
    entry_millis,
    stream_key,
    token_from_init,
    verify_token,
)
from bench.refsettings import RefSettings, parse_workers, uvicorn_options
from ragline.streaming.connections import AnyRedis, node_url, open_client, ping_all

logger = logging.getLogger(__name__)

SETTINGS = RefSettings.from_env()
READ_COUNT = 1000
# Short blocks so a tenant subscribed for the first time joins the read soon.
BLOCK_MS = 100
# No socket timeout: redis-py 8's default (5 s) routes sends through
# asyncio.wait_for, which on Python 3.11 can swallow the reader's cancellation
# at shutdown (gh-86296); BLOCK bounds each read instead.
SOCKET_TIMEOUT_S = None
# What XREAD returns without decode_responses: [(key, [(id, {field: value})])].
Entries = list[tuple[bytes, dict[bytes, bytes]]]
StreamsReply = list[tuple[bytes, Entries]]
Batch = list[tuple[str, Entries]]  # one XREAD's entries by stream, for the writer
# Reads that may wait for the writer: enough to keep the next XREAD in flight while it
# writes, and a bound on what a reader can get ahead of the sockets.
OUTBOX_READS = 4
# What a write to a socket that is gone raises: uvicorn's ClientDisconnected is an
# OSError, and a send after the close a RuntimeError (the gateway's SOCKET_GONE, less
# Starlette's and Strawberry's exceptions, which this server never sees).
SOCKET_GONE = (OSError, RuntimeError)


def _text(text: str) -> Message:
    return {"type": "websocket.send", "text": text}


ACK_MESSAGE = _text(orjson.dumps({"type": MessageType.CONNECTION_ACK.value}).decode())
PONG_MESSAGE = _text(orjson.dumps({"type": MessageType.PONG.value}).decode())


def encode_event(entry_id: str, fields: dict[bytes, bytes]) -> bytes:
    """The `events` object as JSON, with the producer's payload text spliced in unparsed."""
    occurred = datetime.fromtimestamp(entry_millis(entry_id) / 1000, tz=UTC)
    head = orjson.dumps(
        {
            "id": entry_id,
            "type": fields[b"event_type"].decode(),
            "tenantId": fields[b"tenant_id"].decode(),
            "occurredAt": occurred.isoformat(),
        }
    )
    return head[:-1] + b',"payload":' + fields[b"payload"] + b"}"


def next_frame(operation_id: str, event_json: bytes) -> str:
    """The full `next` message around an encoded event."""
    prefix = orjson.dumps(operation_id)
    return (
        b'{"id":' + prefix + b',"type":"next","payload":{"data":{"events":' + event_json + b"}}}"
    ).decode()


class Subscriber:
    """One operation on one socket, which the hub's writer writes to through its ASGI `send`.

    `write` runs the send right there, by hand: with uvicorn it finishes without
    suspending unless the transport is paused, which is the gateway's fast path
    (its per-subscriber task awaits the same call and goes on). A send that does
    suspend is handed to a task that finishes it, then writes the frames that
    arrived meanwhile (`backlog`), in order, and returns the subscriber to
    direct writes. Nothing is dropped for a slow client: unlike the gateway
    (slow_consumer_timeout), the ceiling has no slow-consumer policy, so a
    client that stops reading holds its frames in memory, as it did with the
    former per-subscriber queue.
    """

    __slots__ = ("backlog", "drainer", "operation_id", "pending", "send")

    def __init__(self, operation_id: str, send: Send) -> None:
        self.operation_id = operation_id
        self.send = send
        # None while writes complete at once (the usual case); frames waiting behind a
        # write that could not otherwise; a deque that keeps nothing once the socket is gone.
        self.backlog: deque[Message] | None = None
        self.pending: Generator[Any, None, None] | None = None  # the write that suspended
        self.drainer: asyncio.Task[None] | None = None  # the task that finishes it

    def write(self, messages: list[Message]) -> None:
        """Write frames, in order, while the socket takes them at once; queue the rest
        behind the first write that cannot complete now."""
        if self.backlog is not None:
            self.backlog.extend(messages)
            return
        send = self.send
        rest = iter(messages)
        for message in rest:
            step = send(message).__await__()
            try:
                waiting = step.send(None)
            except StopIteration:
                continue  # written
            except SOCKET_GONE:
                self.backlog = deque(maxlen=0)  # later frames go nowhere, as with the gateway
                return
            self.backlog = deque(rest)
            self.pending = step
            self.drainer = asyncio.get_running_loop().create_task(self._drain(step, waiting))
            return

    async def _drain(self, step: Generator[Any, None, None], waiting: object) -> None:
        """Finish the suspended write, then the frames queued behind it."""
        backlog = self.backlog
        assert backlog is not None
        try:
            await _resume(step, waiting)
            self.pending = None
            while backlog:
                await self.send(backlog.popleft())
        except SOCKET_GONE:
            self.backlog = deque(maxlen=0)
            return
        finally:
            self.pending = self.drainer = None
        self.backlog = None  # no await since the backlog was seen empty: nothing slipped in

    def stop(self) -> None:
        """The operation ended: no more frames; a pending write is abandoned."""
        self.backlog = deque(maxlen=0)
        if self.pending is not None:
            self.pending.close()  # out of its wait (the task may not have started yet)
        if self.drainer is not None:
            self.drainer.cancel()


async def _resume(step: Generator[Any, None, None], waiting: object) -> None:
    """Run to its end a send that was started by hand and suspended; `waiting` is what it
    yielded: the future it waits on (asyncio's protocol), or None for a bare yield."""
    while True:
        if waiting is None:
            await asyncio.sleep(0)
        elif isinstance(waiting, asyncio.Future):
            await asyncio.wait([waiting])  # done; its result or exception reaches the send itself
        else:
            raise RuntimeError(f"a send yielded {waiting!r}, not a future")
        try:
            waiting = step.send(None)
        except StopIteration:
            return


class Reader:
    """One blocking XREAD loop over the streams that one command may name together.

    It hands each read to the hub's writer and reads on, so Redis works on the next
    XREAD while the sockets are written to (the gateway's reader, too, goes on while
    its subscribers' tasks write)."""

    def __init__(self, redis: aioredis.Redis, outbox: asyncio.Queue[Batch]) -> None:
        self.redis = redis
        self.outbox = outbox
        self.positions: dict[str, str] = {}  # a stream is here while it has subscribers
        self.wakeup = asyncio.Event()

    async def run(self) -> None:
        """Read until cancelled."""
        while True:
            if not self.positions:
                self.wakeup.clear()
                await self.wakeup.wait()
                continue
            streams: dict[str | bytes, str | bytes] = {k: v for k, v in self.positions.items()}
            reply = await self.redis.xread(streams, count=READ_COUNT, block=BLOCK_MS)  # type: ignore[arg-type]
            batch: Batch = []
            for raw_key, entries in cast(StreamsReply, reply or []):
                key = raw_key.decode()
                if key in self.positions:  # not left by its last subscriber during the read
                    self.positions[key] = entries[-1][0].decode()
                    batch.append((key, entries))
            if batch:
                await self.outbox.put(batch)


class Hub:
    """Every subscriber of the process and the readers that feed them.

    On one server a single reader names every subscribed stream in one XREAD.
    A cluster refuses an XREAD whose keys hash to different slots, even on one
    node, and every tenant has a slot of its own: there each subscribed slot
    gets its reader, blocking on a plain connection to the node that serves it
    (through redis-py's cluster client every XREAD would first cost a COMMAND
    GETKEYS, as XREAD's keys have no fixed position).
    """

    def __init__(self, redis: AnyRedis, url: str) -> None:
        self.redis = redis  # XREVRANGE (routed by key on a cluster) and the readiness probe
        self.url = url
        self.subscribers: dict[str, set[Subscriber]] = {}
        self.readers: dict[int, Reader] = {}  # by slot on a cluster; one server: just 0
        self.node_clients: dict[str, aioredis.Redis] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.joining = asyncio.Lock()
        self.outbox: asyncio.Queue[Batch] = asyncio.Queue(OUTBOX_READS)

    def reader_for(self, key: str) -> Reader:
        """The reader whose XREAD names `key`, started on first use."""
        if isinstance(self.redis, RedisCluster):
            slot = self.redis.keyslot(key)
            node = self.redis.get_node_from_key(key)
            assert node is not None, f"no node serves {key}"  # the slot map covers every slot
            client = self._node_client(node)
        else:
            slot, client = 0, self.redis
        reader = self.readers.get(slot)
        if reader is None:
            if not self.readers:
                self.tasks.add(asyncio.create_task(self._write()))
            reader = self.readers[slot] = Reader(client, self.outbox)
            self.tasks.add(asyncio.create_task(reader.run()))
        return reader

    def _node_client(self, node: ClusterNode) -> aioredis.Redis:
        if node.name not in self.node_clients:
            self.node_clients[node.name] = aioredis.Redis.from_url(
                node_url(self.url, node.host, int(node.port)), socket_timeout=SOCKET_TIMEOUT_S
            )
        return self.node_clients[node.name]

    async def add(self, tenant: str, subscriber: Subscriber) -> None:
        """Register a subscriber; a new tenant starts reading after the stream's last entry."""
        key = stream_key(tenant)
        reader = self.reader_for(key)
        async with self.joining:  # one lookup at a time: concurrent joins need no extra connections
            if key not in reader.positions:
                last = cast(Entries, await self.redis.xrevrange(key, count=1))
                reader.positions[key] = last[0][0].decode() if last else "0-0"
        self.subscribers.setdefault(key, set()).add(subscriber)
        reader.wakeup.set()

    def remove(self, tenant: str, subscriber: Subscriber) -> None:
        key = stream_key(tenant)
        group = self.subscribers.get(key, set())
        group.discard(subscriber)
        if not group:
            self.subscribers.pop(key, None)
            self.reader_for(key).positions.pop(key, None)

    async def close(self) -> None:
        """Cancel and await every reader and the writer, then drop the node connections."""
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await asyncio.gather(*(client.aclose() for client in self.node_clients.values()))

    async def _write(self) -> None:
        """The one writer of the process: every read, in order, to the sockets."""
        while True:
            for key, entries in await self.outbox.get():
                self._fan_out(key, entries)

    def _fan_out(self, key: str, entries: Entries) -> None:
        """Write what one XREAD returned for a stream to each of its subscribers, all of it
        to one socket before the next (as the gateway's hub hands a read's records to each
        subscription, whose task then writes them in a row). One frame, and one ASGI
        message, per entry and operation id, shared by the sockets."""
        subscribers = self.subscribers.get(key)
        if not subscribers:
            return
        events = [encode_event(raw_id.decode(), fields) for raw_id, fields in entries]
        by_operation: dict[str, list[Message]] = {}
        for sub in subscribers:
            frames = by_operation.get(sub.operation_id)
            if frames is None:
                frames = by_operation[sub.operation_id] = [
                    _text(next_frame(sub.operation_id, event)) for event in events
                ]
            sub.write(frames)


HUB: Hub | None = None


async def graphql_ws(receive: Receive, send: Send) -> None:
    """Speak just enough graphql-transport-ws: init → ack, subscribe → frames, complete/close → stop."""
    if (await receive())["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept", "subprotocol": SUBPROTOCOL})
    tenant = await authenticate(receive, send)
    if tenant is None:
        return
    assert HUB is not None
    operations: dict[str, Subscriber] = {}
    try:
        while (message := await receive_json(receive)) is not None:
            await handle_message(send, tenant, message, operations)
    except SOCKET_GONE:
        logger.debug("socket gone for tenant %s", tenant)
    finally:
        for subscriber in operations.values():
            HUB.remove(tenant, subscriber)
            subscriber.stop()


async def receive_json(receive: Receive) -> dict[str, Any] | None:
    """The next message's JSON; None once the client has gone."""
    event = await receive()
    if event["type"] != "websocket.receive":
        return None  # websocket.disconnect
    text = event.get("text")
    return cast(dict[str, Any], orjson.loads(text if text is not None else event["bytes"]))


async def authenticate(receive: Receive, send: Send) -> str | None:
    """Expect connection_init with a valid token; close 4403 otherwise."""
    message = await receive_json(receive)
    if message is None:
        return None
    token = (
        token_from_init(message.get("payload"))
        if message.get("type") == "connection_init"
        else None
    )
    try:
        tenant = str(verify_token(SETTINGS.jwt_secret, token or "")["tenant_id"])
    except jwt.PyJWTError:
        await send({"type": "websocket.close", "code": CLOSE_FORBIDDEN, "reason": "Forbidden"})
        return None
    await send(ACK_MESSAGE)
    return tenant


async def handle_message(
    send: Send, tenant: str, message: dict[str, Any], operations: dict[str, Subscriber]
) -> None:
    assert HUB is not None
    kind = message.get("type")
    op_id = str(message.get("id"))
    if kind == MessageType.SUBSCRIBE.value and op_id not in operations:
        operations[op_id] = subscriber = Subscriber(op_id, send)
        await HUB.add(tenant, subscriber)
    elif kind == MessageType.COMPLETE.value and op_id in operations:
        subscriber = operations.pop(op_id)
        HUB.remove(tenant, subscriber)
        subscriber.stop()
    elif kind == MessageType.PING.value:
        await send(PONG_MESSAGE)


async def readyz(_: Request) -> Response:
    assert HUB is not None
    try:
        await ping_all(HUB.redis)
    except Exception:  # noqa: BLE001 - any failure means not ready
        return Response(status_code=503)
    return PlainTextResponse("ok")


@contextlib.asynccontextmanager
async def lifespan(_: Starlette) -> AsyncIterator[None]:
    """Own the hub: its readers start with the first subscribers, and stop with the app."""
    global HUB
    redis = open_client(SETTINGS.redis_url, socket_timeout=SOCKET_TIMEOUT_S)
    HUB = Hub(redis, SETTINGS.redis_url)
    try:
        yield
    finally:
        await HUB.close()
        await redis.aclose()


http_app = Starlette(
    routes=[
        Route("/readyz", readyz),
        Route("/healthz", lambda _: PlainTextResponse("ok")),
    ],
    lifespan=lifespan,
)


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """WebSockets on /graphql straight to `graphql_ws`, with uvicorn's own `send`; the
    rest (readiness, health, lifespan) to Starlette."""
    if scope["type"] == "websocket" and scope["path"] == GRAPHQL_PATH:
        await graphql_ws(receive, send)
    else:
        await http_app(scope, receive, send)


def main() -> None:
    uvicorn.run("bench.ceiling:app", **uvicorn_options(SETTINGS, parse_workers()))  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
