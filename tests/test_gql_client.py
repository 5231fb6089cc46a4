"""The gateway with gql, Python's GraphQL client: both WebSocket subprotocols, and HTTP."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis
import websockets
from gql import Client, GraphQLRequest
from gql.transport.exceptions import TransportConnectionFailed, TransportServerError
from gql.transport.httpx import HTTPXAsyncTransport
from gql.transport.websockets import WebsocketsTransport

from helpers import (
    EVENTS_QUERY,
    ORDERS_QUERY,
    GatewayServer,
    groups,
    make_token,
    publish,
    wait_until,
)

pytestmark = pytest.mark.anyio
SUBPROTOCOLS = [WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL, WebsocketsTransport.APOLLO_SUBPROTOCOL]


def ws_transport(gateway: GatewayServer, subprotocol: str, token: str) -> WebsocketsTransport:
    return WebsocketsTransport(
        url=gateway.ws_url, init_payload={"authorization": f"Bearer {token}"}, subprotocols=[subprotocol]
    )


async def take(session: Any, request: GraphQLRequest, field: str, count: int) -> list[dict[str, Any]]:
    """The first `count` results of a subscription, which then ends (gql sends complete/stop)."""
    received: list[dict[str, Any]] = []
    async for data in session.subscribe(request):
        received.append(data[field])
        if len(received) == count:
            break
    return received


@pytest.mark.parametrize("subprotocol", SUBPROTOCOLS)
async def test_gql_gets_every_event_and_the_order_events_over_each_subprotocol(
    subprotocol: str, gateway: GatewayServer, redis_client: redis.Redis, tenant: str
) -> None:
    async with Client(transport=ws_transport(gateway, subprotocol, make_token(tenant))) as session:
        events = asyncio.create_task(take(session, GraphQLRequest(EVENTS_QUERY), "events", 3))
        orders = asyncio.create_task(
            take(session, GraphQLRequest(ORDERS_QUERY, variable_values={"orderId": "o-1"}), "orderEvents", 2)
        )
        await wait_until(lambda: len(groups(redis_client, tenant)) == 2)

        created = publish(redis_client, tenant, "order_created", {"order_id": "o-1", "status": "pending"})
        tool = publish(redis_client, tenant, "tool_call", {"tool": "search"})
        paid = publish(redis_client, tenant, "order_updated", {"order_id": "o-1", "status": "paid"})

        received = await asyncio.wait_for(events, 10)
        assert [e["id"] for e in received] == [created, tool, paid]
        assert [e["payload"] for e in received] == [
            {"order_id": "o-1", "status": "pending"}, {"tool": "search"}, {"order_id": "o-1", "status": "paid"}
        ]
        order_events = await asyncio.wait_for(orders, 10)
        assert [(e["id"], e["status"]) for e in order_events] == [(created, "pending"), (paid, "paid")]
        await wait_until(lambda: groups(redis_client, tenant) == [])  # both ended, the socket still open


async def test_gql_over_graphql_transport_ws_fails_to_connect_with_the_4403_close(
    gateway: GatewayServer, redis_client: redis.Redis, tenant: str
) -> None:
    transport = ws_transport(gateway, WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL, make_token(tenant, ttl=-60))
    with pytest.raises(TransportConnectionFailed) as failure:
        async with Client(transport=transport) as session:
            await take(session, GraphQLRequest(EVENTS_QUERY), "events", 1)
    closed = failure.value.__cause__
    assert isinstance(closed, websockets.ConnectionClosed) and closed.rcvd is not None
    assert (closed.rcvd.code, closed.rcvd.reason) == (4403, "Forbidden")
    assert groups(redis_client, tenant) == []


async def test_gql_over_legacy_graphql_ws_fails_to_connect_with_the_connection_error(
    gateway: GatewayServer, redis_client: redis.Redis, tenant: str
) -> None:
    transport = ws_transport(gateway, WebsocketsTransport.APOLLO_SUBPROTOCOL, make_token(tenant, ttl=-60))
    with pytest.raises(TransportServerError, match="Forbidden"):
        async with Client(transport=transport) as session:
            await take(session, GraphQLRequest(EVENTS_QUERY), "events", 1)
    assert groups(redis_client, tenant) == []


async def test_gql_over_http_runs_stats_with_a_token_and_gets_401_without(
    gateway: GatewayServer, tenant: str
) -> None:
    stats = GraphQLRequest("{ stats { connections subscriptions } }")
    authorized = HTTPXAsyncTransport(url=gateway.http_url, headers={"authorization": f"Bearer {make_token(tenant)}"})
    async with Client(transport=authorized) as session:
        assert await session.execute(stats) == {"stats": {"connections": 0, "subscriptions": 0}}

    with pytest.raises(TransportServerError) as failure:
        async with Client(transport=HTTPXAsyncTransport(url=gateway.http_url)) as session:
            await session.execute(stats)
    assert failure.value.code == 401
