"""One test-side client per transport, with one interface (tests/test_lifecycle.py).

A `Transport` opens a connection that subscribes to every event of its tenant (the
order-only endpoints to its order events): graphql-transport-ws and legacy graphql-ws
WebSockets on /graphql, GraphQL over SSE and Apollo's multipart HTTP on /graphql, the
seed's /ws and /ws/orders WebSockets and /stream and /stream/orders event streams. The
`Client` it gives reads what the server sends as the client sees it: `event()` the id of
the next event, `rest()` everything up to the end of the connection, as an `Ending`:
the ids of the events first, then every other frame (heartbeats and keep-alives left
out, /ws timestamps checked and dropped), then how the connection ended (`End`).

`connect` proves the subscription live (an event published and received) before it
hands the client over; a connection the gateway does not accept raises `Refused` with
what the client saw instead (`refusal`). With `stalling=True` the client's socket has a
small receive buffer and the client library reads only when asked, so a client that
stops asking stops reading, as a stalled browser does.
"""

from __future__ import annotations

import asyncio
import json
import socket
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any
from urllib.parse import urlencode

import httpx
import redis
import websockets

from helpers import (
    LEGACY_WS,
    TIMEOUT,
    TRANSPORT_WS,
    GatewayServer,
    ProtocolClient,
    groups,
    publish,
    wait_until,
)

OPERATION = "1"  # the id of the GraphQL WebSocket clients' one operation
EVENT_TYPE = "order_created"  # delivered by every endpoint, the order-only ones included
GRAPHQL_QUERY = "subscription { events { id type payload } }"
SSE_ACCEPT = "text/event-stream"
MULTIPART_ACCEPT = 'multipart/mixed;subscriptionSpec="1.0",application/json'
MULTIPART_BOUNDARY = b"\r\n--graphql"
MULTIPART_END = "--graphql--"  # the closing delimiter, as `rest()` reports it among the frames
STALLING_RCVBUF = 1 << 16  # not under loopback's MSS, or reading back after a stall crawls

# How a connection ended: a WebSocket close frame's (code, reason), or one of these.
End = tuple[int, str] | str
OPEN = "open"  # a WebSocket still open (it answered a ping) after its operation completed
ENDED = "ended"  # an HTTP response that ended with its last chunk
CUT = "cut"  # the connection ended without a close frame or without the response's last chunk


@dataclass(frozen=True)
class Event:
    """An event frame, by its stream entry id."""

    id: str


@dataclass
class Ending:
    """What a client read up to the end: the events, then every other frame, then the end."""

    events: list[str]
    words: list[Any]
    end: End


class Ended(Exception):
    """The connection ended (`end`)."""

    def __init__(self, end: End) -> None:
        super().__init__(end)
        self.end = end


class Refused(Exception):
    """The gateway did not accept the connection. `seen`: an HTTP transport's (status, JSON
    body); a WebSocket's `Ending` (no events, the frames before the close, the close)."""

    def __init__(self, seen: Any) -> None:
        super().__init__(seen)
        self.seen = seen


class Client(ABC):
    """One connection's reading side."""

    async def frame(self) -> Any:
        """The next frame that is not a heartbeat: an `Event`, or the frame as the client
        sees it; `Ended` once the connection ended; TimeoutError after TIMEOUT seconds
        without either (heartbeats do not count)."""
        async with asyncio.timeout(TIMEOUT):
            return await self.next_frame()

    @abstractmethod
    async def next_frame(self) -> Any:
        """`frame()`, without its deadline."""

    async def event(self) -> str:
        frame = await self.frame()
        assert isinstance(frame, Event), frame
        return frame.id

    async def rest(self, *, stop_at_complete: bool = False) -> Ending:
        """Everything up to the end of the connection. `stop_at_complete`: a connection that
        may outlive its operation (graphql-transport-ws) is read until the operation's
        `complete`, then asked whether it is still open."""
        events: list[str] = []
        words: list[Any] = []
        while True:
            try:
                frame = await self.frame()
            except Ended as ended:
                return Ending(events, words, ended.end)
            except TimeoutError:
                raise AssertionError(
                    f"no end and nothing more within {TIMEOUT} s, after {len(events)} events and {words}"
                ) from None
            if isinstance(frame, Event) and not words:
                events.append(frame.id)
            else:
                words.append(frame)  # an event after another frame lands here: no test expects one
                if stop_at_complete and frame == {"id": OPERATION, "type": "complete"}:
                    return Ending(events, words, await self.still_open())

    async def still_open(self) -> End:
        raise NotImplementedError(f"{type(self).__name__} has no operation that can end alone")


