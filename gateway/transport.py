"""`/graphql`: Strawberry's router with our authentication, limits and connection hooks.

HTTP requests authenticate in the context getter (401 without a valid token);
WebSockets authenticate on `connection_init` (`on_ws_connect`), so a rejected
socket closes with 4403 (graphql-transport-ws) or gets `connection_error`
(legacy graphql-ws), as the protocols expect. The WebSocket handlers are in
`gateway.ws_handlers`.
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
from starlette.websockets import WebSocket
from strawberry.exceptions import ConnectionRejectionError
from strawberry.fastapi import GraphQLRouter
from strawberry.schema import BaseSchema
from strawberry.types.unset import UNSET, UnsetType

from resolvers.context import GatewayContext, Principal
from resolvers.shared import Planner

from .auth import AuthError, token_from_params, token_from_request
from .http_streams import SUBSCRIPTION_PROTOCOLS, HTTPSubscriptions
from .ide import graphiql_html
from .limits import ConnectionLimits, PlannerOptions
from .logs import TENANT
from .runtime import Runtime
from .ws_handlers import SOCKET_GONE, GatewayWebSocketAdapter, LegacyWSHandler, TransportWSHandler

logger = logging.getLogger(__name__)
TOKEN_EXPIRED_CODE = 4403
TOKEN_EXPIRED_REASON = "Token expired"


class GatewayRouter(HTTPSubscriptions, GraphQLRouter[GatewayContext, None]):
    graphql_transport_ws_handler_class = TransportWSHandler
    graphql_ws_handler_class = LegacyWSHandler
    websocket_adapter_class = GatewayWebSocketAdapter

    def __init__(self, schema: BaseSchema, runtime: Runtime, planner: PlannerOptions) -> None:
        """`planner` must carry the validation rules and token limit of `schema`'s extensions."""
        settings = runtime.settings
        super().__init__(
            schema,
            path="/graphql",
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
        TENANT.set(principal.tenant_id)  # this socket's logs
        assert context.hub is not None
        context.hub.counters.tenant(principal.tenant_id).connections += 1
        context.extras["expiry"] = asyncio.create_task(_close_on_expiry(websocket, principal))
        return UNSET

    def on_ws_disconnect(self, context: GatewayContext) -> None:
        expiry: asyncio.Task[None] | None = context.extras.pop("expiry", None)
        if expiry is not None:
            expiry.cancel()
        if context.principal is not None:
            self.connection_limits.release(context.principal)
            if context.hub is not None:
                context.hub.counters.tenant(context.principal.tenant_id).connections -= 1


async def _close_on_expiry(websocket: WebSocket, principal: Principal) -> None:
    """Close the socket with 4403 when the token's `exp` passes."""
    if principal.expires_at is None:
        return
    await asyncio.sleep(max(0.0, principal.expires_at - time.time()))
    logger.info("closing connection of tenant %s: token expired", principal.tenant_id)
    with suppress(*SOCKET_GONE):
        await websocket.close(code=TOKEN_EXPIRED_CODE, reason=TOKEN_EXPIRED_REASON)


def _is_graphql_request(connection: HTTPConnection) -> bool:
    """POSTs and GETs carrying a query; a plain GET may just want GraphiQL."""
    method = connection.scope.get("method", "GET")
    return bool(method == "POST" or "query" in connection.query_params)


__all__: list[Any] = ["GatewayRouter"]
