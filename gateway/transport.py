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
from collections.abc import AsyncIterator
from contextlib import suppress
from datetime import timedelta
from typing import Any

import orjson
from fastapi import HTTPException
from graphql import GraphQLError
from starlette.requests import HTTPConnection
from starlette.websockets import WebSocket, WebSocketDisconnect
from strawberry.exceptions import ConnectionRejectionError
from strawberry.fastapi import GraphQLRouter
from strawberry.schema import BaseSchema
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
    Operation,
)
from strawberry.subscriptions.protocols.graphql_transport_ws.types import SubscribeMessage
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler
from strawberry.types.unset import UNSET, UnsetType

from resolvers.context import GatewayContext, Principal
from resolvers.shared import Planner, SharedPlan, open_shared
from schema.errors import ErrorCode, GatewayError

from .auth import AuthError, token_from_params, token_from_request
from .http_streams import SUBSCRIPTION_PROTOCOLS, HTTPSubscriptions
from .ide import graphiql_html
from .runtime import Runtime

logger = logging.getLogger(__name__)
TOKEN_EXPIRED_CODE = 4403
TOKEN_EXPIRED_REASON = "Token expired"


SHUTDOWN_CODE = 1001
SHUTDOWN_REASON = "Server shutting down"
SLOW_CONSUMER_CLOSE = 1013  # try again later
SLOW_CONSUMER_MESSAGE = "Slow consumer: the client did not read its events in time; resubscribe with 'after'"
FINAL_WRITE_TIMEOUT = 1.0


class SlowConsumerError(Exception):
    """A frame could not be written within `slow_consumer_timeout`."""


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
    """graphql-transport-ws, with connection accounting, graceful drain, and
    shared execution for the subscriptions that allow it (resolvers.shared)."""

    async def handle_subscribe(self, message: SubscribeMessage) -> None:
        payload = message["payload"]
        plan = None
        if isinstance(payload, dict):
            plan = self.view.planner.plan(payload.get("query"), payload.get("variables"), payload.get("operationName"))
        if plan is None or not self._may_start(message["id"]) or not self.connection_acknowledged:
            await super().handle_subscribe(message)  # Strawberry's path: errors, limits, close codes
            return
        operation: Operation[GatewayContext, None] = Operation(
            self, message["id"], payload["query"], payload.get("variables"), payload.get("operationName")
        )
        operation.task = asyncio.create_task(self._run_shared(operation, plan))
        operation.task.add_done_callback(self._task_done)
        self.operations[operation.id] = operation

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

    def _may_start(self, operation_id: str) -> bool:
        limit = self.max_subscriptions_per_connection
        return operation_id not in self.operations and (limit is None or len(self.operations) < limit)

    async def _run_shared(self, operation: Operation[GatewayContext, None], plan: SharedPlan) -> None:
        try:
            payloads = await open_shared(self.context, self.view.planner, plan)
        except GraphQLError as error:
            await operation.send_initial_errors([error])
            return
        try:
            await self._send_payloads(operation, payloads)
        except GraphQLError as error:
            await self._end_with(operation, error)
        except SlowConsumerError:
            await self._end_with(operation, GatewayError(ErrorCode.SLOW_CONSUMER, SLOW_CONSUMER_MESSAGE))
            return
        except (WebSocketDisconnect, RuntimeError, OSError):
            return
        except Exception as error:  # a bug: log it, end the operation cleanly
            await self.handle_task_exception(error)
        finally:
            await payloads.aclose()
        await operation.send_operation_message({"id": operation.id, "type": "complete"})

    async def _send_payloads(self, operation: Operation[GatewayContext, None], payloads: AsyncIterator[str]) -> None:
        """Write each `next` frame; the cursor moves when the next payload is asked for."""
        head = f'{{"id":{orjson.dumps(operation.id).decode()},"type":"next","payload":'
        websocket = self.websocket.ws  # type: ignore[attr-defined]
        timeout = self.view.runtime.settings.slow_consumer_timeout
        async for payload in payloads:
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a
                # cancellation that lands as the write completes, and the drain waits forever.
                async with asyncio.timeout(timeout):
                    await websocket.send_text(f"{head}{payload}}}")
            except TimeoutError:
                raise SlowConsumerError from None

    async def _end_with(self, operation: Operation[GatewayContext, None], error: GraphQLError) -> None:
        """A `next` with the error, then `complete`; a client that reads nothing gets its socket closed."""
        try:
            async with asyncio.timeout(FINAL_WRITE_TIMEOUT):
                await operation.send_operation_message(
                    {"id": operation.id, "type": "next", "payload": {"data": None, "errors": [error.formatted]}}
                )
                await operation.send_operation_message({"id": operation.id, "type": "complete"})
        except TimeoutError:
            logger.info("closing a connection that stopped reading")
            with suppress(RuntimeError, OSError, TimeoutError):
                async with asyncio.timeout(FINAL_WRITE_TIMEOUT):
                    await self.websocket.close(code=SLOW_CONSUMER_CLOSE, reason=SLOW_CONSUMER_MESSAGE)


class LegacyWSHandler(_ConnectionHooks, BaseGraphQLWSHandler[GatewayContext, None]):
    """Legacy graphql-ws (subscriptions-transport-ws), with connection accounting and drain."""

    async def complete_all(self) -> None:
        await self.cleanup()  # cancelled operations send their own `complete`


class GatewayRouter(HTTPSubscriptions, GraphQLRouter[GatewayContext, None]):
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
            subscription_protocols=SUBSCRIPTION_PROTOCOLS,  # + GraphQL over SSE, multipart HTTP
        )
        self.runtime = runtime
        self.planner = Planner(schema._schema)  # type: ignore[attr-defined]

    def encode_json(self, data: object) -> str:
        return orjson.dumps(data).decode()

    @property
    def graphql_ide_html(self) -> str:
        return graphiql_html()  # assets served by the gateway, no CDN

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
