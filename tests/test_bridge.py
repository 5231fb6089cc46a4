"""The bridge moves the shared streams' entries into the tenant streams: each exactly
once, in order, across a SIGKILL; entries without a valid tenant go to its DLQ."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from helpers import (
    STARTUP_TIMEOUT,
    async_redis,
    connect,
    groups,
    make_token,
    new_tenant,
    wait_until,
)
from ragline.streaming import keys
from ragline.streaming.bridge import Bridge, BridgeConfig

pytestmark = pytest.mark.anyio
RAGLINE = [sys.executable, "-c", "from ragline.gateway.cli import main; raise SystemExit(main())"]
ROOT = Path(__file__).resolve().parent.parent
SOURCES = keys.SHARED_STREAM_NAMES
SOURCE_KEYS = [keys.shared_stream_key(name) for name in SOURCES]
EVENT_TYPES = {"orders": "order_created", "notifications": "notification_sent", "system": "system_notice"}
BAD_TENANTS: list[str | None] = [None, "", "has/slash", "x" * 65, "tenant with spaces"]
Fields = dict[str, str]


class BridgeProcess:
    """`ragline bridge` as a subprocess, for SIGKILL and SIGTERM."""

    def __init__(self, redis_url: str, log_path: Path, consumer: str = "test-bridge") -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RAGLINE_")}
        self.env.update(RAGLINE_REDIS_URL=redis_url, RAGLINE_LOG_LEVEL="info")
        self.args = [*RAGLINE, "bridge", "--consumer", consumer]
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> BridgeProcess:
        with self.log_path.open("a") as out:
            self.process = subprocess.Popen(self.args, env=self.env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        RUNNING.append(self)
        return self

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def terminate(self) -> int:
        assert self.process is not None
        self.process.terminate()
        return self.process.wait(timeout=20)

    def log(self) -> str:
        return self.log_path.read_text()


RUNNING: list[BridgeProcess] = []


@pytest.fixture(autouse=True)
def no_bridge_left_running() -> Iterator[None]:
    """A test that fails before it stops its bridge does not leave the process behind."""
    yield
    while RUNNING:
        bridge = RUNNING.pop()
        if bridge.process is not None and bridge.process.poll() is None:
            bridge.kill()


@pytest.fixture
def shared_streams(redis_client: redis.Redis) -> Iterator[None]:
    """Empty shared streams (and no bridge group) before and after each test."""
    redis_client.delete(*SOURCE_KEYS, keys.BRIDGE_DLQ_KEY)
    yield
    redis_client.delete(*SOURCE_KEYS, keys.BRIDGE_DLQ_KEY)


def produce(client: redis.Redis, plan: list[tuple[str, Fields]]) -> list[str]:
    """XADD each (source, fields) to its shared stream the way the older producers do; the ids."""
    with client.pipeline(transaction=False) as pipe:
        for source, fields in plan:
            pipe.xadd(keys.shared_stream_key(source), fields)  # type: ignore[arg-type]
        return [entry_id.decode() for entry_id in pipe.execute()]


def valid_entry(tenant: str, source: str, n: int) -> Fields:
    fields = {"tenant_id": tenant, "event_type": EVENT_TYPES[source], "payload": json.dumps({"n": n})}
    if n % 3 == 0:
        fields["event_id"] = str(uuid.UUID(int=n))
    if n % 5 == 0:
        fields["occurred_at"] = "2026-01-02T03:04:05+00:00"
    return fields


def invalid_entry(tenant: str | None, n: int) -> Fields:
    fields = {"event_type": "order_created", "payload": json.dumps({"n": n})}
    return fields if tenant is None else {**fields, "tenant_id": tenant}


def stream_entries(client: redis.Redis, key: str) -> list[Fields]:
    entries: Any = client.xrange(key)
    return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in entries]


def tenant_entries(client: redis.Redis, tenant: str) -> list[Fields]:
    return stream_entries(client, keys.events_key(tenant))


def copied_count(client: redis.Redis, tenants: list[str]) -> int:
    with client.pipeline(transaction=False) as pipe:
        for tenant in tenants:
            pipe.xlen(keys.events_key(tenant))
        return sum(pipe.execute())


def pending(client: redis.Redis, *, groups_only: bool = False) -> int:
    """Entries read by some bridge and not acknowledged, over every shared stream;
    with `groups_only`, -1 until the bridge's groups exist."""
    total = 0
    for key in SOURCE_KEYS:
        try:
            total += client.xpending(key, keys.BRIDGE_GROUP)["pending"]
        except redis.ResponseError:  # no group yet
            if groups_only:
                return -1
    return total


