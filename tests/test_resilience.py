"""Nothing lost when things die: gateway SIGKILL and SIGTERM, Redis restarts, orphaned groups."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
import websockets

from helpers import (
    SECRET,
    GatewayProcess,
    GatewayServer,
    async_redis,
    close_of,
    connect,
    error_code,
    groups,
    make_token,
    publish,
    wait_until,
)
from ragline.gateway.embedded import RedisServer
from ragline.gateway.metrics import REDIS
from ragline.streaming import keys
from ragline.streaming.janitor import Janitor, JanitorConfig

pytestmark = pytest.mark.anyio
DURABLE_QUERY = "subscription($durable: String) { events(durable: $durable) { id type } }"


def process_env(redis_url: str, **extra: str) -> dict[str, str]:
    return {"RAGLINE_REDIS_URL": redis_url, "RAGLINE_JWT_SECRET": SECRET, "RAGLINE_LOG_LEVEL": "info", **extra}


async def test_an_event_read_but_not_sent_before_a_sigkill_arrives_after_restart(
    redis_url: str, redis_client: redis.Redis, tenant: str, make_gateway: object, tmp_path: Path
) -> None:
    crashing = GatewayProcess(process_env(redis_url), tmp_path / "gw.log", fault="hold_type('held_back')").start()
    token = make_token(tenant)
    try:
        async with connect(crashing.ws_url, token=token) as client:
            await client.subscribe("1", DURABLE_QUERY, {"durable": "till"})
            await wait_until(lambda: len(groups(redis_client, tenant)) == 1)  # the cursor exists: live
            sent = publish(redis_client, tenant, "order_created", {})
            assert [e["id"] for e in await client.collect("1", "events", 1)] == [sent]
            unsent = publish(redis_client, tenant, "held_back", {})
            await client.expect_silence(0.5)  # read by the gateway, held before the write
            crashing.kill()
    finally:
        crashing.stop()
    later = publish(redis_client, tenant, "order_created", {})
    gateway: GatewayServer = make_gateway()  # type: ignore[operator]
    async with connect(gateway.ws_url, token=token) as client:
        await client.subscribe("1", DURABLE_QUERY, {"durable": "till"})
        assert [e["id"] for e in await client.collect("1", "events", 2)] == [unsent, later]
        await client.expect_silence(0.3)


async def test_a_clean_leave_is_exact_even_when_an_older_cursor_flush_lands_during_it(
    redis_url: str, redis_client: redis.Redis, tenant: str, tmp_path: Path
) -> None:
    """A durable client receives events for longer than a cursor flush takes to reach Redis
    (1 s here), then completes its subscription and leaves; its release takes 2.5 s, so the
    flush that left before the leave, with an older position, lands in the middle of it.
    Resubscribed, the client gets exactly the events after the last one it received: the
    older position must not win over the leave's (it did: the client got events again)."""
    env = process_env(redis_url, RAGLINE_ACK_INTERVAL="0.01")
    gateway = GatewayProcess(env, tmp_path / "gw.log", fault="slow_cursor_writes(flush=1.0, release=2.5)").start()
    token = make_token(tenant)
    registry = keys.durable_registry_key(tenant)
    try:
        async with connect(gateway.ws_url, token=token) as client:
            await client.subscribe("1", DURABLE_QUERY, {"durable": "exact"})
            await wait_until(lambda: len(groups(redis_client, tenant)) == 1)  # the cursor exists: live
            for _ in range(12):  # 1.2 s: every flush of that time carries some position
                sent = publish(redis_client, tenant, "order_created", {})
                assert [e["id"] for e in await client.collect("1", "events", 1)] == [sent]
                await asyncio.sleep(0.1)
            await client.complete("1")
            await client.expect_silence(0.1)
        await wait_until(lambda: not any(key.startswith(b"owner:") for key in redis_client.hkeys(registry)))
        await asyncio.sleep(1.0)  # any flush still on its way has landed
        missed = [publish(redis_client, tenant, "order_updated", {}) for _ in range(2)]
        async with connect(gateway.ws_url, token=token) as client:
            await client.subscribe("1", DURABLE_QUERY, {"durable": "exact"})
            assert [e["id"] for e in await client.collect("1", "events", 2)] == missed
            await client.expect_silence(0.3)
    finally:
        gateway.stop()


