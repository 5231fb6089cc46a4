"""Subscriptions without WebSockets: GraphQL over SSE and Apollo's multipart HTTP.

Strawberry parses these requests and runs the same resolvers as over a
WebSocket; the router authenticates them like any HTTP request (401 without a
valid token). Each stream is the adapter of a `gateway.connection.Connection`
(limits, expiry, stats, drain, write deadline), opened before the status line:
over a connection limit, the request gets 429. What this module changes is how
results become response frames. Strawberry merges results and heartbeats through a queue and reads the
next result while the previous frame still waits to be written, which would
acknowledge entries before they reached the socket. Here, as on a WebSocket, a
result is asked for only after the previous frame was written (the response's
`send` returned), heartbeats fill the pauses, and:

- a frame not written within `RAGLINE_SLOW_CONSUMER_TIMEOUT` ends the stream
  with a `SLOW_CONSUMER` error (the client stopped reading);
- the stream ends with an `UNAUTHENTICATED` "Token expired" error, then
  `complete`, when the token's `exp` passes (a WebSocket closes with 4403);
- a graceful shutdown completes it like a WebSocket operation (cursor
  flushed, ephemeral group removed, `complete` sent);
- it counts as a connection in `stats` and against the connection limits while it is open.

A subscription the planner takes (`resolvers.shared`) runs as on a WebSocket: its
cohort renders each event once, and while the stream waits with nothing queued, the
shared reader writes its frames itself (`Deliveries.write_directly`), through the
response's ASGI `send` run by hand (`gateway.handoff`).

Two interoperability fixes as well: SSE lines end in LF rather than CRLF
(both are valid SSE, but urql's parser only splits on LF), and a streaming
response is chosen only when the client lists a streaming media type before
any JSON one in `Accept`, so a query from a client that accepts both (urql
lists JSON first, then `text/event-stream`) gets a plain JSON response.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from contextlib import aclosing, suppress
from typing import Any, ClassVar

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Send
from strawberry.http import GraphQLHTTPResponse, GraphQLRequestData
from strawberry.http.streaming import (
    HTTPStreamTransport,
    MultipartSubscriptionTransport,
    SSETransport,
)
from strawberry.subscriptions import (
    GRAPHQL_SSE_PROTOCOL,
    GRAPHQL_TRANSPORT_WS_PROTOCOL,
    GRAPHQL_WS_PROTOCOL,
    MULTIPART_SUBSCRIPTION_PROTOCOL,
)
from strawberry.types.graphql import OperationType

from ..resolvers.context import GatewayContext, Principal
from ..resolvers.events import DeliveryStream
from ..resolvers.shared import Planner, open_shared
from ..schema.errors import ErrorCode
from ..streaming.errors import SlowConsumer
from . import closes
from .connection import Connection
from .handoff import HandOff
from .limits import ConnectionRefused
from .runtime import Runtime

logger = logging.getLogger(__name__)

# Every transport /graphql speaks; Strawberry enables the two HTTP ones only when asked.
SUBSCRIPTION_PROTOCOLS = (
    GRAPHQL_TRANSPORT_WS_PROTOCOL,
    GRAPHQL_WS_PROTOCOL,
    GRAPHQL_SSE_PROTOCOL,
    MULTIPART_SUBSCRIPTION_PROTOCOL,
)
JSON_MEDIA_TYPES = frozenset({"application/json", "application/graphql-response+json", "application/graphql+json"})
_END = object()
Encode = Callable[[object], str]
Process = Callable[[Any], Awaitable[GraphQLHTTPResponse]]


def _as_is(text: object) -> str:
    assert isinstance(text, str)
    return text


def encode_rendered(transport: HTTPStreamTransport, payload: str) -> str:
    """The `next` frame of a payload the cohort rendered as JSON text."""
    if isinstance(transport, MultipartSubscriptionTransport):
        return transport.encode_multipart_data(f'{{"payload":{payload}}}', _as_is)
    return transport.encode_next(payload, _as_is)  # type: ignore[arg-type]  # SSE: the text is the event's data


def error_result(code: ErrorCode, message: str) -> GraphQLHTTPResponse:
    return {"data": None, "errors": [{"message": message, "extensions": {"code": code.value}}]}


class _Wake(enum.Enum):
    RESULT = "result"
    HEARTBEAT = "heartbeat"
    EXPIRY = "expiry"
    REVOKED = "revoked"
    DRAIN = "drain"


# The token no longer holds: the stream's last result says why (`UNAUTHENTICATED`).
_SIGNED_OUT = {_Wake.EXPIRY: closes.TOKEN_EXPIRED, _Wake.REVOKED: closes.REVOKED}


class LineFeedSSETransport(SSETransport):
    """Strawberry's SSE framing with LF line ends."""

    def encode_event(self, event: str, data: str | None = None) -> str:
        return super().encode_event(event, data).replace("\r\n", "\n")

    def encode_comment(self, comment: str) -> str:
        return f": {comment}\n\n"


