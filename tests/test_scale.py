"""Fan-out from one shared reader: Redis connections stay bounded."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from typing import Any

import pytest
import redis
import redis.cluster

import ragline.streaming.hub
from helpers import (
    EVENTS_QUERY,
    GatewayServer,
    connect,
    groups,
    make_token,
    new_tenant,
    publish,
    wait_until,
)

pytestmark = pytest.mark.anyio
SUBSCRIPTIONS = 200
TENANTS = 20


def gateway_connections(client: redis.Redis, process_id: str) -> tuple[list[int], int]:
    """Connections named after the gateway process on each Redis node (one figure for one
    server), and the bound: 6 for commands plus the reader's; on a cluster, per node, the
    reader's and the notifications' connection, and the idle one each of the two cluster
    clients keeps to a node it asked for the slot map."""
    nodes: list[Any] = [client]
    if isinstance(client, redis.cluster.RedisCluster):
        nodes = [client.get_redis_connection(node) for node in client.get_primaries()]
    name = f"ragline-gateway:{process_id}"
    counts = [sum(1 for c in node.client_list() if c.get("name", "").startswith(name)) for node in nodes]
    return counts, 7 if len(nodes) == 1 else 10


async def test_200_subscriptions_use_no_more_than_10_redis_connections_and_every_cursor_moves(
    make_gateway: object, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ragline.streaming.hub, "FLUSH_CHUNK", 7)  # the cursor flush goes in many pipelines
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
        counts, bound = gateway_connections(redis_client, process_id)
        assert all(1 <= count <= bound for count in counts), counts
        # Each of the 200 groups moved past its event once the next was asked for: the
        # client's frames were written, and a flush in chunks of 7 reached every one.
        await wait_until(lambda: all(
            [g["last-delivered-id"] for g in groups(redis_client, t)] == [ids[t]] * (SUBSCRIPTIONS // TENANTS)
            for t in tenants
        ))

