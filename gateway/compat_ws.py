"""`/ws` and `/ws/orders`: the seed's plain-JSON WebSocket protocol, on the hub.

A connection runs its jobs together until the first ends: the delivery pump
writes `event` / `order_event` messages, the receiver answers every client
message with exactly one reply, the heartbeat ticks, and the server may end it
(token expired, drain). One lock serialises the writes, so frames never
interleave and an entry counts as written only once its frame was sent. The
session is the adapter of a `gateway.connection.Connection`: over a connection
limit the socket closes 4429 with the limit's reason.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

import orjson
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from ..resolvers.context import Principal
from ..resolvers.filters import type_filter
from ..schema.errors import ErrorCode, GatewayError
from ..streaming import keys
from ..streaming.entries import Entry
from ..streaming.errors import StreamingError
from ..streaming.hub import Accept, Cursor
from . import closes
from .auth import AuthError, origin_allowed
from .closes import Close, CloseCode, close_reason
from .compat_base import (
    Message,
    MissingToken,
    ServerEnding,
    authenticate,
    describe,
    heartbeat_jobs,
    hub_of,
    is_order_event,
    last_event_id,
    now,
    pump,
    race,
    runtime_of,
    stats_json,
)
from .connection import Connection
from .limits import ConnectionRefused
from .runtime import Runtime
from .wsprotocol import SEND_NOW

logger = logging.getLogger(__name__)

ORDER_TYPES = ("order_created", "order_updated", "order_completed", "order_failed")
LEGACY_ALL = "all"          # the seed's "every type" subscription; the same as "*"
_CLOSE_CODES: dict[ErrorCode, CloseCode] = {
    ErrorCode.BAD_USER_INPUT: CloseCode.BAD_REQUEST,
    ErrorCode.CURSOR_EXPIRED: CloseCode.CONFLICT,
    ErrorCode.UNAVAILABLE: CloseCode.TRY_AGAIN_LATER,
    ErrorCode.SLOW_CONSUMER: CloseCode.TRY_AGAIN_LATER,
}


class ClientMessage(StrEnum):
    SUBSCRIBE = "subscribe"
    PING = "ping"
    GET_STATS = "get_stats"
    REFRESH_TOKEN = "refresh_token"


class ServerMessage(StrEnum):
    CONNECTED = "connected"
    SUBSCRIPTION_UPDATED = "subscription_updated"
    PONG = "pong"
    STATS = "stats"
    EVENT = "event"
    ORDER_EVENT = "order_event"
    HEARTBEAT = "heartbeat"
    TOKEN_REFRESHED = "token_refreshed"
    ERROR = "error"


@dataclass(frozen=True)
class WsChannel:
    """What one `/ws` endpoint serves."""

    kind: str                       # names the consumer group: keys.EVENTS_KIND or ORDERS_KIND
    allowed: Accept                 # the endpoint's own limit, whatever the client subscribes to
    event_message: ServerMessage    # the type of the messages carrying events
    initial: tuple[str, ...] = ()   # the subscription set a connection starts with
    stream: str | None = None       # the `stream` field of connected/heartbeat, as the seed sent


WS_EVENTS = WsChannel(keys.EVENTS_KIND, type_filter(None), ServerMessage.EVENT)
WS_ORDERS = WsChannel(keys.ORDERS_KIND, is_order_event, ServerMessage.ORDER_EVENT, ORDER_TYPES, "orders")


class TypeSelection:
    """A connection's subscription set. The pump's accept predicate reads it for
    every entry, so a `subscribe` takes effect from the next entry on."""

    def __init__(self, allowed: Accept, types: Sequence[str]) -> None:
        self._allowed = allowed
        self._chosen: Accept = type_filter(None)
        self.types: list[str] = []
        self.replace(list(types))

    def replace(self, types: object) -> None:
        """Install a new set (an empty one means every type); GatewayError when malformed."""
        if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
            raise GatewayError(ErrorCode.BAD_USER_INPUT, "'subscriptions' must be a list of event types")
        unique = list(dict.fromkeys(types))
        self._chosen = type_filter(["*" if t == LEGACY_ALL else t for t in unique] or None)
        self.types = unique

    def accept(self, entry: Entry) -> bool:
        return self._allowed(entry) and self._chosen(entry)


async def serve_socket(websocket: WebSocket, channel: WsChannel, heartbeat: float) -> None:
    """Check the origin, authenticate, then serve the connection until it ends."""
    runtime = runtime_of(websocket)
    if not origin_allowed(websocket.headers, runtime.settings.allowed_origins):
        logger.warning("%s refused for origin %s", websocket.url.path, websocket.headers.get("origin"))
        await websocket.close(CloseCode.POLICY_VIOLATION)  # before accept: the handshake gets 403
        return
    await websocket.accept()
    principal = await _authenticated(websocket, runtime)
    if principal is None:
        return
    session = SocketSession(websocket, runtime, principal, channel, heartbeat)
    try:
        session.connection.open(principal)
    except ConnectionRefused as refused:
        await session.close(refused.ending)
        return
    logger.info("%s client %s of tenant %s connected", websocket.url.path, session.client_id, principal.tenant_id)
    try:
        with suppress(WebSocketDisconnect):
            await session.run(last_event_id(websocket))
    finally:
        session.connection.close()
        session.finished()
    logger.info("%s client %s disconnected", websocket.url.path, session.client_id)


async def _authenticated(websocket: WebSocket, runtime: Runtime) -> Principal | None:
    """The principal, or None after closing with 1008 and a reason the client can show."""
    try:
        return await authenticate(runtime, websocket)
    except AuthError as error:
        logger.info("%s refused: %s", websocket.url.path, error.reason)
        reason = "Authentication required" if isinstance(error, MissingToken) else "Invalid token"
        await websocket.close(CloseCode.POLICY_VIOLATION, reason)
        return None


class SocketSession(ServerEnding):
    """One authenticated `/ws` or `/ws/orders` connection, the adapter of its `Connection`."""

    token_expired = closes.WS_TOKEN_EXPIRED
    revoked = closes.WS_REVOKED

    def __init__(
        self, websocket: WebSocket, runtime: Runtime, principal: Principal, channel: WsChannel, heartbeat: float
    ) -> None:
        super().__init__()
        self.websocket = websocket
        self.connection = Connection(runtime, self, closes.WS_SLOW_CONSUMER)
        self.hub = hub_of(runtime)
        self.metrics = runtime.metrics.delivery
        self.principal = principal
        self.channel = channel
        self.heartbeat = heartbeat
        self.client_id = str(uuid.uuid4())
        self.selection = TypeSelection(channel.allowed, channel.initial)
        self._lock = asyncio.Lock()
        self._closed = False
        self._send_now: Callable[[str], bool] | None = websocket.scope.get("extensions", {}).get(SEND_NOW)
        self._handlers: dict[str, Callable[[Message], Awaitable[Message]]] = {
            ClientMessage.SUBSCRIBE: self._subscribe,
            ClientMessage.PING: self._pong,
            ClientMessage.GET_STATS: self._stats,
            ClientMessage.REFRESH_TOKEN: self._refresh_token,
        }

    async def run(self, after: str | None) -> None:
        """Serve until the client leaves, the token expires, the gateway drains or the stream
        fails; a failure is reported after the subscription was released."""
        try:
            await self._serve(after)
        except StreamingError as error:  # from the hub, or a write the client did not take in time
            await self._fail(error)
        await self.close(closes.WS_STREAM_ENDED)  # unless closed already

    async def _serve(self, after: str | None) -> None:
        cursor = Cursor(after=after)
        async with self.hub.subscribe(self.principal.tenant_id, self.channel.kind, cursor) as subscription:
            await self.send(self._connected())
            await race(
                pump(
                    self.hub, subscription, self.selection.accept, self._write_event, self.metrics,
                    None if self._send_now is None else self._write_now,
                ),
                self._receive(),
                self._ended_by_server(),
                *heartbeat_jobs(self.heartbeat, self._heartbeat),
            )

    async def send(self, message: Message) -> None:
        """Write one JSON text frame: SlowConsumer when the client does not take it in
        time, WebSocketDisconnect once the socket is closed."""
        async with self.connection.deadline(), self._lock:
            if self._closed:
                raise WebSocketDisconnect(CloseCode.GOING_AWAY)
            await self.websocket.send_text(orjson.dumps(message).decode())

    async def close(self, ending: Close) -> None:
        """Close once, unless the client already went away; a client that stopped
        reading is given up without the close frame (`Connection.last_words`)."""
        await self.connection.last_words(self._close(ending), (WebSocketDisconnect,))

    async def _close(self, ending: Close) -> None:
        async with self._lock:
            if self._closed or not self._open():
                return
            self._closed = True
            await self.websocket.close(ending.code, close_reason(ending.reason))

    def _open(self) -> bool:
        """Both sides are: the client's, and ours (a failed write leaves ours disconnected)."""
        states = (self.websocket.client_state, self.websocket.application_state)
        return all(state is WebSocketState.CONNECTED for state in states)

    async def reply(self, text: str | None) -> Message:
        """The one answer to a client message: its reply, or an `error` that leaves the socket open."""
        try:
            request = parse_client_message(text)
            handler = self._handlers.get(request["type"])
            if handler is None:
                raise GatewayError(ErrorCode.BAD_USER_INPUT, f"Unknown message type: {request['type']}")
            return await handler(request)
        except GatewayError as error:
            logger.debug("client %s sent a bad message: %s", self.client_id, error.message)
            return error_message(error.code, error.message)

    # -- the connection's jobs ------------------------------------------------

    async def _receive(self) -> None:
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            await self.send(await self.reply(message.get("text")))

    async def _ended_by_server(self) -> None:
        await self.close(await self.ended_by_server())

    async def _heartbeat(self) -> None:
        await self.send(self._labelled({"type": ServerMessage.HEARTBEAT, "timestamp": now()}))

    async def _write_event(self, entry: Entry) -> None:
        await self.send(self._event(entry))

    def _write_now(self, entry: Entry) -> bool:
        """The fan-out writer's write: the frame now, or False when the socket cannot take it
        without waiting, is closing, or another write holds it."""
        send_now = self._send_now
        if send_now is None or self._closed or self._lock.locked():
            return False
        return send_now(orjson.dumps(self._event(entry)).decode())

    def _event(self, entry: Entry) -> Message:
        return {
            "type": self.channel.event_message,
            "id": entry.id,
            "event_type": entry.event_type,
            "data": entry.payload,
            "timestamp": entry.occurred_at.isoformat(),
        }

    async def _fail(self, error: StreamingError) -> None:
        """Tell the client why its stream ended, then close with the matching code."""
        code, message = describe(error)
        logger.info("client %s of tenant %s: %s", self.client_id, self.principal.tenant_id, message)
        with suppress(StreamingError):
            await self.connection.last_words(self.send(error_message(code, message)), (WebSocketDisconnect,))
        await self.close(Close(_CLOSE_CODES.get(code, CloseCode.INTERNAL_ERROR), message, closes.Retry.RECONNECT))

    # -- replies --------------------------------------------------------------

    def _connected(self) -> Message:
        return self._labelled({
            "type": ServerMessage.CONNECTED,
            "data": {
                "client_id": self.client_id,
                "tenant_id": self.principal.tenant_id,
                "user_id": self.principal.user_id,
                "subscriptions": self.selection.types,
                "timestamp": now(),
            },
        })

    async def _subscribe(self, request: Message) -> Message:
        self.selection.replace(request.get("subscriptions"))
        logger.debug("client %s subscribed to %s", self.client_id, self.selection.types)
        return {"type": ServerMessage.SUBSCRIPTION_UPDATED, "subscriptions": self.selection.types, "timestamp": now()}

    async def _pong(self, request: Message) -> Message:
        return {"type": ServerMessage.PONG, "timestamp": now()}

    async def _stats(self, request: Message) -> Message:
        data = await stats_json(self.hub, self.principal)
        return {"type": ServerMessage.STATS, "data": data, "timestamp": now()}

    async def _refresh_token(self, request: Message) -> Message:
        """Go on under a new token of the same tenant and user (`Connection.refresh`)."""
        token = request.get("token")
        if not isinstance(token, str) or not token:
            raise GatewayError(ErrorCode.BAD_USER_INPUT, "refresh_token needs a 'token' string")
        principal = self.principal = await self.connection.refresh(token)  # or RefreshRefused: FORBIDDEN
        assert principal.expires_at is not None  # `exp` is a required claim
        expires_at = datetime.fromtimestamp(principal.expires_at, UTC).isoformat()
        return {"type": ServerMessage.TOKEN_REFRESHED, "expires_at": expires_at, "timestamp": now()}

    def _labelled(self, message: Message) -> Message:
        """Add the seed's `stream` field (after `type`) on the endpoints that sent one."""
        if self.channel.stream is None:
            return message
        return {"type": message.pop("type"), "stream": self.channel.stream, **message}


def parse_client_message(text: str | None) -> Message:
    """A client message: a JSON object with a string `type`; GatewayError otherwise."""
    if text is None:
        raise GatewayError(ErrorCode.BAD_USER_INPUT, "Messages must be JSON text frames")
    try:
        request = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise GatewayError(ErrorCode.BAD_USER_INPUT, "Invalid JSON message") from None
    if not isinstance(request, dict) or not isinstance(request.get("type"), str):
        raise GatewayError(ErrorCode.BAD_USER_INPUT, "A message must be a JSON object with a string 'type'")
    return request


def error_message(code: ErrorCode, message: str) -> Message:
    return {"type": ServerMessage.ERROR, "code": code.value, "message": message, "timestamp": now()}