# The HTTP transports, by the subscription protocol that enables each; the gateway writes
# with these instances, by their own `protocol` (Strawberry makes instances of its own).
TRANSPORT_CLASSES: dict[str, type[HTTPStreamTransport]] = {
    MULTIPART_SUBSCRIPTION_PROTOCOL: MultipartSubscriptionTransport,
    GRAPHQL_SSE_PROTOCOL: LineFeedSSETransport,
}
STREAM_TRANSPORTS: dict[str, HTTPStreamTransport] = {
    transport.protocol: transport for transport in (make() for make in TRANSPORT_CLASSES.values())
}


def json_first(headers: Mapping[str, str]) -> bool:
    """Whether `Accept` lists a JSON media type before any streaming one."""
    accept = next((value for key, value in headers.items() if key.lower() == "accept"), "")
    for media_range in accept.split(","):
        if media_range.split(";", 1)[0].strip().lower() in JSON_MEDIA_TYPES:
            return True
        if any(transport.accepts(media_range) for transport in STREAM_TRANSPORTS.values()):
            return False
    return False


class HTTPSubscriptions:
    """Router mixin: SSE and multipart responses with the WebSocket semantics, through
    the view's public methods: the request's protocol (`parse_http_body`), the result
    (`execute_operation`) and the response (`create_streaming_response`)."""

    runtime: Runtime
    planner: Planner
    stream_transport_classes_by_protocol: ClassVar[Mapping[str, type[HTTPStreamTransport]]] = TRANSPORT_CLASSES

    async def parse_http_body(self, request: Any) -> GraphQLRequestData | list[GraphQLRequestData]:
        """Strawberry's, except that a JSON media type listed before a streaming one wins."""
        data: GraphQLRequestData | list[GraphQLRequestData] = await super().parse_http_body(request)  # type: ignore[misc]
        if isinstance(data, GraphQLRequestData) and data.protocol in STREAM_TRANSPORTS and json_first(request.headers):
            data.protocol = "http"
        return data

    async def execute_operation(
        self, request: Any, request_adapter: Any, request_data: Any, context: Any, root_value: Any, sub_response: Any
    ) -> Any:
        """Strawberry's, or the shared path for a subscription the planner takes; a streamed
        result is kept for `create_streaming_response`, which writes it itself (Strawberry's
        writer reads results ahead of the socket)."""
        streamed = (
            isinstance(request, Request)
            and isinstance(request_data, GraphQLRequestData)
            and request_data.protocol in STREAM_TRANSPORTS
            and isinstance(context, GatewayContext)
        )
        if streamed:
            transport = STREAM_TRANSPORTS[request_data.protocol]
            shared = await self._open_shared(request_adapter.method, request_data, context, transport)
            if shared is not None:
                request.state.subscription = (shared, transport, context.principal, True)
                return shared
        result = await super().execute_operation(  # type: ignore[misc]
            request, request_adapter, request_data, context, root_value, sub_response
        )
        if streamed:
            request.state.subscription = (result, STREAM_TRANSPORTS[request_data.protocol], context.principal, False)
        return result

    async def _open_shared(
        self, method: Any, request_data: GraphQLRequestData, context: GatewayContext, transport: HTTPStreamTransport
    ) -> DeliveryStream[str] | None:
        """The cohort's rendered payloads, or None for Strawberry's path (which also says
        what is wrong with a subscription that cannot start)."""
        if OperationType.SUBSCRIPTION not in transport.allowed_operation_types(OperationType.from_http(method)):
            return None
        plan = self.planner.plan(request_data.query, request_data.variables, request_data.operation_name)
        if plan is None:
            return None
        try:
            return await open_shared(context, self.planner, plan)
        except Exception:  # noqa: BLE001 (a coded error or a bug: Strawberry's path reports it the usual way)
            return None

    async def create_streaming_response(
        self, request: Any, stream: Callable[[], AsyncIterator[str]], sub_response: Response, headers: Mapping[str, str]
    ) -> Response:
        kept = getattr(request.state, "subscription", None) if isinstance(request, Request) else None
        if kept is None:  # e.g. @defer results: Strawberry's response
            return await super().create_streaming_response(request, stream, sub_response, headers)  # type: ignore[misc,no-any-return]
        del request.state.subscription
        results, transport, principal, rendered = kept

        async def process(value: Any) -> GraphQLHTTPResponse:
            response: GraphQLHTTPResponse = await self.process_result(request, value)  # type: ignore[attr-defined]
            return response

        encode: Encode = self.encode_json_string  # type: ignore[attr-defined]
        operation = HTTPOperation(results, transport, encode, process, principal, rendered)
        return await self._respond(operation, sub_response, headers)

    async def _respond(self, stream: HTTPOperation, sub_response: Response, headers: Mapping[str, str]) -> Response:
        """Open the operation's connection, then its response; 429 over a connection limit."""
        connection = Connection(self.runtime, stream)
        try:
            if stream.principal is not None:
                connection.open(stream.principal)
        except ConnectionRefused as refused:
            await stream.discard()
            return JSONResponse(error_result(ErrorCode.TOO_MANY_CONNECTIONS, refused.reason), status_code=429)
        stream.connection = connection
        return BoundedStreamingResponse(
            stream, status_code=sub_response.status_code or 200, headers={**sub_response.headers, **headers}
        )


