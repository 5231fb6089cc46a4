"""Subscriptions without WebSockets: GraphQL over SSE and Apollo's multipart HTTP.

Strawberry parses these requests and runs the same resolvers as over a
WebSocket; the router authenticates them like any HTTP request (401 without a
valid token). What this module changes is how results become response
frames. Strawberry merges results and heartbeats through a queue and reads the
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
- it counts as a connection in `stats` while it is open.

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
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from contextlib import aclosing, suppress
from typing import Any, ClassVar

import anyio
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Send
from strawberry.http import GraphQLHTTPResponse
from strawberry.http.streaming import (
    AsyncTextStream,
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

from ..resolvers.context import GatewayContext, Principal
from ..schema.errors import ErrorCode
from . import closes
from .closes import FINAL_WRITE_TIMEOUT
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


def error_result(code: ErrorCode, message: str) -> GraphQLHTTPResponse:
    return {"data": None, "errors": [{"message": message, "extensions": {"code": code.value}}]}


class _Wake(enum.Enum):
    RESULT = "result"
    HEARTBEAT = "heartbeat"
    EXPIRY = "expiry"
    DRAIN = "drain"


class LineFeedSSETransport(SSETransport):
    """Strawberry's SSE framing with LF line ends."""

    def encode_event(self, event: str, data: str | None = None) -> str:
        return super().encode_event(event, data).replace("\r\n", "\n")

    def encode_comment(self, comment: str) -> str:
        return f": {comment}\n\n"


class HTTPSubscriptions:
    """Router mixin: SSE and multipart responses with the WebSocket semantics."""

    runtime: Runtime
    stream_transport_classes_by_protocol: ClassVar[Mapping[str, type[HTTPStreamTransport]]] = {
        MULTIPART_SUBSCRIPTION_PROTOCOL: MultipartSubscriptionTransport,
        GRAPHQL_SSE_PROTOCOL: LineFeedSSETransport,
    }

    def _get_stream_transport_from_headers(self, headers: Mapping[str, str]) -> HTTPStreamTransport | None:
        """The first streaming media type in `Accept`, unless a JSON one comes before it."""
        accept = next((value for key, value in headers.items() if key.lower() == "accept"), "")
        transports: list[HTTPStreamTransport] = list(self._stream_transport_map.values())  # type: ignore[attr-defined]
        for media_range in accept.split(","):
            if media_range.split(";", 1)[0].strip().lower() in JSON_MEDIA_TYPES:
                return None
            transport = next((t for t in transports if t.accepts(media_range)), None)
            if transport is not None:
                return transport
        return None

    async def execute_operation(
        self, request: Any, request_adapter: Any, request_data: Any, context: Any, root_value: Any, sub_response: Any
    ) -> Any:
        if isinstance(request, Request) and isinstance(context, GatewayContext):
            request.state.principal = context.principal  # for the stream's expiry and accounting
        return await super().execute_operation(  # type: ignore[misc]
            request, request_adapter, request_data, context, root_value, sub_response
        )

    def _stream_result(self, request: Any, result: Any, transport: HTTPStreamTransport) -> AsyncTextStream:
        """Replaces Strawberry's, which reads results ahead of the socket."""

        async def process(value: Any) -> GraphQLHTTPResponse:
            response: GraphQLHTTPResponse = await self.process_result(request, value)  # type: ignore[attr-defined]
            return response

        encode: Encode = self.encode_json_string  # type: ignore[attr-defined]
        principal: Principal | None = getattr(request.state, "principal", None)
        return HTTPOperation(result, transport, encode, process, principal, self.runtime)

    async def create_streaming_response(
        self, request: Any, stream: Callable[[], AsyncIterator[str]], sub_response: Response, headers: Mapping[str, str]
    ) -> Response:
        if not isinstance(stream, HTTPOperation):  # e.g. @defer results: Strawberry's response
            return await super().create_streaming_response(request, stream, sub_response, headers)  # type: ignore[misc,no-any-return]
        return BoundedStreamingResponse(
            stream,
            status_code=sub_response.status_code or 200,
            headers={**sub_response.headers, **headers},
            write_timeout=self.runtime.settings.slow_consumer_timeout,
        )


