"""`/graphql`: Strawberry's router with our authentication and connection hooks.

HTTP requests authenticate in the context getter (401 without a valid token);
WebSockets authenticate on `connection_init` (`on_ws_connect`), so a rejected
socket closes with 4403 (graphql-transport-ws) or gets `connection_error`
(legacy graphql-ws), as the protocols expect.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import suppress
from datetime import timedelta
from typing import Any

from fastapi import HTTPException
from starlette.requests import HTTPConnection
from starlette.websockets import WebSocket
from strawberry.exceptions import ConnectionRejectionError
from strawberry.fastapi import GraphQLRouter
from strawberry.schema import BaseSchema
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
)
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler
from strawberry.types.unset import UNSET, UnsetType

from resolvers.context import GatewayContext, Principal

from .auth import AuthError, token_from_params, token_from_request
from .runtime import Runtime

logger = logging.getLogger(__name__)
TOKEN_EXPIRED_CODE = 4403
TOKEN_EXPIRED_REASON = "Token expired"


SHUTDOWN_CODE = 1001
SHUTDOWN_REASON = "Server shutting down"


class _ConnectionHooks:
    """Registers the socket for a graceful drain and tells the router when it ends."""

    view: GatewayRouter
    context: GatewayContext

    async def handle(self) -> None:
        connections = self.view.runtime.connections
        connections.add(self)
        try:
            await super().handle()  # type: ignore[misc]
        finally:
            connections.discard(self)
            self.view.on_ws_disconnect(self.context)

    async def drain(self) -> None:
        """Complete every operation (their cursors flushed), then close with 1001."""
        await self.complete_all()
        with suppress(RuntimeError, OSError):
            await self.websocket.close(code=SHUTDOWN_CODE, reason=SHUTDOWN_REASON)  # type: ignore[attr-defined]

    async def complete_all(self) -> None:
        raise NotImplementedError


class TransportWSHandler(_ConnectionHooks, BaseGraphQLTransportWSHandler[GatewayContext, None]):
    """graphql-transport-ws, with connection accounting and graceful drain."""

    async def complete_all(self) -> None:
        operations = list(self.operations.values())
        for operation in operations:
            await self.cleanup_operation(operation.id)
        for operation in operations:
            with suppress(BaseException):
                await operation.task  # type: ignore[misc]
            if not operation.completed:
                operation.completed = True
                with suppress(RuntimeError, OSError):
                    await self.send_message({"id": operation.id, "type": "complete"})


class LegacyWSHandler(_ConnectionHooks, BaseGraphQLWSHandler[GatewayContext, None]):
    """Legacy graphql-ws (subscriptions-transport-ws), with connection accounting and drain."""

    async def complete_all(self) -> None:
        await self.cleanup()  # cancelled operations send their own `complete`


class GatewayRouter(GraphQLRouter[GatewayContext, None]):
    graphql_transport_ws_handler_class = TransportWSHandler
    graphql_ws_handler_class = LegacyWSHandler

    def __init__(self, schema: BaseSchema, runtime: Runtime) -> None:
        settings = runtime.settings
        super().__init__(
            schema,
            path="/graphql",
            context_getter=self._context,
            graphql_ide="graphiql" if settings.graphiql else None,
            connection_init_wait_timeout=timedelta(seconds=settings.init_timeout),
            max_subscriptions_per_connection=settings.max_subscriptions_per_connection,
            allowed_origins=settings.allowed_origins,
        )
        self.runtime = runtime

    async def _context(self, connection: HTTPConnection) -> GatewayContext:
        context = GatewayContext(hub=self.runtime.hub)
        if connection.scope["type"] == "http" and _is_graphql_request(connection):
            context.principal = self._authenticate(
                token_from_request(connection.headers, connection.query_params)
            )
        return context

    def _authenticate(self, token: str | None) -> Principal:
        try:
            if token is None:
                raise AuthError("no token")
            return self.runtime.authenticator.verify(token)
        except AuthError as error:
            logger.info("HTTP request refused: %s", error.reason)
            raise HTTPException(401, "Unauthorized", headers={"WWW-Authenticate": "Bearer"}) from None

    async def on_ws_connect(self, context: GatewayContext) -> UnsetType | dict[str, object] | None:
        websocket = context.request
        assert isinstance(websocket, WebSocket)
        token = token_from_params(context.connection_params) or token_from_request(
            websocket.headers, websocket.query_params
        )
        try:
            if token is None:
                raise AuthError("no token")
            principal = self.runtime.authenticator.verify(token)
        except AuthError as error:
            logger.info("WebSocket connection refused: %s", error.reason)
            raise ConnectionRejectionError({"message": "Forbidden"}) from None
        context.principal = principal
        assert context.hub is not None
        context.hub.counters.tenant(principal.tenant_id).connections += 1
        context.extras["expiry"] = asyncio.create_task(_close_on_expiry(websocket, principal))
        return UNSET

    def on_ws_disconnect(self, context: GatewayContext) -> None:
        expiry: asyncio.Task[None] | None = context.extras.pop("expiry", None)
        if expiry is not None:
            expiry.cancel()
        if context.principal is not None and context.hub is not None:
            context.hub.counters.tenant(context.principal.tenant_id).connections -= 1


async def _close_on_expiry(websocket: WebSocket, principal: Principal) -> None:
    """Close the socket with 4403 when the token's `exp` passes."""
    if principal.expires_at is None:
        return
    await asyncio.sleep(max(0.0, principal.expires_at - time.time()))
    logger.info("closing connection of tenant %s: token expired", principal.tenant_id)
    with suppress(RuntimeError, OSError):
        await websocket.close(code=TOKEN_EXPIRED_CODE, reason=TOKEN_EXPIRED_REASON)


def _is_graphql_request(connection: HTTPConnection) -> bool:
    """POSTs and GETs carrying a query; a plain GET may just want GraphiQL."""
    method = connection.scope.get("method", "GET")
    return bool(method == "POST" or "query" in connection.query_params)


__all__: list[Any] = ["GatewayRouter"]