@dataclass(frozen=True)
class Transport:
    """A way to subscribe; `open(gateway, token, stalling)` gives a subscribed client (not yet
    proven live) or raises `Refused`."""

    name: str
    open: Callable[[GatewayServer, str, bool], AbstractAsyncContextManager[Client]]

    def __str__(self) -> str:
        return self.name


@asynccontextmanager
async def connect(
    transport: Transport, gateway: GatewayServer, redis_client: redis.Redis, tenant: str, token: str,
    *, stalling: bool = False,
) -> AsyncIterator[Client]:
    """An accepted connection whose subscription is live: its consumer group exists and an
    event published since was received. The caller makes sure that no other group of the
    tenant is going away meanwhile (one more group is what is waited for)."""
    before = len(groups(redis_client, tenant))
    async with transport.open(gateway, token, stalling) as client:
        await wait_until(lambda: len(groups(redis_client, tenant)) > before)
        live = publish(redis_client, tenant, EVENT_TYPE, {"live": True})
        assert await client.event() == live, transport.name
        yield client


async def refusal(transport: Transport, gateway: GatewayServer, token: str) -> Any:
    """What the client sees when the gateway refuses its connection (`Refused.seen`)."""
    try:
        async with transport.open(gateway, token, False):
            pass
    except Refused as refused:
        return refused.seen
    raise AssertionError(f"{transport.name}: the gateway accepted the connection")


# -- WebSockets ------------------------------------------------------------------------


def _closed(closed: websockets.ConnectionClosed) -> End:
    return CUT if closed.rcvd is None else (closed.rcvd.code, closed.rcvd.reason)


def _websocket(url: str, stalling: bool, **options: Any) -> Any:
    """`websockets.connect`; a stalling client's socket has a small receive buffer and its
    library queues one message at most, so that it stops reading when the test does."""
    if stalling:
        host, port = url.split("//", 1)[1].split("/", 1)[0].split(":")
        sock = socket.create_connection((host, int(port)))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, STALLING_RCVBUF)
        options.update(sock=sock, max_queue=1)
    return websockets.connect(url, compression=None, **options)


async def _recv(ws: Any) -> Any:
    async with asyncio.timeout(TIMEOUT):
        return await ws.recv()


class GraphQLWsClient(Client):
    """graphql-transport-ws or legacy graphql-ws: the messages, as JSON objects."""

    def __init__(self, protocol: ProtocolClient) -> None:
        self.protocol = protocol

    async def next_frame(self) -> Any:
        try:
            message = await self.protocol.recv()  # pings answered, keep-alives and pongs skipped
        except websockets.ConnectionClosed as closed:
            raise Ended(_closed(closed)) from None
        if message.get("type") in {"next", "data"} and message.get("id") == OPERATION and "errors" not in message["payload"]:
            return Event(message["payload"]["data"]["events"]["id"])
        return message

    async def still_open(self) -> End:
        """Ask with a `ping`: OPEN when the `pong` comes, else how the connection ended."""
        await self.protocol.send({"type": "ping"})
        try:
            while (message := json.loads(await _recv(self.protocol.ws)))["type"] != "pong":
                assert message["type"] == "ping", f"a message after the operation completed: {message}"
                await self.protocol.send({"type": "pong"})
        except websockets.ConnectionClosed as closed:
            return _closed(closed)
        return OPEN