async def test_sigterm_completes_operations_closes_1001_and_loses_nothing(
    redis_url: str, redis_client: redis.Redis, tenant: str, make_gateway: object, tmp_path: Path
) -> None:
    gateway = GatewayProcess(process_env(redis_url), tmp_path / "gw.log").start()
    token = make_token(tenant)
    published: list[str] = []
    stop = asyncio.Event()

    async def produce() -> None:
        while not stop.is_set():
            published.append(publish(redis_client, tenant, "order_created", {"n": len(published)}))
            await asyncio.sleep(0.005)

    received: list[str] = []
    try:
        async with connect(gateway.ws_url, token=token) as client:
            await client.subscribe("1", DURABLE_QUERY, {"durable": "screen"})
            await wait_until(lambda: len(groups(redis_client, tenant)) == 1)  # it is live
            producer = asyncio.create_task(produce())
            received += [e["id"] for e in await client.collect("1", "events", 20)]
            started = time.monotonic()
            gateway.process.send_signal(signal.SIGTERM)
            while True:
                try:
                    message = await client.recv()
                except websockets.ConnectionClosed as closed:
                    raise AssertionError(f"{closed}\n{(tmp_path / 'gw.log').read_text()}") from None
                if message["type"] != "next":
                    break
                received.append(message["payload"]["data"]["events"]["id"])
            assert message == {"id": "1", "type": "complete"}
            assert await close_of(client) == (1001, "Server shutting down")
            gateway.process.wait(timeout=10)
            assert time.monotonic() - started < 10
    finally:
        stop.set()
        gateway.stop()
    await producer
    successor: GatewayServer = make_gateway()  # type: ignore[operator]
    async with connect(successor.ws_url, token=token) as client:
        await client.subscribe("1", DURABLE_QUERY, {"durable": "screen"})
        rest = [e["id"] for e in await client.collect("1", "events", len(published) - len(received))]
        await client.expect_silence(0.3)
    assert received + rest == published
    assert "Application shutdown complete" in (tmp_path / "gw.log").read_text()


async def test_janitor_removes_a_killed_processes_groups_and_never_a_live_ones(
    redis_url: str, redis_client: redis.Redis, tenant: str, gateway: GatewayServer, tmp_path: Path
) -> None:
    doomed = GatewayProcess(process_env(redis_url, RAGLINE_ORPHAN_TIMEOUT="4"), tmp_path / "gw.log").start()
    token = make_token(tenant)
    async with connect(gateway.ws_url, token=token) as survivor:
        await survivor.subscribe("live", DURABLE_QUERY)
        await wait_until(lambda: len(groups(redis_client, tenant)) == 1)
        live_group = groups(redis_client, tenant)[0]["name"]
        async with connect(doomed.ws_url, token=token) as victim:
            await victim.subscribe("1", DURABLE_QUERY)
            await victim.subscribe("2", DURABLE_QUERY)
            await wait_until(lambda: len(groups(redis_client, tenant)) == 3)
            doomed.kill()
        processes = {_process_of(g["name"], tenant) for g in groups(redis_client, tenant)}
        [doomed_id] = processes - {_process_of(live_group, tenant)}
        sweeper = async_redis(redis_url)
        try:  # a sweep before the orphan timeout (4 s): the killed process's key still lives
            await Janitor(sweeper, JanitorConfig(process_id="test-sweeper")).sweep()
            key_alive = await sweeper.exists(keys.process_key(doomed_id))
        finally:
            await sweeper.aclose()
        assert key_alive, "the sweep outlasted the orphan timeout"
        assert len(groups(redis_client, tenant)) == 3  # so its groups stay
        await wait_until(lambda: [g["name"] for g in groups(redis_client, tenant)] == [live_group], timeout=15)
        entry = publish(redis_client, tenant, "order_created", {})
        assert [e["id"] for e in await survivor.collect("live", "events", 1)] == [entry]