async def test_ten_thousand_entries_of_twenty_tenants_arrive_once_each_in_order_across_a_sigkill(
    redis_url: str, redis_client: redis.Redis, shared_streams: None, tmp_path: Path
) -> None:
    tenants = [new_tenant() for _ in range(20)]
    plan: list[tuple[str, Fields]] = []
    for n in range(10_000):
        source = SOURCES[n % len(SOURCES)]
        plan.append((source, valid_entry(tenants[(n * 7 + n // 20) % 20], source, n)))
        if n % 500 == 250:
            plan.append((SOURCES[n % 2], invalid_entry(BAD_TENANTS[n // 500 % len(BAD_TENANTS)], n)))
    chunks = [plan[i:i + 250] for i in range(0, len(plan), 250)]
    ids: list[str] = []
    bridge = BridgeProcess(redis_url, tmp_path / "bridge.log").start()
    await wait_until(lambda: pending(redis_client, groups_only=True) == 0, STARTUP_TIMEOUT)  # its groups exist: it is up
    written_at_kill = copied_at_kill = pending_at_kill = 0
    for chunk in chunks:  # the producers keep writing while the bridge runs, dies, and comes back
        ids += produce(redis_client, chunk)
        if not written_at_kill and len(ids) >= 4_000:
            await wait_until(lambda: copied_count(redis_client, tenants) >= 3_000, interval=0.005)
            bridge.kill()
            written_at_kill = len(ids)
            copied_at_kill, pending_at_kill = copied_count(redis_client, tenants), pending(redis_client)
        await asyncio.sleep(0.01)
    assert 3_000 <= copied_at_kill <= written_at_kill < len(plan), "the bridge was killed mid-way"
    bridge = BridgeProcess(redis_url, tmp_path / "bridge.log").start()
    await wait_until(
        lambda: copied_count(redis_client, tenants) >= 10_000 and pending(redis_client) == 0, STARTUP_TIMEOUT
    )
    assert bridge.terminate() == 0
    skipped = sum(int(n) for n in re.findall(r"(\d+) already copied before", bridge.log()))
    print(f"killed after {copied_at_kill} copies, {pending_at_kill} pending; {skipped} skipped as copied on restart")

    expected: dict[str, list[Fields]] = {tenant: [] for tenant in tenants}
    dead: list[Fields] = []
    for (source, fields), entry_id in zip(plan, ids, strict=True):
        provenance = {"source_stream": keys.shared_stream_key(source), "source_id": entry_id}
        if keys.is_valid_id(fields.get("tenant_id", "")):
            expected[fields["tenant_id"]].append({**fields, **provenance})
        else:
            reason = "missing tenant_id" if "tenant_id" not in fields else "invalid tenant_id"
            dead.append({**fields, **provenance, "reason": reason})
    for tenant in tenants:
        got = tenant_entries(redis_client, tenant)
        for source in SOURCE_KEYS:  # each shared stream's order is kept
            assert [f for f in got if f["source_stream"] == source] == [
                f for f in expected[tenant] if f["source_stream"] == source
            ]
        assert len(got) == len(expected[tenant]) == 500
    dlq = stream_entries(redis_client, keys.BRIDGE_DLQ_KEY)
    assert sorted(dlq, key=_source_order) == sorted(dead, key=_source_order)
    assert len(dead) == 20


async def test_a_bridge_that_died_between_copy_and_ack_copies_nothing_twice_when_restarted(
    redis_url: str, redis_client: redis.Redis, shared_streams: None, tenant: str, tmp_path: Path
) -> None:
    ids = produce(redis_client, [("orders", valid_entry(tenant, "orders", n)) for n in range(1, 5)])
    client = async_redis(redis_url)
    try:  # what a bridge killed before its XACK leaves: 4 entries pending, the first 2 copied
        crashed = Bridge(client, BridgeConfig(consumer="crashed", sources=("orders",)))
        await crashed.start()
        read: Any = await client.xreadgroup(keys.BRIDGE_GROUP, "crashed", {SOURCE_KEYS[0]: ">"})
        await crashed.copy(SOURCE_KEYS[0], read[0][1][:2])
    finally:
        await client.aclose()
    assert [f["source_id"] for f in tenant_entries(redis_client, tenant)] == ids[:2]
    assert pending(redis_client) == 4

    bridge = BridgeProcess(redis_url, tmp_path / "bridge.log", consumer="crashed").start()
    await wait_until(lambda: pending(redis_client) == 0, STARTUP_TIMEOUT)
    assert bridge.terminate() == 0
    assert [f["source_id"] for f in tenant_entries(redis_client, tenant)] == ids
    assert "bridge: 2 copied, 2 already copied before, 0 dead-lettered" in bridge.log()


async def test_entries_left_pending_by_a_dead_bridge_are_taken_over(
    redis_url: str, redis_client: redis.Redis, shared_streams: None, tenant: str
) -> None:
    ids = produce(redis_client, [("system", valid_entry(tenant, "system", n)) for n in range(1, 4)])
    redis_client.xgroup_create(SOURCE_KEYS[2], keys.BRIDGE_GROUP, id="0")
    redis_client.xreadgroup(keys.BRIDGE_GROUP, "dead-host", {SOURCE_KEYS[2]: ">"})
    client = async_redis(redis_url)
    config = BridgeConfig(consumer="alive", claim_idle_ms=300, claim_interval=0.1, block_ms=100)
    task = asyncio.create_task(Bridge(client, config).run())
    try:
        await wait_until(lambda: len(tenant_entries(redis_client, tenant)) == 3)
        await wait_until(lambda: pending(redis_client) == 0)
    finally:
        task.cancel()
        await stopped(task)
        await client.aclose()
    assert [f["source_id"] for f in tenant_entries(redis_client, tenant)] == ids


async def stopped(task: asyncio.Task[None]) -> None:
    """A cancelled bridge ends (its entries are retried on restart); if it does not within
    10 s, where it is stuck is printed and the test fails rather than hangs."""
    done, _ = await asyncio.wait([task], timeout=10)
    if not done:
        for stuck in asyncio.all_tasks():
            stuck.print_stack()
        raise AssertionError("the bridge did not end when cancelled")
    assert task.cancelled(), task


async def test_serve_with_the_bridge_delivers_shared_stream_entries_to_subscribers(
    redis_client: redis.Redis, shared_streams: None, tenant: str, make_gateway: Any
) -> None:
    gateway = make_gateway(bridge=True)
    async with connect(gateway.ws_url, token=make_token(tenant)) as client:
        await client.subscribe("1", "subscription { events { id type tenantId payload } }")
        await wait_until(lambda: len(groups(redis_client, tenant)) == 1)  # live: its cursor exists
        [source_id] = produce(redis_client, [("orders", valid_entry(tenant, "orders", 7))])
        event = await client.next_data("1", "events")
    [copied_id] = [entry_id.decode() for entry_id, _ in redis_client.xrange(keys.events_key(tenant))]  # type: ignore[union-attr]
    assert event == {"id": copied_id, "type": "order_created", "tenantId": tenant, "payload": {"n": 7}}
    assert [f["source_id"] for f in tenant_entries(redis_client, tenant)] == [source_id]


def _source_order(fields: Fields) -> tuple[str, str]:
    return fields["source_stream"], fields["source_id"]