class HTTPOperation:
    """One subscription answered over an HTTP response, the adapter of its connection;
    calling it gives the frames."""

    connection: Connection

    def __init__(
        self,
        results: AsyncIterator[Any],
        transport: HTTPStreamTransport,
        encode: Encode,
        process: Process,
        principal: Principal | None,
        rendered: bool = False,
    ) -> None:
        """`rendered`: the results are the shared path's payloads (JSON text), not Strawberry's."""
        self.principal = principal
        self._rendered = rendered
        self.handoff: HandOff | None = None  # while the shared reader may write this stream's frames itself
        self._results = results
        self._transport = transport
        self._encode = encode
        self._process = process
        self._stopping = asyncio.get_running_loop().create_future()  # set to DRAIN, EXPIRY or REVOKED
        self._ended = asyncio.Event()
        self._step: asyncio.Future[Any] | None = None

    def __call__(self) -> AsyncGenerator[str, None]:
        return self._frames()

    def write_directly(self, send: Send) -> HandOff | None:
        """Let the shared reader write the frames of a rendered stream itself (`HandOff`),
        while this stream waits for a result; None for Strawberry's results."""
        results = self._results
        if not self._rendered or not isinstance(results, DeliveryStream):
            return None
        transport, stopping = self._transport, self._stopping
        handoff = self.handoff = HandOff(send)

        def write_now(payload: str) -> bool:
            return not stopping.done() and handoff.try_write(encode_rendered(transport, payload).encode())

        results.write_directly(write_now)
        return handoff

    def stop_direct(self) -> None:
        """No more frames from the shared reader (the stream is ending)."""
        if self.handoff is not None:
            self.handoff.close()

    async def drain(self) -> None:
        """Complete the operation (its cursor flushed), as a shutdown does for sockets."""
        self._stop(_Wake.DRAIN)
        await self._ended.wait()

    async def expire(self) -> None:
        """End with an `UNAUTHENTICATED` "Token expired" error, then `complete`."""
        self._stop(_Wake.EXPIRY)

    async def revoke(self) -> None:
        """End with an `UNAUTHENTICATED` "Revoked" error, then `complete`."""
        self._stop(_Wake.REVOKED)

    async def discard(self) -> None:
        """Never streamed (refused): release what the resolver opened."""
        await self._close_results()

    def _stop(self, why: _Wake) -> None:
        if not self._stopping.done():
            self._stopping.set_result(why)

    def slow_consumer_frames(self) -> str:
        """What a stalled stream is told, if it still reads at all."""
        error = error_result(ErrorCode.SLOW_CONSUMER, closes.SLOW_CONSUMER.reason)
        return self._transport.encode_next(error, self._encode) + self._transport.encode_complete()

    async def _frames(self) -> AsyncGenerator[str, None]:
        try:
            if self._transport.send_initial_heartbeat:
                yield self._transport.heartbeat_message(self._encode)
            async with aclosing(self._result_frames()) as frames:
                async for frame in frames:
                    yield frame
            await self._close_results()  # cursor flushed or group removed before `complete`
            yield self._transport.encode_complete()
        finally:
            with anyio.CancelScope(shield=True):  # a client disconnect cancels us; cleanup must finish
                await self._close_results()
            self._ended.set()

    async def _result_frames(self) -> AsyncGenerator[str, None]:
        while True:
            # Asked for only now that the previous frame was written: the
            # resolver acknowledges an entry when it is asked for the next one.
            self._step = asyncio.ensure_future(anext(self._results, _END))
            wake = await self._wait(self._step)
            while wake is _Wake.HEARTBEAT:
                yield self._transport.heartbeat_message(self._encode)
                wake = await self._wait(self._step)
            signed_out = _SIGNED_OUT.get(wake)
            if signed_out is not None:
                await self._close_results()
                yield self._transport.encode_next(
                    error_result(ErrorCode.UNAUTHENTICATED, signed_out.reason), self._encode
                )
                return
            if wake is _Wake.DRAIN:
                return
            value = self._step.result()
            self._step = None
            if value is _END:
                return
            if self._rendered:
                yield encode_rendered(self._transport, value)
            else:
                yield self._transport.encode_next(await self._process(value), self._encode)

    async def _wait(self, step: asyncio.Future[Any]) -> _Wake:
        stopping = self._stopping
        done, _ = await asyncio.wait(
            (step, stopping), timeout=self._transport.heartbeat_interval, return_when=asyncio.FIRST_COMPLETED
        )
        if step in done:
            return _Wake.RESULT
        if stopping in done:
            why: _Wake = stopping.result()
            return why
        return _Wake.HEARTBEAT

    async def _close_results(self) -> None:
        """End the subscription: its resolver releases the group whatever way we got here."""
        self.stop_direct()
        step, self._step = self._step, None
        if step is not None:
            step.cancel()  # raised inside the resolver chain, which closes as it unwinds
            with suppress(asyncio.CancelledError, Exception):
                await step
        aclose = getattr(self._results, "aclose", None)
        if aclose is not None:
            await aclose()


