"""`ragline serve --workers N`: every subscriber gets every event, whichever process holds it;
SIGTERM drains every worker; a worker that dies is replaced."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest
import redis

from helpers import (
    EVENTS_QUERY,
    SECRET,
    STARTUP_TIMEOUT,
    STATS_QUERY,
    GatewayProcess,
    ProtocolClient,
    close_of,
    connect,
    groups,
    make_token,
    publish,
    wait_until,
)
from ragline.streaming import keys

pytestmark = pytest.mark.anyio
CLIENTS = 8
MAX_CLIENTS = 40


async def test_workers_share_the_port_and_every_subscriber_gets_every_event(
    redis_url: str, redis_client: redis.Redis, tenant: str, tmp_path: Path
) -> None:
    env = {"RAGLINE_REDIS_URL": redis_url, "RAGLINE_JWT_SECRET": SECRET, "RAGLINE_ORPHAN_TIMEOUT": "1"}
    gateway = GatewayProcess(env, tmp_path / "gw.log", "--workers", "2").start()
    token = make_token(tenant)
    try:
        await _wait_for_workers(tmp_path / "gw.log", 2)
        async with AsyncExitStack() as stack:
            clients = await _on_both_workers(stack, gateway, redis_client, tenant, token)
            stats = await _wait_for_stats(gateway.port, token, subscriptions=len(clients))
            assert stats["connections"] == len(clients)
            ids = [publish(redis_client, tenant, "order_created", {"n": n}) for n in range(5)]
            for client in clients:
                assert [e["id"] for e in await client.collect("1", "events", 5)] == ids
    finally:
        gateway.stop()


async def test_sigterm_drains_every_worker_and_a_dead_worker_is_replaced(
    redis_url: str, redis_client: redis.Redis, tenant: str, tmp_path: Path
) -> None:
    """The gateway's own supervisor: a worker killed outright is replaced (and serves), and
    SIGTERM to `ragline serve` completes every operation on every worker, closes 1001."""
    env = {"RAGLINE_REDIS_URL": redis_url, "RAGLINE_JWT_SECRET": SECRET, "RAGLINE_ORPHAN_TIMEOUT": "1"}
    log = tmp_path / "gw.log"
    gateway = GatewayProcess(env, log, "--workers", "2").start()
    token = make_token(tenant)
    try:
        await _wait_for_workers(log, 2)
        os.kill(_worker_pids(log)[0], signal.SIGKILL)
        await _wait_for_workers(log, 3)  # its replacement started the app
        async with AsyncExitStack() as stack:
            clients = await _on_both_workers(stack, gateway, redis_client, tenant, token)
            gateway.process.send_signal(signal.SIGTERM)
            for client in clients:
                assert await client.recv() == {"id": "1", "type": "complete"}
                assert await close_of(client) == (1001, "Server shutting down")
        gateway.process.wait(timeout=STARTUP_TIMEOUT)
        assert groups(redis_client, tenant) == []
    finally:
        gateway.stop()


async def _on_both_workers(
    stack: AsyncExitStack, gateway: GatewayProcess, redis_client: redis.Redis, tenant: str, token: str
) -> list[ProtocolClient]:
    """At least CLIENTS subscribed clients, connected until both workers hold some (each
    connection goes to whichever worker accepts it first: 8 all on one worker would happen
    once in 128 runs; 40, never)."""
    clients: list[ProtocolClient] = []
    holders: dict[str, int] = {}  # subscriptions by worker process
    while len(clients) < CLIENTS or len(holders) < 2:
        assert len(clients) < MAX_CLIENTS, f"every connection went to one worker: {holders}"
        client = await stack.enter_async_context(connect(gateway.ws_url, token=token))
        await client.subscribe("1", EVENTS_QUERY)
        clients.append(client)
        await wait_until(lambda: len(groups(redis_client, tenant)) == len(clients))
        holders = _holders(redis_client, tenant)
    assert len(holders) == 2 and sum(holders.values()) == len(clients), holders
    return clients


def _worker_pids(log: Path) -> list[int]:
    """The workers' pids, as each one's uvicorn logs "Started server process [pid]"."""
    return [int(pid) for pid in re.findall(r"Started server process \[(\d+)\]", log.read_text())]


async def _wait_for_workers(log: Path, count: int) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
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


def _holders(client: redis.Redis, tenant: str) -> dict[str, int]:
    """Subscriptions of `tenant` by the process holding them: each subscription's group
    on the tenant's stream is named after its process (`ragline-ws-T:e:<process>:<id>`)."""
    held: dict[str, int] = {}
    for group in groups(client, tenant):
        parsed = keys.parse_group(str(group["name"]), tenant)
        assert parsed is not None and parsed[0] == keys.EPHEMERAL_MARK, group
        held[parsed[1][0]] = held.get(parsed[1][0], 0) + 1
    return held
