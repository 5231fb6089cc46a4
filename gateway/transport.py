"""`/graphql`: Strawberry's router with our authentication, limits and connection hooks.

HTTP requests authenticate in the context getter (401 without a valid token);
WebSockets authenticate on `connection_init` (`on_ws_connect`), so a rejected
socket closes with 4403 (graphql-transport-ws) or gets `connection_error`
(legacy graphql-ws), as the protocols expect. The WebSocket handlers are in
`gateway.ws_handlers`.

WebSockets reach the router's view through `GraphQLWebSockets`, not through
FastAPI's route: a route resolves the context as a dependency and keeps three
AsyncExitStacks, its routing frames and its dependency cache alive for the
socket's whole life, about 12 KB per connection (40% of an idle
subscription's memory). The view does the WebSocket work itself: origin
check, subprotocol, the protocol handlers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import suppress
from datetime import timedelta
from typing import Any

import orjson
from fastapi import HTTPException
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.exceptions import ConnectionRejectionError
from strawberry.fastapi import GraphQLRouter
from strawberry.schema import BaseSchema
from strawberry.types.unset import UNSET, UnsetType

from ..resolvers.context import GatewayContext, Principal
from ..resolvers.shared import Planner
from . import closes
from .auth import AuthError, token_from_params, token_from_request
from .http_streams import SUBSCRIPTION_PROTOCOLS, HTTPSubscriptions
from .ide import graphiql_html
from .limits import ConnectionLimits, PlannerOptions
from .logs import TENANT
from .runtime import Runtime
from .ws_handlers import SOCKET_GONE, GatewayWebSocketAdapter, LegacyWSHandler, TransportWSHandler

logger = logging.getLogger(__name__)
GRAPHQL_PATH = "/graphql"


class GatewayRouter(HTTPSubscriptions, GraphQLRouter[GatewayContext, None]):
    graphql_transport_ws_handler_class = TransportWSHandler
    graphql_ws_handler_class = LegacyWSHandler
    websocket_adapter_class = GatewayWebSocketAdapter

    def __init__(self, schema: BaseSchema, runtime: Runtime, planner: PlannerOptions) -> None:
        """`planner` must carry the validation rules and token limit of `schema`'s extensions."""
        settings = runtime.settings
        super().__init__(
            schema,
            path=GRAPHQL_PATH,
            context_getter=self._context,
            graphql_ide="graphiql" if settings.graphiql else None,
            connection_init_wait_timeout=timedelta(seconds=settings.init_timeout),
            max_subscriptions_per_connection=settings.max_subscriptions_per_connection,
            allowed_origins=settings.allowed_origins,
            subscription_protocols=SUBSCRIPTION_PROTOCOLS,  # + GraphQL over SSE, multipart HTTP
            keep_alive=settings.ping_interval > 0,  # legacy graphql-ws `ka` messages
            keep_alive_interval=settings.ping_interval,
        )
        self.runtime = runtime
        self.planner = Planner(schema._schema, planner.rules, planner.max_tokens)  # type: ignore[attr-defined]
        self.connection_limits = ConnectionLimits.from_settings(settings)

    def encode_json(self, data: object) -> str:
        return orjson.dumps(data).decode()

    def decode_json(self, data: str | bytes) -> object:
        """Strict JSON (RFC 8259) for every request and message: a lone surrogate escape,
        NaN or Infinity is invalid JSON here, as it cannot be written back out."""
        return orjson.loads(data)

    @property
    def graphql_ide_html(self) -> str:
        return graphiql_html()  # assets served by the gateway, no CDN

    async def _context(self, connection: HTTPConnection) -> GatewayContext:
        context = GatewayContext(hub=self.runtime.hub, delivery=self.runtime.metrics.delivery)
        if connection.scope["type"] == "http" and _is_graphql_request(connection):
            context.principal = await self._authenticate(
                token_from_request(connection.headers, connection.query_params)
            )
        return context

    async def serve_websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A WebSocket on /graphql, straight to Strawberry's view (see the module's docstring)."""
        websocket = WebSocket(scope, receive, send)
        context = await self._context(websocket)
        context.request = websocket  # what Strawberry's FastAPI context getter would set
        await self.run(request=websocket, context=context, root_value=None)

    async def _authenticate(self, token: str | None) -> Principal:
        try:
            return await self.runtime.authenticator.authenticate(token)
        except AuthError as error:
            logger.info("HTTP request refused: %s", error.reason)
            raise HTTPException(401, "Unauthorized", headers={"WWW-Authenticate": "Bearer"}) from None

    async def on_ws_connect(self, context: GatewayContext) -> UnsetType | dict[str, object] | None:
        """Authenticate, then count the socket against the connection limits
        (gateway.limits.ConnectionRefused when over one)."""
        websocket = context.request
        assert isinstance(websocket, WebSocket)
        token = token_from_params(context.connection_params) or token_from_request(
            websocket.headers, websocket.query_params
        )
        try:
            principal = await self.runtime.authenticator.authenticate(token)
        except AuthError as error:
            logger.info("WebSocket connection refused: %s", error.reason)
            raise ConnectionRejectionError({"message": "Forbidden"}) from None
        self.connection_limits.acquire(principal)
        context.principal = principal
        context.connection_params = None  # read: the token need not stay in memory
        TENANT.set(principal.tenant_id)  # this socket's logs
        assert context.hub is not None
        context.hub.counters.tenant(principal.tenant_id).connections += 1
        if principal.expires_at is not None:  # a timer, not a task asleep for hours per socket
            delay = max(0.0, principal.expires_at - time.time())
            context.extras["expiry"] = asyncio.get_running_loop().call_later(
                delay, _close_on_expiry, websocket, principal
            )
        return UNSET  # type: ignore[no-any-return]  # Strawberry types UNSET as Any

    def on_ws_disconnect(self, context: GatewayContext) -> None:
        expiry: asyncio.TimerHandle | None = context.extras.pop("expiry", None)
        if expiry is not None:
            expiry.cancel()
        if context.principal is not None:
            self.connection_limits.release(context.principal)
            if context.hub is not None:
                context.hub.counters.tenant(context.principal.tenant_id).connections -= 1


def _close_on_expiry(websocket: WebSocket, principal: Principal) -> None:
    """The token's `exp` passed: close the socket with 4403."""
    logger.info("closing connection of tenant %s: token expired", principal.tenant_id)
    _CLOSING.add(task := asyncio.get_running_loop().create_task(_close_expired(websocket)))
    task.add_done_callback(_CLOSING.discard)


_CLOSING: set[asyncio.Task[None]] = set()  # the loop keeps only weak references to tasks


async def _close_expired(websocket: WebSocket) -> None:
    with suppress(*SOCKET_GONE):
        await websocket.close(closes.TOKEN_EXPIRED.code, closes.TOKEN_EXPIRED.reason)


class GraphQLWebSockets:
    """ASGI middleware: WebSockets on /graphql go to the router's view directly."""

    def __init__(self, app: ASGIApp, router: GatewayRouter) -> None:
        self.app = app
        self.router = router

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and scope["path"] == GRAPHQL_PATH:
            await self.router.serve_websocket(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def _is_graphql_request(connection: HTTPConnection) -> bool:
    """POSTs and GETs carrying a query; a plain GET may just want GraphiQL."""
    method = connection.scope.get("method", "GET")
    return bool(method == "POST" or "query" in connection.query_params)


__all__: list[Any] = ["GatewayRouter", "GraphQLWebSockets"]
