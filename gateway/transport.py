"""`/graphql`: Strawberry's router with our authentication, limits and connection hooks.

HTTP requests authenticate in the context getter (401 without a valid token);
WebSockets authenticate on `connection_init` (`open_socket`), so a rejected
socket closes with 4403 (graphql-transport-ws) or gets `connection_error`
(legacy graphql-ws), as the protocols expect; an accepted one opens its
`gateway.connection.Connection` there. The gateway runs both WebSocket
protocols itself (`gateway.sockets`).

WebSockets reach `gateway.sockets` from `GatewayApp` itself, before FastAPI's
middleware and routing: a route resolves the context as a dependency and keeps
three AsyncExitStacks, its routing frames and its dependency cache alive for the
socket's whole life (about 12 KB per connection), and each middleware (errors,
telemetry, the body limit) keeps a suspended call and its wrappers of `receive`
and `send` (about 2 KB more).
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, HTTPException
from starlette.requests import HTTPConnection
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.exceptions import ConnectionRejectionError
from strawberry.fastapi import GraphQLRouter
from strawberry.schema import BaseSchema

from ..resolvers.context import GatewayContext, Principal
from ..resolvers.shared import Planner
from . import sockets
from .auth import AuthError, token_from_params, token_from_request
from .connection import Connection
from .http_streams import SUBSCRIPTION_PROTOCOLS, HTTPSubscriptions
from .ide import graphiql_html
from .limits import PlannerOptions
from .logs import TENANT
from .runtime import Runtime

logger = logging.getLogger(__name__)
GRAPHQL_PATH = "/graphql"


class GatewayRouter(HTTPSubscriptions, GraphQLRouter[GatewayContext, None]):
    def __init__(self, schema: BaseSchema, runtime: Runtime, planner: PlannerOptions) -> None:
        """`planner` must carry the validation rules and token limit of `schema`'s extensions."""
        settings = runtime.settings
        super().__init__(
            schema,
            path=GRAPHQL_PATH,
            context_getter=self._context,
            graphql_ide="graphiql" if settings.graphiql else None,
            subscription_protocols=SUBSCRIPTION_PROTOCOLS,  # + GraphQL over SSE, multipart HTTP
        )
        self.runtime = runtime
        self.planner = Planner(schema._schema, planner.rules, planner.max_tokens)  # type: ignore[attr-defined]

    def encode_json(self, data: object) -> str:
        return orjson.dumps(data).decode()

    def decode_json(self, data: str | bytes) -> object:
        """Strict JSON (RFC 8259) for every request and message: a lone surrogate escape,
        NaN or Infinity is invalid JSON here, as it cannot be written back out."""
        return orjson.loads(data)

    @property
    def graphql_ide_html(self) -> str:
        return graphiql_html()  # assets served by the gateway, no CDN

    def _new_context(self) -> GatewayContext:
        runtime = self.runtime
        return GatewayContext(hub=runtime.hub, delivery=runtime.metrics.delivery, live=runtime.live)

    async def _context(self, connection: HTTPConnection) -> GatewayContext:
        context = self._new_context()
        if connection.scope["type"] == "http" and _is_graphql_request(connection):
            context.principal = await self._authenticate(
                token_from_request(connection.headers, connection.query_params)
            )
        return context

    def socket_context(self, websocket: WebSocket) -> GatewayContext:
        """A WebSocket's context: its principal is set by `open_socket`."""
        context = self._new_context()
        context.request = websocket
        return context

    async def _authenticate(self, token: str | None) -> Principal:
        try:
            return await self.runtime.authenticate(token)
        except AuthError as error:
            logger.info("HTTP request refused: %s", error.reason)
            raise HTTPException(401, "Unauthorized", headers={"WWW-Authenticate": "Bearer"}) from None

    async def open_socket(self, context: GatewayContext, connection: Connection) -> None:
        """On `connection_init`: authenticate (ConnectionRejectionError), then open the socket's
        connection (gateway.limits.ConnectionRefused when over a connection limit)."""
        websocket = context.request
        assert isinstance(websocket, WebSocket)
        token = token_from_params(context.connection_params) or token_from_request(
            websocket.headers, websocket.query_params
        )
        try:
            principal = await self.runtime.authenticate(token)
        except AuthError as error:
            logger.info("WebSocket connection refused: %s", error.reason)
            raise ConnectionRejectionError({"message": "Forbidden"}) from None
        connection.open(principal)
        context.principal = principal
        context.connection_params = None  # read: the token need not stay in memory
        TENANT.set(principal.tenant_id)  # this socket's logs


class GatewayApp(FastAPI):
    """FastAPI, except that WebSockets on /graphql go to `gateway.sockets` directly."""

    graphql_router: GatewayRouter | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        router = self.graphql_router
        if router is not None and scope["type"] == "websocket" and scope["path"] == GRAPHQL_PATH:
            socket = await sockets.accept(router, scope, receive, send)
            if socket is not None:
                await socket.run()
        else:
            await super().__call__(scope, receive, send)


def _is_graphql_request(connection: HTTPConnection) -> bool:
    """POSTs and GETs carrying a query; a plain GET may just want GraphiQL."""
    method = connection.scope.get("method", "GET")
    return bool(method == "POST" or "query" in connection.query_params)


__all__: list[Any] = ["GatewayApp", "GatewayRouter"]
