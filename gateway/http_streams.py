"""Subscriptions without WebSockets: GraphQL over SSE and Apollo's multipart HTTP.

Strawberry parses these requests and runs the same resolvers as over a
WebSocket; the router authenticates them like any HTTP request (401 without a
valid token). What this module changes is how results become response
frames. Strawberry merges results and heartbeats through a queue, reading the
next result while the previous frame still waits to be written, which would
acknowledge an entry before it reached the socket. Here, as on a WebSocket, a
result is asked for only after the previous frame was written (the response's
`send` returned), heartbeats fill the pauses, and:

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
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from contextlib import suppress
from typing import Any

import anyio
from starlette.requests import Request
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

from resolvers.context import GatewayContext, Principal
from schema.errors import ErrorCode

from .runtime import Runtime

# Every transport /graphql speaks; the two HTTP ones are on by default in no Strawberry view.
SUBSCRIPTION_PROTOCOLS = (
    GRAPHQL_TRANSPORT_WS_PROTOCOL,
    GRAPHQL_WS_PROTOCOL,
    GRAPHQL_SSE_PROTOCOL,
    MULTIPART_SUBSCRIPTION_PROTOCOL,
)
TOKEN_EXPIRED: GraphQLHTTPResponse = {
    "data": None,
    "errors": [{"message": "Token expired", "extensions": {"code": ErrorCode.UNAUTHENTICATED.value}}],
}
JSON_MEDIA_TYPES = frozenset({"application/json", "application/graphql-response+json", "application/graphql+json"})
_END = object()
Encode = Callable[[object], str]


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
    stream_transport_classes_by_protocol = {
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

    async def execute_operation(self, **kwargs: Any) -> Any:
        request, context = kwargs["request"], kwargs["context"]
        if isinstance(request, Request) and isinstance(context, GatewayContext):
            request.state.principal = context.principal  # for the stream's expiry and accounting
        return await super().execute_operation(**kwargs)  # type: ignore[misc]

    def _stream_result(self, request: Any, result: Any, transport: HTTPStreamTransport) -> AsyncTextStream:
        """Overrides Strawberry's (which reads one result ahead of the socket)."""
        principal: Principal | None = getattr(request.state, "principal", None)

        async def process(value: Any) -> Any:
            return await self.process_result(request, value)  # type: ignore[attr-defined]

        operation = HTTPOperation(result, transport, self.encode_json_string, process, principal)  # type: ignore[attr-defined]
        return lambda: operation.frames(self.runtime)


class HTTPOperation:
    """One subscription answered over an HTTP response; drained like a WebSocket."""

    def __init__(
        self,
        results: AsyncIterator[Any],
        transport: HTTPStreamTransport,
        encode: Encode,
        process: Callable[[Any], Any],
        principal: Principal | None,
    ) -> None:
        self._results = results
        self._transport = transport
        self._encode = encode
        self._process = process
        self._principal = principal
        self._draining = asyncio.Event()
        self._ended = asyncio.Event()
        self._step: asyncio.Future[Any] | None = None

    async def drain(self) -> None:
        """Complete the operation (its cursor flushed), as a shutdown does for sockets."""
        self._draining.set()
        await self._ended.wait()

    async def frames(self, runtime: Runtime) -> AsyncGenerator[str, None]:
        runtime.connections.add(self)
        counters = self._tenant_counters(runtime)
        if counters is not None:
            counters.connections += 1
        drained = asyncio.ensure_future(self._draining.wait())
        try:
            if self._transport.send_initial_heartbeat:
                yield self._transport.heartbeat_message(self._encode)
            async for frame in self._result_frames(drained):
                yield frame
            await self._close_results()  # cursor flushed or group removed before `complete`
            yield self._transport.encode_complete()
        finally:
            drained.cancel()
            with anyio.CancelScope(shield=True):  # a client disconnect cancels us; cleanup must finish
                await self._close_results()
            if counters is not None:
                counters.connections -= 1
            runtime.connections.discard(self)
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
                yield self._transport.encode_next(TOKEN_EXPIRED, self._encode)
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

    def _tenant_counters(self, runtime: Runtime) -> Any:
        if self._principal is None or runtime.hub is None:
            return None
        return runtime.hub.counters.tenant(self._principal.tenant_id)


__all__ = ["SUBSCRIPTION_PROTOCOLS", "HTTPOperation", "HTTPSubscriptions"]
