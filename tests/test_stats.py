"""The stats query: own tenant for ordinary tokens, every tenant for admins."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import redis

from helpers import (
    EVENTS_QUERY,
    STATS_QUERY,
    GatewayServer,
    connect,
    make_token,
    new_tenant,
    publish,
    wait_until,
)

pytestmark = pytest.mark.anyio


async def _stats(gateway: GatewayServer, token: str) -> dict[str, object]:
    async with httpx.AsyncClient() as http:
        response = await http.post(gateway.http_url, json={"query": STATS_QUERY}, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    return dict(response.json()["data"]["stats"])


async def test_stats_show_the_callers_tenant_and_admins_see_every_tenant(
    make_gateway: object, redis_client: redis.Redis
) -> None:
    gateway: GatewayServer = make_gateway()  # type: ignore[operator]
    mine, theirs = new_tenant(), new_tenant()
    async with connect(gateway.ws_url, token=make_token(mine)) as client, connect(
        gateway.ws_url, token=make_token(theirs)
    ) as other:
        await client.subscribe("1", EVENTS_QUERY)
        await client.subscribe("2", EVENTS_QUERY)
        await other.subscribe("1", EVENTS_QUERY)
        await wait_until(lambda: gateway.hub.counters.tenant(mine).subscriptions == 2)
        await wait_until(lambda: gateway.hub.counters.tenant(theirs).subscriptions == 1)
        publish(redis_client, mine, "order_created", {})
        await client.collect_by_id({"1": 1, "2": 1})
        await wait_until(lambda: gateway.hub.counters.tenant(mine).delivered == 2)

        own = await _stats(gateway, make_token(mine))
        assert {k: own[k] for k in ("connections", "subscriptions", "eventsDelivered", "pending", "deadLettered")} == {
            "connections": 1, "subscriptions": 2, "eventsDelivered": 2, "pending": 0, "deadLettered": 0,
        }
        assert [t["tenantId"] for t in own["tenants"]] == [mine]  # type: ignore[index, union-attr]
        assert own["redisAvailable"] is True

        admin = await _stats(gateway, make_token("ops", roles=["admin"]))
        by_tenant = {t["tenantId"]: t for t in admin["tenants"]}  # type: ignore[union-attr]
        assert by_tenant[mine]["subscriptions"] == 2 and by_tenant[theirs]["subscriptions"] == 1
        assert by_tenant[mine]["connections"] == by_tenant[theirs]["connections"] == 1


async def test_stats_sum_every_gateway_process(make_gateway: object, redis_client: redis.Redis, tenant: str) -> None:
    first: GatewayServer = make_gateway(orphan_timeout=0.6)  # type: ignore[operator]
    second: GatewayServer = make_gateway(orphan_timeout=0.6)  # type: ignore[operator]
    token = make_token(tenant)
    async with connect(first.ws_url, token=token) as a, connect(second.ws_url, token=token) as b:
        await a.subscribe("1", EVENTS_QUERY)
        await b.subscribe("1", EVENTS_QUERY)
        await b.subscribe("2", EVENTS_QUERY)
        await wait_until(lambda: first.hub.counters.tenant(tenant).subscriptions == 1)
        await wait_until(lambda: second.hub.counters.tenant(tenant).subscriptions == 2)
        publish(redis_client, tenant, "order_created", {})
        await a.collect("1", "events", 1)
        await b.collect_by_id({"1": 1, "2": 1})

        async def summed() -> dict[str, object]:
            return await _stats(first, token)

        # Each process publishes its figures on its own beat, and counts a delivery once the
        # frame was written: wait for all three figures, not for the first to arrive.
        expected = {"connections": 2, "subscriptions": 3, "eventsDelivered": 3}
        deadline = 50
        while (figures := _figures(await summed())) != expected and deadline:
            deadline -= 1
            await asyncio.sleep(0.1)
        assert figures == expected


def _figures(stats: dict[str, object]) -> dict[str, object]:
    return {k: stats[k] for k in ("connections", "subscriptions", "eventsDelivered")}
