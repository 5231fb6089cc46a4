"""Fan-out from one shared reader: Redis connections stay bounded."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import pytest
import redis

from helpers import EVENTS_QUERY, GatewayServer, connect, make_token, new_tenant, publish, wait_until

pytestmark = pytest.mark.anyio
SUBSCRIPTIONS = 200
TENANTS = 20


def gateway_connections(client: redis.Redis, process_id: str) -> int:
    return sum(1 for c in client.client_list() if c.get("name", "").startswith(f"ragline-gateway:{process_id}"))


async def test_200_subscriptions_use_no_more_than_10_redis_connections(
    make_gateway: object, redis_client: redis.Redis
) -> None:
    gateway: GatewayServer = make_gateway()  # type: ignore[operator]
    tenants = [new_tenant() for _ in range(TENANTS)]
    async with AsyncExitStack() as stack:
        clients = []
        for i in range(SUBSCRIPTIONS // 10):
            client = await stack.enter_async_context(connect(gateway.ws_url, token=make_token(tenants[i % TENANTS])))
            for op in range(10):
                await client.subscribe(str(op), EVENTS_QUERY)
            clients.append(client)
        await wait_until(lambda: sum(s.subscriptions for s in gateway.hub.counters.tenants().values()) == SUBSCRIPTIONS)
        ids = {t: publish(redis_client, t, "order_created", {"t": t}) for t in tenants}
        received = await asyncio.gather(*(c.collect_by_id({str(op): 1 for op in range(10)}) for c in clients))
        for i, by_op in enumerate(received):
            assert {events[0]["id"] for events in by_op.values()} == {ids[tenants[i % TENANTS]]}
        process_id = gateway.app.state.runtime.process_id
        assert 1 <= gateway_connections(redis_client, process_id) <= 10
