"""`ragline serve --workers N`: every subscriber gets every event, whichever process holds it."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest
import redis

from helpers import EVENTS_QUERY, SECRET, STATS_QUERY, GatewayProcess, connect, make_token, publish

pytestmark = pytest.mark.anyio
CLIENTS = 8


async def test_workers_share_the_port_and_every_subscriber_gets_every_event(
    redis_url: str, redis_client: redis.Redis, tenant: str, tmp_path: Path
) -> None:
    env = {"RAGLINE_REDIS_URL": redis_url, "RAGLINE_JWT_SECRET": SECRET, "RAGLINE_ORPHAN_TIMEOUT": "1"}
    gateway = GatewayProcess(env, tmp_path / "gw.log", "--workers", "2").start()
    token = make_token(tenant)
    try:
        await _wait_for_workers(tmp_path / "gw.log", 2)
        async with AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(connect(gateway.ws_url, token=token)) for _ in range(CLIENTS)]
            for client in clients:
                await client.subscribe("1", EVENTS_QUERY)
            stats = await _wait_for_stats(gateway.port, token, subscriptions=CLIENTS)
            assert stats["connections"] == CLIENTS
            ids = [publish(redis_client, tenant, "order_created", {"n": n}) for n in range(5)]
            for client in clients:
                assert [e["id"] for e in await client.collect("1", "events", 5)] == ids
    finally:
        gateway.stop()


async def _wait_for_workers(log: Path, count: int) -> None:
    for _ in range(300):
        lines = log.read_text().splitlines()
        if sum("Application startup complete" in line for line in lines) >= count:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{count} workers did not start:\n{log.read_text()}")


async def _wait_for_stats(port: int, token: str, subscriptions: int) -> dict[str, int]:
    async with httpx.AsyncClient() as http:
        for _ in range(100):
            response = await http.post(
                f"http://127.0.0.1:{port}/graphql", json={"query": STATS_QUERY}, headers={"Authorization": f"Bearer {token}"}
            )
            stats = response.json()["data"]["stats"]
            if stats["subscriptions"] == subscriptions:
                return dict(stats)
            await asyncio.sleep(0.1)
    raise AssertionError(f"stats never summed to {subscriptions} subscriptions: {stats}")