@asynccontextmanager
async def _graphql_ws(protocol: str, gateway: GatewayServer, token: str, stalling: bool) -> AsyncIterator[Client]:
    async with _websocket(gateway.ws_url, stalling, subprotocols=[protocol]) as ws:
        client = ProtocolClient(ws, protocol)
        await client.send({"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}})
        words = []
        try:
            while (message := await client.recv())["type"] != "connection_ack":
                words.append(message)  # legacy graphql-ws: connection_error, then the close
        except websockets.ConnectionClosed as closed:
            raise Refused(Ending([], words, _closed(closed))) from None
        await client.subscribe(OPERATION, GRAPHQL_QUERY)
        yield GraphQLWsClient(client)


class CompatWsClient(Client):
    """/ws and /ws/orders: the JSON messages, their `timestamp` checked and left out."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws

    async def message(self) -> dict[str, Any]:
        try:
            message = dict(json.loads(await _recv(self.ws)))
        except websockets.ConnectionClosed as closed:
            raise Ended(_closed(closed)) from None
        timestamp = message.pop("timestamp", None)
        if timestamp is not None:
            assert datetime.fromisoformat(timestamp).tzinfo is not None, message
        return message

    async def next_frame(self) -> Any:
        while (message := await self.message())["type"] == "heartbeat":
            pass
        if message["type"] in {"event", "order_event"}:
            return Event(message["id"])
        return message


@asynccontextmanager
async def _compat_ws(path: str, via_header: bool, gateway: GatewayServer, token: str, stalling: bool) -> AsyncIterator[Client]:
    """The token in the `token` query parameter, or in an `Authorization` header."""
    url = f"ws://127.0.0.1:{gateway.port}{path}"
    headers = {"Authorization": f"Bearer {token}"} if via_header else None
    if not via_header:
        url += f"?{urlencode({'token': token})}"
    async with _websocket(url, stalling, additional_headers=headers) as ws:
        client = CompatWsClient(ws)
        try:
            connected = await client.message()
        except Ended as ended:
            raise Refused(Ending([], [], ended.end)) from None
        assert connected["type"] == "connected", connected  # sent once subscribed
        yield client


# -- HTTP streams ----------------------------------------------------------------------


class HttpStreamClient(Client):
    """A streaming response's body, read only when a frame is asked for."""

    def __init__(self, response: httpx.Response) -> None:
        self.buffer = b""
        self._chunks = response.aiter_bytes()

    async def more(self) -> bool:
        """Read once more into `buffer`: False when the response ended (Ended(CUT) when the
        connection closed before its last chunk)."""
        try:
            async with asyncio.timeout(TIMEOUT):
                chunk = await anext(self._chunks, None)
        except httpx.RemoteProtocolError:
            raise Ended(CUT) from None
        if chunk is None:
            return False
        self.buffer += chunk
        return True

    def ended(self) -> Ended:
        assert not self.buffer.strip(), f"the response ended inside a frame: {self.buffer[:200]!r}"
        return Ended(ENDED)

    async def sse_fields(self) -> dict[str, str]:
        """The next server-sent event's fields (comments, the heartbeats, left out)."""
        while True:
            end = self.buffer.find(b"\n\n")
            if end < 0:
                if not await self.more():
                    raise self.ended()
                continue
            block, self.buffer = self.buffer[:end].decode(), self.buffer[end + 2 :]
            fields = {}
            for line in block.split("\n"):
                if not line.startswith(":"):
                    name, _, value = line.partition(":")
                    fields[name] = value.removeprefix(" ")
            if fields:
                return fields


def _graphql_event(result: Any) -> Event | None:
    """The event in a GraphQL result, unless it carries errors."""
    if isinstance(result, dict) and "errors" not in result and isinstance(result.get("data"), dict):
        return Event(result["data"]["events"]["id"])
    return None


class GraphQLSseClient(HttpStreamClient):
    """GraphQL over SSE: {"event": name, "data": the JSON data, or None}."""

    async def next_frame(self) -> Any:
        fields = await self.sse_fields()
        data = json.loads(fields["data"]) if fields.get("data") else None
        if fields.get("event") == "next" and (event := _graphql_event(data)) is not None:
            return event
        return {**fields, "data": data}


class MultipartClient(HttpStreamClient):
    """Apollo's multipart subscriptions: each part's JSON ({} heartbeats left out), and the
    closing delimiter as MULTIPART_END."""

    _after_boundary = False

    async def next_frame(self) -> Any:
        while True:
            if self._after_boundary:
                while len(self.buffer) < 2:
                    if not await self.more():
                        raise self.ended()
                self._after_boundary = False
                if self.buffer.startswith(b"--"):
                    self.buffer = self.buffer[2:]
                    return MULTIPART_END
            end = self.buffer.find(MULTIPART_BOUNDARY)
            if end < 0:
                if not await self.more():
                    raise self.ended()
                continue
            part, self.buffer = self.buffer[:end], self.buffer[end + len(MULTIPART_BOUNDARY) :]
            self._after_boundary = True
            _, _, body = part.partition(b"\r\n\r\n")
            message = json.loads(body) if body.strip() else {}
            if message:
                event = _graphql_event(message.get("payload"))
                return message if event is None else event


class StreamClient(HttpStreamClient):
    """/stream and /stream/orders: {"event": name, "data": the JSON data} for frames that
    are not events (events carry an `id`)."""

    async def next_frame(self) -> Any:
        fields = await self.sse_fields()
        if "id" in fields:
            assert fields["event"] == EVENT_TYPE, fields
            return Event(fields["id"])
        return {**fields, "data": json.loads(fields["data"])}


@asynccontextmanager
async def _http(method: str, url: str, stalling: bool, **request: Any) -> AsyncIterator[httpx.Response]:
    """A streaming response with status 200 (else Refused with its status and JSON body)."""
    options = [(socket.SOL_SOCKET, socket.SO_RCVBUF, STALLING_RCVBUF)] if stalling else []
    transport = httpx.AsyncHTTPTransport(socket_options=options)
    async with httpx.AsyncClient(timeout=TIMEOUT, transport=transport) as http, http.stream(
        method, url, **request
    ) as response:
        if response.status_code != 200:
            raise Refused((response.status_code, json.loads(await response.aread())))
        yield response


@asynccontextmanager
async def _graphql_http(
    accept: str, kind: type[HttpStreamClient], gateway: GatewayServer, token: str, stalling: bool
) -> AsyncIterator[Client]:
    headers = {"accept": accept, "authorization": f"Bearer {token}"}
    async with _http("POST", gateway.http_url, stalling, json={"query": GRAPHQL_QUERY}, headers=headers) as response:
        yield kind(response)


@asynccontextmanager
async def _stream(path: str, via_header: bool, gateway: GatewayServer, token: str, stalling: bool) -> AsyncIterator[Client]:
    """The token in the `token` query parameter, or in an `Authorization` header."""
    url = f"http://127.0.0.1:{gateway.port}{path}"
    request: dict[str, Any] = {"headers": {"authorization": f"Bearer {token}"}} if via_header else {"params": {"token": token}}
    async with _http("GET", url, stalling, **request) as response:
        client = StreamClient(response)
        connected = await client.frame()
        assert connected["event"] == "connected", connected  # sent once subscribed
        yield client


TRANSPORTS = [
    Transport("graphql-transport-ws", partial(_graphql_ws, TRANSPORT_WS)),
    Transport("graphql-ws", partial(_graphql_ws, LEGACY_WS)),
    Transport("graphql-sse", partial(_graphql_http, SSE_ACCEPT, GraphQLSseClient)),
    Transport("multipart", partial(_graphql_http, MULTIPART_ACCEPT, MultipartClient)),
    Transport("ws", partial(_compat_ws, "/ws", False)),
    Transport("ws-orders", partial(_compat_ws, "/ws/orders", True)),
    Transport("stream", partial(_stream, "/stream", False)),
    Transport("stream-orders", partial(_stream, "/stream/orders", True)),
]
BY_NAME = {transport.name: transport for transport in TRANSPORTS}

__all__ = [
    "BY_NAME", "CUT", "ENDED", "EVENT_TYPE", "MULTIPART_END", "OPEN", "OPERATION", "TRANSPORTS",
    "Client", "End", "Ending", "Event", "Refused", "Transport", "connect", "refusal",
]