class HTTPOperation:
    """One subscription answered over an HTTP response; calling it gives the frames."""

    def __init__(
        self,
        results: AsyncIterator[Any],
        transport: HTTPStreamTransport,
        encode: Encode,
        process: Process,
        principal: Principal | None,
        runtime: Runtime,
    ) -> None:
        self._results = results
        self._transport = transport
        self._encode = encode
        self._process = process
        self._principal = principal
        self._runtime = runtime
        self._draining = asyncio.Event()
        self._ended = asyncio.Event()
        self._step: asyncio.Future[Any] | None = None

    def __call__(self) -> AsyncGenerator[str, None]:
        return self._frames()

    async def drain(self) -> None:
        """Complete the operation (its cursor flushed), as a shutdown does for sockets."""
        self._draining.set()
        await self._ended.wait()

    def slow_consumer_frames(self) -> str:
        """What a stalled stream is told, if it still reads at all."""
        error = error_result(ErrorCode.SLOW_CONSUMER, closes.SLOW_CONSUMER.reason)
        return self._transport.encode_next(error, self._encode) + self._transport.encode_complete()

    async def _frames(self) -> AsyncGenerator[str, None]:
        counters = None
        if self._principal is not None and self._runtime.hub is not None:
            counters = self._runtime.hub.counters.tenant(self._principal.tenant_id)
            counters.connections += 1
        self._runtime.connections.add(self)
        drained = asyncio.ensure_future(self._draining.wait())
        try:
            if self._transport.send_initial_heartbeat:
                yield self._transport.heartbeat_message(self._encode)
            async with aclosing(self._result_frames(drained)) as frames:
                async for frame in frames:
                    yield frame
            await self._close_results()  # cursor flushed or group removed before `complete`
            yield self._transport.encode_complete()
        finally:
            drained.cancel()
            with anyio.CancelScope(shield=True):  # a client disconnect cancels us; cleanup must finish
                await self._close_results()
            if counters is not None:
                counters.connections -= 1
            self._runtime.connections.discard(self)
            self._ended.set()

    async def _result_frames(self, drained: asyncio.Future[Any]) -> AsyncGenerator[str, None]:
        while True:
            # Asked for only now that the previous frame was written: the
            # resolver acknowledges an entry when it is asked for the next one.
            self._step = asyncio.ensure_future(anext(self._results, _END))
            wake = await self._wait(self._step, drained)
            while wake is _Wake.HEARTBEAT:
                yield self._transport.heartbeat_message(self._encode)
                wake = await self._wait(self._step, drained)
            if wake is _Wake.EXPIRY:
                await self._close_results()
                yield self._transport.encode_next(error_result(ErrorCode.UNAUTHENTICATED, closes.TOKEN_EXPIRED.reason), self._encode)
                return
            if wake is _Wake.DRAIN:
                return
            value = self._step.result()
            self._step = None
            if value is _END:
                return
            yield self._transport.encode_next(await self._process(value), self._encode)

    async def _wait(self, step: asyncio.Future[Any], drained: asyncio.Future[Any]) -> _Wake:
        timeout = self._transport.heartbeat_interval
        expires_at = None if self._principal is None else self._principal.expires_at
        if expires_at is not None:
            timeout = max(0.0, min(timeout, expires_at - time.time()))
        done, _ = await asyncio.wait((step, drained), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if step in done:
            return _Wake.RESULT
        if drained in done:
            return _Wake.DRAIN
        if expires_at is not None and time.time() >= expires_at:
            return _Wake.EXPIRY
        return _Wake.HEARTBEAT

    async def _close_results(self) -> None:
        """End the subscription: its resolver releases the group whatever way we got here."""
        step, self._step = self._step, None
        if step is not None:
            step.cancel()  # raised inside the resolver chain, which closes as it unwinds
            with suppress(asyncio.CancelledError, Exception):
                await step
        aclose = getattr(self._results, "aclose", None)
        if aclose is not None:
            await aclose()


class BoundedStreamingResponse(StreamingResponse):
    """Writes an operation's frames, each within `write_timeout`, and closes the
    operation as soon as the response ends (not when it is garbage collected)."""

    def __init__(
        self, operation: HTTPOperation, *, status_code: int, headers: Mapping[str, str], write_timeout: float
    ) -> None:
        self.frames = operation()
        super().__init__(self.frames, status_code=status_code, headers=headers)
        self.operation = operation
        self.write_timeout = write_timeout

    async def stream_response(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        async with aclosing(self.frames) as frames:
            async for frame in frames:
                try:
                    async with asyncio.timeout(self.write_timeout):
                        await send({"type": "http.response.body", "body": frame.encode(), "more_body": True})
                except TimeoutError:
                    break  # the frame was not written: its entry stays unacknowledged
            else:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
        logger.info("ending an HTTP subscription whose client stopped reading")
        with suppress(TimeoutError, OSError):
            async with asyncio.timeout(FINAL_WRITE_TIMEOUT):
                last_words = self.operation.slow_consumer_frames().encode()
                await send({"type": "http.response.body", "body": last_words, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})


__all__ = ["SUBSCRIPTION_PROTOCOLS", "BoundedStreamingResponse", "HTTPOperation", "HTTPSubscriptions"]