def _process_of(group: str, tenant: str) -> str:
    """The process an ephemeral group is named after (`ragline-ws-T:e:<process>:<id>`)."""
    parsed = keys.parse_group(group, tenant)
    assert parsed is not None and parsed[0] == keys.EPHEMERAL_MARK, group
    return str(parsed[1][0])


@pytest.fixture
def restartable_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer.on_port(tmp_path / "redis", persistent=True)
    server.start()
    yield server
    server.stop()


@pytest.mark.log_errors(r"ERROR: Redis unavailable \(")  # the outage, logged once (asserted below)
async def test_a_redis_restart_loses_nothing_and_is_logged_once(
    restartable_redis: RedisServer, make_gateway: object, tenant: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ragline.streaming.hub")
    gateway: GatewayServer = make_gateway(redis_url=restartable_redis.url)  # type: ignore[operator]
    producer = redis.Redis.from_url(restartable_redis.url)
    token = make_token(tenant)
    async with connect(gateway.ws_url, token=token) as client:
        await client.subscribe("1", DURABLE_QUERY, {"durable": "restart"})
        await wait_until(lambda: gateway.hub.counters.tenant(tenant).subscriptions == 1)
        before = [publish(producer, tenant, "order_created", {"n": n}) for n in range(5)]
        assert [e["id"] for e in await client.collect("1", "events", 5)] == before

        restartable_redis.stop()
        async with httpx.AsyncClient() as http:
            await wait_until(lambda: not gateway.hub.available, timeout=10)
            assert (await http.get(f"http://127.0.0.1:{gateway.port}/readyz")).status_code == 503
        started = time.monotonic()
        await client.subscribe("2", DURABLE_QUERY)
        assert await error_code(client, "2") == "UNAVAILABLE"
        assert time.monotonic() - started < 2
        errors = REDIS.errors  # failed attempts of this process (ragline_redis_errors_total)
        await wait_until(lambda: REDIS.errors >= errors + 9)  # retries go on: 3+ commands fail

        restartable_redis.start()
        producer = redis.Redis.from_url(restartable_redis.url)
        after = [publish(producer, tenant, "order_created", {"n": n}) for n in range(5, 10)]
        assert [e["id"] for e in await client.collect("1", "events", 5, timeout=15)] == after
        await client.expect_silence(0.3)

    def logged(message: str) -> int:
        return sum(r.getMessage().startswith(message) for r in caplog.records)

    # The reader may be back (the events above) before the command connections are: the
    # recovery is logged once every source works again, after the next command succeeds.
    await wait_until(lambda: logged("Redis available again") > 0)
    assert (logged("Redis unavailable"), logged("Redis available again")) == (1, 1)


async def test_idle_durable_cursors_expire_and_held_ones_do_not(
    gateway: GatewayServer, redis_url: str, redis_client: redis.Redis, tenant: str
) -> None:
    token = make_token(tenant)
    async with connect(gateway.ws_url, token=token) as client:
        await client.subscribe("idle", DURABLE_QUERY, {"durable": "idle"})
        await client.subscribe("held", DURABLE_QUERY, {"durable": "held"})
        await wait_until(lambda: len(groups(redis_client, tenant)) == 2)
        registry = keys.durable_registry_key(tenant)
        idle_owner = f"owner:{keys.durable_group(keys.EVENTS_KIND, tenant, 'u1', 'idle')}"
        await client.complete("idle")
        await wait_until(lambda: not redis_client.hexists(registry, idle_owner))  # released
        await asyncio.sleep(1.2)  # the point: the idle cursor's age passes durable_ttl (1 s)
        sweeper = async_redis(redis_url)
        janitor = Janitor(sweeper, JanitorConfig(process_id="test-sweeper", durable_ttl=1.0))
        await janitor.sweep()
        await sweeper.aclose()
        names = [g["name"] for g in groups(redis_client, tenant)]
        assert [n.rsplit(":", 1)[1] for n in names] == ["held"]
        entry = publish(redis_client, tenant, "order_created", {})
        assert [e["id"] for e in await client.collect("held", "events", 1)] == [entry]
