"""Observability: /metrics moves with a scripted session, Redis errors and reconnects are
counted, logs are structured (JSON) with the socket's ids, and `ragline serve` applies it all."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import websockets
from prometheus_client.parser import text_string_to_metric_families

from helpers import (
    EVENTS_QUERY,
    SECRET,
    TIMEOUT,
    TRANSPORT_WS,
    GatewayProcess,
    GatewayServer,
    ProtocolClient,
    close_of,
    connect,
    make_token,
    publish,
    wait_until,
)
from ragline.gateway.metrics import REDIS
from ragline.resolvers.metrics import LatencyHistogram
from ragline.streaming import keys
from ragline.streaming.entries import Entry

pytestmark = pytest.mark.anyio
DURABLE_ORDERS = "subscription($d: String) { orderEvents(durable: $d) { id orderId } }"
AGE = 12.0  # seconds: how old `publish_aged` events are, well inside the (10, 30] latency bucket


async def scrape(gateway: GatewayServer | GatewayProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, by (name, sorted labels)."""
    async with httpx.AsyncClient() as http:
        response = await http.get(f"http://127.0.0.1:{gateway.port}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def publish_aged(client: redis.Redis, tenant: str, events: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """XADD `events` with entry ids AGE seconds in the past: delivery latency runs from the id's time."""
    millis = int(time.time() * 1000) - int(AGE * 1000)
    return [
        client.xadd(
            keys.events_key(tenant),
            {"event_type": event_type, "tenant_id": tenant, "payload": json.dumps(payload)},
            id=f"{millis}-{n}",
        ).decode()
        for n, (event_type, payload) in enumerate(events)
    ]


async def test_metrics_move_as_a_session_subscribes_receives_fails_auth_and_disconnects(
    make_gateway: Callable[..., GatewayServer], redis_client: redis.Redis, tenant: str
) -> None:
    gateway = make_gateway()
    before = await scrape(gateway)
    async with connect(gateway.ws_url, token=make_token(tenant)) as client:
        await client.subscribe("all", EVENTS_QUERY)
        await client.subscribe("orders", DURABLE_ORDERS, {"d": "screen"})
        await wait_until(lambda: gateway.hub.counters.tenant(tenant).subscriptions == 2)
        during = await scrape(gateway)
        ids = publish_aged(
            redis_client, tenant, [("order_created", {"order_id": "o1"}), ("tool_call", {}), ("order_updated", {"order_id": "o1"})]
        )
        received = await client.collect_by_id({"all": 3, "orders": 2})
        assert [e["id"] for e in received["all"]] == ids
        await wait_until(lambda: gateway.hub.counters.tenant(tenant).skipped == 1)  # tool_call, for `orders`
        after_events = await scrape(gateway)
        expired = await websockets.connect(gateway.ws_url, subprotocols=[TRANSPORT_WS])
        await ProtocolClient(expired, TRANSPORT_WS).send(
            {"type": "connection_init", "payload": {"token": make_token(tenant, ttl=-60)}}
        )
        assert await close_of(ProtocolClient(expired, TRANSPORT_WS)) == (4403, "Forbidden")
        async with httpx.AsyncClient() as http:
            assert (await http.post(gateway.http_url, json={"query": "{ stats { connections } }"})).status_code == 401
        after_auth = await scrape(gateway)
    await wait_until(lambda: gateway.hub.counters.tenant(tenant).connections == 0)
    after = await scrape(gateway)

    assert value(before, "ragline_connections", tenant=tenant) == 0
    assert value(during, "ragline_connections", tenant=tenant) == 1
    assert value(during, "ragline_subscriptions", tenant=tenant) == 2
    assert value(during, "ragline_subscriptions_by_kind", kind="events", durable="false") == 1
    assert value(during, "ragline_subscriptions_by_kind", kind="orders", durable="true") == 1
    assert value(after_events, "ragline_events_delivered_total", tenant=tenant) == 5
    assert value(after_events, "ragline_events_skipped_total", tenant=tenant) == 1
    assert value(after_events, "ragline_events_acknowledged_total", tenant=tenant) == 6

    def latency(sample: str, **labels: str) -> float:
        name = f"ragline_delivery_latency_seconds_{sample}"
        return value(after_events, name, **labels) - value(before, name, **labels)

    assert latency("count") == 5
    assert value(after_events, "ragline_delivery_latency_seconds_bucket", le="+Inf") >= 5
    # Seconds, not milliseconds: each delivery was AGE s old and then some (at most the
    # test's wait), so all five land in the (10, 30] bucket.
    assert 5 * AGE <= latency("sum") < 5 * (AGE + TIMEOUT), latency("sum")
    assert (latency("bucket", le="10"), latency("bucket", le="30")) == (0, 5)
    for reason in ("expired", "missing"):
        grew = value(after_auth, "ragline_auth_failures_total", reason=reason) - value(before, "ragline_auth_failures_total", reason=reason)
        assert grew == 1, reason
    assert value(after, "ragline_connections", tenant=tenant) == 0
    assert value(after, "ragline_subscriptions_by_kind", kind="events", durable="false") == 0
    assert value(after, "ragline_subscriptions_by_kind", kind="orders", durable="true") == 0
    assert value(after, "ragline_redis_available") == 1
    assert value(after, "process_resident_memory_bytes") > 0
    assert value(after, "python_gc_collections_total", generation="0") > 0


async def test_compat_figures_are_counted(
    make_gateway: Callable[..., GatewayServer], redis_client: redis.Redis, tenant: str
) -> None:
    gateway = make_gateway()
    async with websockets.connect(f"ws://127.0.0.1:{gateway.port}/ws?token={make_token(tenant)}") as ws:
        assert json.loads(await ws.recv())["type"] == "connected"
        await wait_until(lambda: gateway.hub.counters.tenant(tenant).subscriptions == 1)
        assert value(await scrape(gateway), "ragline_subscriptions_by_kind", kind="compat", durable="false") == 1
        entry = publish(redis_client, tenant, "order_created", {"order_id": "o1"})
        assert json.loads(await ws.recv())["id"] == entry
    samples = await scrape(gateway)
    assert value(samples, "ragline_delivery_latency_seconds_count") == 1
    # ragline_slow_consumer_closes_total: counted for real stalled clients in test_backpressure.py
    # (graphql-transport-ws) and test_compat.py (/ws and /stream).


async def test_redis_errors_and_reconnects_are_counted(
    make_gateway: Callable[..., GatewayServer], redis_client: redis.Redis, tenant: str
) -> None:
    if isinstance(redis_client, redis.cluster.RedisCluster):
        pytest.skip("kills one server's client connection")
    gateway = make_gateway()
    async with connect(gateway.ws_url, token=make_token(tenant)) as client:
        await client.subscribe("1", EVENTS_QUERY)
        await wait_until(lambda: gateway.hub.counters.tenant(tenant).subscriptions == 1)
        errors, reconnects = REDIS.errors, REDIS.reconnects
        reader = f"ragline-gateway:{gateway.app.state.runtime.process_id}:reader"
        killed: list[str] = []

        def reader_connected() -> bool:  # the reader connects once it has a stream to read
            killed[:] = [c["id"] for c in redis_client.client_list() if c.get("name") == reader]
            return bool(killed)

        await wait_until(reader_connected)
        for client_id in killed:
            redis_client.client_kill_filter(_id=client_id)
        await wait_until(lambda: REDIS.reconnects > reconnects)
        assert REDIS.errors > errors
        entry = publish(redis_client, tenant, "order_created")
        assert (await client.next_data("1", "events"))["id"] == entry
    samples = await scrape(gateway)
    assert value(samples, "ragline_redis_errors_total") == REDIS.errors >= 1  # per process
    assert value(samples, "ragline_redis_reconnects_total") == REDIS.reconnects >= 1


@pytest.mark.log_errors(r"ragline.gateway.sockets ERROR: operation failed \(RuntimeError: failure-")  # the failure this test injects
async def test_json_logs_carry_the_connection_tenant_and_operation_ids(
    gateway: GatewayServer, tenant: str, monkeypatch: pytest.MonkeyPatch, session_log: Path
) -> None:
    marker = f"failure-{time.monotonic_ns()}"

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(marker)

    monkeypatch.setattr("ragline.resolvers.shared.open_entries", broken)
    token = make_token(tenant)
    async with connect(gateway.ws_url, token=token) as client:
        await client.subscribe("op-7", EVENTS_QUERY)
        assert (await client.recv())["type"] == "error"
    records = [json.loads(line) for line in session_log.read_text(encoding="utf-8").splitlines() if marker in line]
    assert records, "the failure was not logged"
    record = records[0]
    assert record["tenant"] == tenant and record["operation_id"] == "op-7"
    assert len(record["connection_id"]) == 12 and record["level"] == "ERROR"
    assert marker in record["exception"] and token not in json.dumps(record)


def test_the_latency_histogram_counts_every_observation() -> None:
    """Each delivery is observed once (its cost is the benchmark's to measure, not a test's)."""
    histogram = LatencyHistogram()
    entry = Entry("1-0", (int(time.time() * 1000) - 3, 0), "order_created", "t", {}, None, datetime.now(UTC))
    for _ in range(100_000):
        histogram.observe(entry)
    assert sum(histogram.counts) == 100_000


async def test_ragline_serve_with_workers_applies_the_frame_limit_and_logs_json(
    redis_url: str, tenant: str, tmp_path: Path
) -> None:
    env = {
        "RAGLINE_REDIS_URL": redis_url,
        "RAGLINE_JWT_SECRET": SECRET,
        "RAGLINE_LOG_FORMAT": "json",
        "RAGLINE_MAX_FRAME_BYTES": "4096",
    }
    log = tmp_path / "gw.log"
    gateway = GatewayProcess(env, log, "--workers", "2").start()
    token = make_token(tenant)
    try:
        for _ in range(4):  # whichever worker answers
            async with connect(f"{gateway.ws_url}?token={token}") as client:
                assert (await client.init({}))["type"] == "connection_ack"
                await client.ws.send("x" * 5000)
                assert await close_of(client) == (1009, "frame with 5000 bytes exceeds limit of 4096 bytes")
        assert (await scrape(gateway))[("ragline_redis_available", ())] == 1
    finally:
        gateway.stop()
    await asyncio.sleep(0)
    lines = [line for line in log.read_text().splitlines() if line.startswith("{")]
    records = [json.loads(line) for line in lines]
    assert any(r["logger"] == "uvicorn.error" and "[accepted]" in r["message"] for r in records)
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    assert token not in log.read_text()
