"""Subscribers with the same operation, variables and tenant share one execution per event."""

from __future__ import annotations

import contextlib

import pytest
import redis
import transports
from transports import BY_NAME, EVENT_TYPE

from helpers import LEGACY_WS, GatewayServer, connect, make_token, publish, wait_until

pytestmark = pytest.mark.anyio
QUERY = "subscription($types: [String!]) { events(types: $types) { id type payload } }"
RICH_QUERY = """
subscription Rich($withPayload: Boolean!) {
  e: events(types: ["order_*"]) {
    __typename
    cursor: id
    ...Parts
    payload @include(if: $withPayload)
  }
}
fragment Parts on Event { type tenantId occurredAt eventId }
"""
# The same, its root field in a fragment, which the planner leaves to Strawberry.
RICH_QUERY_EXECUTED = (
    RICH_QUERY.replace("{\n  e: events", "{ ...Root }\nfragment Root on Subscription {\n  e: events", 1)
)


def cohorts(gateway: GatewayServer, tenant: str) -> list[object]:
    return [c for key, c in gateway.app.state.planner._cohorts.items() if key[0] == tenant]


async def test_subscribers_with_the_same_operation_share_one_execution_per_event(
    gateway: GatewayServer, redis_client: redis.Redis, tenant: str
) -> None:
    """Either WebSocket protocol: the third subscriber speaks legacy graphql-ws."""
    token = make_token(tenant)
    async with connect(gateway.ws_url, token=token) as a, connect(gateway.ws_url, token=token) as b, connect(
        gateway.ws_url, LEGACY_WS, token=token
    ) as c:
        for client in (a, b, c):
            await client.subscribe("s", QUERY, {"types": ["order_*"]})
        await c.subscribe("other", QUERY, {"types": ["tool_call"]})
        await wait_until(lambda: gateway.hub.counters.tenant(tenant).subscriptions == 4)
        ids = [publish(redis_client, tenant, "order_created", {"n": n}) for n in range(5)]
        for client in (a, b):
            assert [e["id"] for e in await client.collect("s", "events", 5)] == ids
        assert [e["id"] for e in await c.collect("s", "events", 5)] == ids
        shared = {c.plan.arguments["types"][0]: c for c in cohorts(gateway, tenant)}  # type: ignore[attr-defined]
        assert shared["order_*"].members == 3 and shared["tool_call"].members == 1
        assert shared["order_*"].renders == 5
    await wait_until(lambda: cohorts(gateway, tenant) == [])


async def test_shared_frames_equal_what_per_subscriber_execution_sends(
    gateway: GatewayServer, redis_client: redis.Redis, tenant: str
) -> None:
    token = make_token(tenant)
    async with connect(gateway.ws_url, token=token) as shared, connect(gateway.ws_url, token=token) as executed:
        await shared.subscribe("1", RICH_QUERY, {"withPayload": True})
        await executed.subscribe("1", RICH_QUERY_EXECUTED, {"withPayload": True})
        await wait_until(lambda: gateway.hub.counters.tenant(tenant).subscriptions == 2)
        assert len(cohorts(gateway, tenant)) == 1  # the second runs through Strawberry
        publish(redis_client, tenant, "order_created", {"order_id": "o1", "nested": {"a": [1, 2]}}, event_id="e-7")
        via_cohort = (await shared.recv())["payload"]
        via_strawberry = (await executed.recv())["payload"]
    assert via_cohort == via_strawberry
    assert set(via_cohort["data"]["e"]) == {"__typename", "cursor", "type", "tenantId", "occurredAt", "eventId", "payload"}
    await wait_until(lambda: cohorts(gateway, tenant) == [])


PLAIN_QUERIES = {
    "events": "subscription { events { __typename id kind: type tenantId eventId occurredAt payload id } }",
    "orderEvents": "subscription { o: orderEvents { id type orderId status occurredAt payload __typename } }",
}


@pytest.mark.parametrize("root", list(PLAIN_QUERIES))
async def test_plain_selections_render_without_execution_exactly_as_graphql_core_would(
    gateway: GatewayServer, redis_client: redis.Redis, tenant: str, root: str
) -> None:
    token = make_token(tenant)
    async with connect(gateway.ws_url, token=token) as shared, connect(gateway.ws_url, LEGACY_WS, token=token) as legacy:
        await shared.subscribe("1", PLAIN_QUERIES[root])
        await legacy.subscribe("1", PLAIN_QUERIES[root])
        await wait_until(lambda: gateway.hub.counters.tenant(tenant).subscriptions == 2)
        assert all(c.plan.project is not None for c in cohorts(gateway, tenant))  # type: ignore[attr-defined]
        publish(redis_client, tenant, "order_updated", {"order_id": 42, "status": 7, "x": [1.5, None]}, event_id="e-1")
        publish(redis_client, tenant, "order_created", {"order_id": "o-2"}, occurred_at="2026-01-02T03:04:05")
        for _ in range(2):
            assert (await shared.recv())["payload"] == (await legacy.recv())["payload"]


async def test_every_graphql_transport_joins_the_same_cohort(
    gateway: GatewayServer, redis_client: redis.Redis, tenant: str
) -> None:
    """graphql-transport-ws, legacy graphql-ws, GraphQL over SSE and multipart HTTP: one
    document, one cohort, one rendering per event for all four subscribers."""
    token = make_token(tenant)
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(transports.connect(BY_NAME[name], gateway, redis_client, tenant, token))
            for name in ("graphql-transport-ws", "graphql-ws", "graphql-sse", "multipart")
        ]  # each proved live by an event of its own: 4 renderings
        (cohort,) = cohorts(gateway, tenant)
        assert cohort.members == 4  # type: ignore[attr-defined]
        ids = [publish(redis_client, tenant, EVENT_TYPE, {"n": n}) for n in range(3)]
        for index, client in enumerate(clients):  # the later ones' proofs, then the three
            later = [await client.event() for _ in range(len(clients) - 1 - index)]
            assert [await client.event() for _ in ids] == ids, later
        assert cohort.renders == 4 + 3  # type: ignore[attr-defined]
    await wait_until(lambda: cohorts(gateway, tenant) == [])