class BoundedStreamingResponse(StreamingResponse):
    """Writes an operation's frames under its connection's write deadline, and closes the
    operation and its connection as soon as the response ends (not when garbage collected)."""

    def __init__(self, operation: HTTPOperation, *, status_code: int, headers: Mapping[str, str]) -> None:
        self.frames = operation()
        super().__init__(self.frames, status_code=status_code, headers=headers)
        self.operation = operation

    async def __call__(self, scope: Any, receive: Any, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.operation.connection.close()

    async def stream_response(self, send: Send) -> None:
        connection = self.operation.connection
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        handoff = self.operation.write_directly(send)
        async with aclosing(self.frames) as frames:
            try:
                async for frame in frames:
                    async with connection.deadline():
                        if handoff is not None:  # the shared reader writes too
                            await handoff.write(frame.encode())
                        else:
                            await send({"type": "http.response.body", "body": frame.encode(), "more_body": True})
            except SlowConsumer:
                self.operation.stop_direct()  # the frame was not written: its entry stays unacknowledged
            else:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
        last_words = self.operation.slow_consumer_frames().encode()

        async def say() -> None:
            await send({"type": "http.response.body", "body": last_words, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        await connection.last_words(say(), (OSError,))


__all__ = ["SUBSCRIPTION_PROTOCOLS", "BoundedStreamingResponse", "HTTPOperation", "HTTPSubscriptions"]
