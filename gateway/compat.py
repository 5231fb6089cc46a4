"""Seed compatibility: the old `/ws`, `/ws/orders`, `/ws/stats` and `/stream*` endpoints.

Clients written before the GraphQL gateway (kitchen screens, dashboards,
scripts) keep working while they migrate. The adapters are thin: the hub
reads, fans out and acknowledges; `resolvers.filters` decides which types a
connection gets; `resolve_stats` computes the figures. An adapter only
authenticates, speaks its wire format, and writes each entry before asking
the hub for the next one, which is what acknowledges it. The wire formats are
described in the README ("Migrating from the /ws protocol").
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket

from ..resolvers.context import Principal
from .auth import AuthError
from .compat_base import Message, authenticate, hub_of, last_event_id, runtime_of, stats_json
from .compat_sse import SSE_ALL, SSE_NOTIFICATIONS, SSE_ORDERS, EventStream, SseChannel
from .compat_ws import WS_EVENTS, WS_ORDERS, serve_socket
from .runtime import Runtime

logger = logging.getLogger(__name__)
router = APIRouter(include_in_schema=False)


@router.websocket("/ws")
async def ws_events(websocket: WebSocket) -> None:
    """Every event of the caller's tenant, narrowed by the client's `subscribe` messages."""
    await serve_socket(websocket, WS_EVENTS, runtime_of(websocket).settings.ws_heartbeat)


@router.websocket("/ws/orders")
async def ws_orders(websocket: WebSocket) -> None:
    """Only `order_*` events, whatever the client subscribes to."""
    await serve_socket(websocket, WS_ORDERS, runtime_of(websocket).settings.ws_orders_heartbeat)


@router.get("/ws/stats")
async def ws_stats(request: Request) -> Message:
    """The GraphQL `stats` figures over plain HTTP, for the old dashboards."""
    runtime = runtime_of(request)
    return await stats_json(hub_of(runtime), await _http_principal(runtime, request))


@router.get("/stream")
async def stream_all(request: Request) -> Response:
    return await _event_stream(request, SSE_ALL)


@router.get("/stream/orders")
async def stream_orders(request: Request) -> Response:
    return await _event_stream(request, SSE_ORDERS)


@router.get("/stream/notifications")
async def stream_notifications(request: Request) -> Response:
    return await _event_stream(request, SSE_NOTIFICATIONS)


async def _event_stream(request: Request, channel: SseChannel) -> Response:
    runtime = runtime_of(request)
    principal = await _http_principal(runtime, request)
    return EventStream(runtime, principal, channel, last_event_id(request))


async def _http_principal(runtime: Runtime, request: Request) -> Principal:
    """401 without a valid token, exactly as `/graphql` answers over HTTP."""
    try:
        return await authenticate(runtime, request)
    except AuthError as error:
        logger.info("%s refused: %s", request.url.path, error.reason)
        raise HTTPException(401, "Unauthorized", headers={"WWW-Authenticate": "Bearer"}) from None
