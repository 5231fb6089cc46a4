"""The transport-only ceiling: the cheapest way to put the same frames on the same sockets.

A minimal graphql-transport-ws speaker on the same uvicorn stack as the
others. It acknowledges connection_init (same JWT check) and subscribe, reads
every subscribed tenant's stream with one XREAD loop per process (no consumer
groups, no acknowledgements, no GraphQL), encodes each entry's `next` frame
once, and hands that text to every subscriber of the tenant. Whatever the
gateway does beyond this costs throughput; the ratio gateway/ceiling says how
much. On a Redis Cluster it has one XREAD loop per subscribed hash slot
instead (see Hub).

Run as `python -m bench.ceiling [--workers N]` with the RAGLINE_* variables.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import cast

import jwt
import orjson
import redis.asyncio as aioredis
import uvicorn
from redis.asyncio.cluster import ClusterNode, RedisCluster
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

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
from streaming.connections import AnyRedis, node_url, open_client, ping_all

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

ACK_FRAME = orjson.dumps({"type": MessageType.CONNECTION_ACK.value}).decode()
PONG_FRAME = orjson.dumps({"type": MessageType.PONG.value}).decode()


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


@dataclass(eq=False)
class Subscriber:
    """One operation on one socket, fed frames through its own queue."""

    operation_id: str
    queue: asyncio.Queue[str] = field(default_factory=asyncio.Queue)


class Reader:
    """One blocking XREAD loop over the streams that one command may name together."""

    def __init__(self, redis: aioredis.Redis, deliver: Callable[[str, Entries], bool]) -> None:
        self.redis = redis
        self.deliver = deliver  # False when the stream has no subscriber left
        self.positions: dict[str, str] = {}
        self.wakeup = asyncio.Event()

    async def run(self) -> None:
        """Read and fan out until cancelled."""
        while True:
            if not self.positions:
                self.wakeup.clear()
                await self.wakeup.wait()
                continue
            streams: dict[str | bytes, str | bytes] = {k: v for k, v in self.positions.items()}
            reply = await self.redis.xread(streams, count=READ_COUNT, block=BLOCK_MS)  # type: ignore[arg-type]
            for raw_key, entries in cast(StreamsReply, reply or []):
                key = raw_key.decode()
                if self.deliver(key, entries):
                    self.positions[key] = entries[-1][0].decode()


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
            reader = self.readers[slot] = Reader(client, self._fan_out)
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
        """Cancel and await every reader, then drop the node connections."""
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await asyncio.gather(*(client.aclose() for client in self.node_clients.values()))

    def _fan_out(self, key: str, entries: Entries) -> bool:
        subscribers = self.subscribers.get(key)
        if not subscribers:
            return False
        for raw_id, fields in entries:
            event_json = encode_event(raw_id.decode(), fields)
            frames: dict[str, str] = {}
            for sub in subscribers:
                frame = frames.get(sub.operation_id)
                if frame is None:
                    frame = frames[sub.operation_id] = next_frame(sub.operation_id, event_json)
                sub.queue.put_nowait(frame)
        return True


HUB: Hub | None = None


async def pump(websocket: WebSocket, subscriber: Subscriber) -> None:
    """Write a subscriber's frames to its socket in order, until it fails or is cancelled."""
    try:
        while True:
            await websocket.send_text(await subscriber.queue.get())
    except (WebSocketDisconnect, OSError, RuntimeError):
        logger.debug("socket gone for operation %s", subscriber.operation_id)


async def graphql_ws(websocket: WebSocket) -> None:
    """Speak just enough graphql-transport-ws: init → ack, subscribe → frames, complete/close → stop."""
    await websocket.accept(subprotocol=SUBPROTOCOL)
    tenant = await authenticate(websocket)
    if tenant is None:
        return
    assert HUB is not None
    operations: dict[str, tuple[Subscriber, asyncio.Task[None]]] = {}
    try:
        while True:
            message = orjson.loads(await websocket.receive_text())
            await handle_message(websocket, tenant, message, operations)
    except WebSocketDisconnect:
        pass
    finally:
        for subscriber, task in operations.values():
            HUB.remove(tenant, subscriber)
            task.cancel()


async def authenticate(websocket: WebSocket) -> str | None:
    """Expect connection_init with a valid token; close 4403 otherwise."""
    message = orjson.loads(await websocket.receive_text())
    token = (
        token_from_init(message.get("payload"))
        if message.get("type") == "connection_init"
        else None
    )
    try:
        tenant = str(verify_token(SETTINGS.jwt_secret, token or "")["tenant_id"])
    except jwt.PyJWTError:
        await websocket.close(code=CLOSE_FORBIDDEN, reason="Forbidden")
        return None
    await websocket.send_text(ACK_FRAME)
    return tenant


async def handle_message(
    websocket: WebSocket,
    tenant: str,
    message: dict[str, object],
    operations: dict[str, tuple[Subscriber, asyncio.Task[None]]],
) -> None:
    assert HUB is not None
    kind = message.get("type")
    op_id = str(message.get("id"))
    if kind == MessageType.SUBSCRIBE.value and op_id not in operations:
        subscriber = Subscriber(op_id)
        await HUB.add(tenant, subscriber)
        operations[op_id] = (subscriber, asyncio.create_task(pump(websocket, subscriber)))
    elif kind == MessageType.COMPLETE.value and op_id in operations:
        subscriber, task = operations.pop(op_id)
        HUB.remove(tenant, subscriber)
        task.cancel()
    elif kind == MessageType.PING.value:
        await websocket.send_text(PONG_FRAME)


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


app = Starlette(
    routes=[
        WebSocketRoute(GRAPHQL_PATH, graphql_ws),
        Route("/readyz", readyz),
        Route("/healthz", lambda _: PlainTextResponse("ok")),
    ],
    lifespan=lifespan,
)


def main() -> None:
    uvicorn.run("bench.ceiling:app", **uvicorn_options(SETTINGS, parse_workers()))  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
