"""`/stream`, `/stream/orders`, `/stream/notifications`: server-sent events, on the hub.

Each event is written as `id: <stream entry id>`, `event: <type>` and
`data: <payload JSON>`, so a browser EventSource that reconnects sends
`Last-Event-ID` and resumes exactly after it. Heartbeat comments keep proxies
from closing idle streams. Like a `/ws` connection, a stream runs its jobs
together until the first ends: the delivery pump, the heartbeat, a watcher
for the client's disconnect, and the server's end (token expired, drain). The
stream is the adapter of a `gateway.connection.Connection`: over a connection
limit, the request gets 429 before any stream starts.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import orjson
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from ..resolvers.context import Principal
from ..resolvers.filters import type_filter
from ..schema.errors import ErrorCode
from ..streaming import keys
from ..streaming.entries import Entry
from ..streaming.errors import StreamingError
from ..streaming.hub import Accept, Cursor
from ..streaming.subscriber import Subscriber
from . import closes
from .compat_base import (
    Message,
    ServerEnding,
    describe,
    heartbeat_jobs,
    hub_of,
    is_order_event,
    now,
    pump,
    race,
)
from .connection import Connection
from .handoff import HandOff
from .limits import ConnectionRefused
from .runtime import Runtime

logger = logging.getLogger(__name__)

NOTIFICATION_TYPES = [
    "order_created", "order_completed", "order_failed", "payment_processed", "notification", "system_alert",
]
HEARTBEAT_FRAME = b": heartbeat\n\n"
CONNECTED_EVENT = "connected"
ERROR_EVENT = "error"

_HTTP_STATUSES: dict[ErrorCode, int] = {
    ErrorCode.BAD_USER_INPUT: 400,      # malformed Last-Event-ID
    ErrorCode.CURSOR_EXPIRED: 409,      # Last-Event-ID older than what the stream still holds
    ErrorCode.UNAVAILABLE: 503,
}


@dataclass(frozen=True)
class SseChannel:
    """What one SSE endpoint serves."""

    kind: str                   # names the consumer group: keys.EVENTS_KIND or ORDERS_KIND
    allowed: Accept             # which entries it delivers
    stream: str | None = None   # the `stream` field of the connected event, as the seed sent


SSE_ALL = SseChannel(keys.EVENTS_KIND, type_filter(None))
SSE_ORDERS = SseChannel(keys.ORDERS_KIND, is_order_event, "orders")
SSE_NOTIFICATIONS = SseChannel(keys.EVENTS_KIND, type_filter(NOTIFICATION_TYPES), "notifications")


class EventStream(ServerEnding, Response):
    """A `text/event-stream` response that owns its subscription while it runs, the
    adapter of its `Connection`.

    The connection and the subscription open before the status line is sent, so a
    connection over a limit gets 429, a bad or expired `Last-Event-ID` a plain 400 or 409
    (503 without Redis), not a stream."""

    media_type = "text/event-stream"
    token_expired = closes.TOKEN_EXPIRED
    revoked = closes.REVOKED

    def __init__(self, runtime: Runtime, principal: Principal, channel: SseChannel, after: str | None) -> None:
        ServerEnding.__init__(self)
        self.status_code = 200
        self.background = None
        self.init_headers({"cache-control": "no-cache", "x-accel-buffering": "no"})
        self.runtime = runtime
        self.hub = hub_of(runtime)
        self.principal = principal
        self.channel = channel
        self.after = after
        self.connection = Connection(runtime, self, closes.WS_SLOW_CONSUMER)
        self._lock = asyncio.Lock()
        self._started = False
        self._handoff: HandOff | None = None  # the response's writes, the shared reader's and ours

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        tenant_id = self.principal.tenant_id
        try:
            self.connection.open(self.principal)
        except ConnectionRefused as refused:
            body = {"detail": refused.reason, "code": ErrorCode.TOO_MANY_CONNECTIONS.value}
            await JSONResponse(body, status_code=429)(scope, receive, send)
            return
        try:
            async with self.hub.subscribe(tenant_id, self.channel.kind, Cursor(after=self.after)) as subscription:
                logger.info("%s stream of tenant %s opened", scope["path"], tenant_id)
                await self._stream(subscription, receive, send)
                logger.info("%s stream of tenant %s ended", scope["path"], tenant_id)
        except StreamingError as error:  # from the hub, or a write the client did not take in time
            if not self._started:
                await _refusal(error)(scope, receive, send)
                return
            code, message = describe(error)
            logger.info("stream of tenant %s ended: %s", tenant_id, message)
            await self._last_words(send, named_frame(ERROR_EVENT, {"code": code.value, "message": message}))
        finally:
            self.connection.close()
            self.finished()
        await self._last_words(send, b"", more_body=False)

    async def _stream(self, subscription: Subscriber, receive: Receive, send: Send) -> None:
        """Send the status line and the greeting, then run the stream's jobs until the first ends."""
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        self._started = True
        await self._write(send, named_frame(CONNECTED_EVENT, self._connected()))
        handoff = self._handoff = HandOff(send)
        lock = self._lock

        def write_now(entry: Entry) -> bool:
            return not lock.locked() and handoff.try_write(event_frame(entry))

        try:
            await race(
                pump(
                    self.hub, subscription, self.channel.allowed, lambda entry: self._write(send, event_frame(entry)),
                    self.runtime.metrics.delivery, write_now,
                ),
            _disconnected(receive),
            self._ended_by_server(send),
                *heartbeat_jobs(self.runtime.settings.sse_heartbeat, lambda: self._write(send, HEARTBEAT_FRAME)),
            )
        finally:
            handoff.close()

    async def _write(self, send: Send, frame: bytes) -> None:
        """Write one frame (after one the shared reader began, `HandOff`); SlowConsumer when
        the client does not take it in time."""
        async with self.connection.deadline(), self._lock:
            if self._handoff is not None:
                await self._handoff.write(frame)
            else:
                await send({"type": "http.response.body", "body": frame, "more_body": True})

    async def _last_words(self, send: Send, frame: bytes, *, more_body: bool = True) -> None:
        """A final write, given up if the client does not take it (it may have stopped reading)."""

        async def write() -> None:
            async with self._lock:
                await send({"type": "http.response.body", "body": frame, "more_body": more_body})

        await self.connection.last_words(write(), (OSError,))

    async def _ended_by_server(self, send: Send) -> None:
        """An expired or revoked token gets an `UNAUTHENTICATED` error event saying which (the
        client reconnects with a fresh one); a drain ends the stream without a word
        (EventSource reconnects elsewhere)."""
        ending = await self.ended_by_server()
        if ending in (self.token_expired, self.revoked):
            error = {"code": ErrorCode.UNAUTHENTICATED.value, "message": ending.reason}
            await self._last_words(send, named_frame(ERROR_EVENT, error))

    def _connected(self) -> Message:
        data: Message = {"stream": self.channel.stream} if self.channel.stream is not None else {}
        return {**data, "tenant_id": self.principal.tenant_id, "user_id": self.principal.user_id, "timestamp": now()}


def event_frame(entry: Entry) -> bytes:
    """One event; its id is what EventSource sends back as `Last-Event-ID`."""
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (
        entry.id.encode(), entry.event_type.encode(), orjson.dumps(entry.payload),
    )


def named_frame(event: str, data: Message) -> bytes:
    """A control event without an id, so it never moves the client's `Last-Event-ID`."""
    return b"event: %s\ndata: %s\n\n" % (event.encode(), orjson.dumps(data))


async def _disconnected(receive: Receive) -> None:
    """Return when the client goes away."""
    while (await receive())["type"] != "http.disconnect":
        pass


def _refusal(error: StreamingError) -> Response:
    code, message = describe(error)
    logger.info("stream refused: %s", message)
    return JSONResponse({"detail": message, "code": code.value}, status_code=_HTTP_STATUSES.get(code, 500))
