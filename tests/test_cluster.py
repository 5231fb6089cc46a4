"""Scale-out on a Redis Cluster: many tenants over every primary, failover, resharding,
several gateway hosts (tests/cluster.py: 3 primaries with a replica each)."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack, suppress
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
import websockets
from redis.crc import key_slot

from cluster import LocalCluster
from helpers import (
    EVENTS_QUERY,
    SECRET,
    STATS_QUERY,
    GatewayProcess,
    GatewayServer,
    ProtocolClient,
    async_redis,
    connect,
    groups,
    make_token,
    publish,
    sync_redis,
    wait_until,
)
from ragline.streaming import keys
from ragline.streaming.connections import (
    node_url,
    open_cluster_reads,
    open_single,
    parse_cluster_url,
)
from ragline.streaming.publish import event_fields
from ragline.streaming.readers import NotifiedReader

pytestmark = pytest.mark.anyio
DURABLE_QUERY = "subscription($durable: String) { events(durable: $durable) { id type } }"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def fresh_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """A cluster of its own, for tests that kill a node."""
    cluster = LocalCluster(tmp_path / "cluster").start()
    yield cluster
    cluster.stop()


def _ids(events: list[dict[str, Any]]) -> list[str]:
    return [event["id"] for event in events]


# -- configuration ---------------------------------------------------------------


def test_a_cluster_url_names_its_seed_nodes_and_shared_options() -> None:
    nodes, options = parse_cluster_url("rediss+cluster://app:s3cret@10.0.0.1:7000,10.0.0.2,[::1]:7002/0?socket_timeout=3")
    assert nodes == [("10.0.0.1", 7000), ("10.0.0.2", 6379), ("::1", 7002)]
    assert (options["username"], options["password"], options["ssl"]) == ("app", "s3cret", True)
    assert options["socket_timeout"] == 3.0


def test_every_key_a_lua_script_touches_shares_its_tenants_slot() -> None:
    tenant = "acme"
    slot = key_slot(keys.events_key(tenant).encode())
    scripted = [
        keys.dlq_key(tenant), keys.dlq_seen_key(tenant, "1-0"),   # dead letters
        keys.durable_registry_key(tenant),                       # durable cursor moves
        keys.bridge_marker_key(tenant, "orders", "1-0"),         # the bridge's append-once
    ]
    assert {key_slot(key.encode()) for key in scripted} == {slot}
    bridge_dlq = [keys.BRIDGE_DLQ_KEY, keys.bridge_dlq_seen_key("orders", "1-0")]
    assert len({key_slot(key.encode()) for key in bridge_dlq}) == 1


# -- fan-out over every primary ----------------------------------------------------


async def test_fifty_tenants_over_three_primaries_each_get_every_event_of_their_own_in_order(
    local_cluster: LocalCluster, make_gateway: Any
) -> None:
    gateway: GatewayServer = make_gateway(redis_url=local_cluster.url)
    primaries = local_cluster.primary_ports()
    tenants = [local_cluster.tenant_on(primaries[i % 3]) for i in range(50)]
    assert {local_cluster.owner_of(keys.events_key(t)) for t in tenants} == set(primaries)
    producer = local_cluster.client()
    async with AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(connect(gateway.ws_url, token=make_token(t))) for t in tenants]
        for client in clients:
            await client.subscribe("1", EVENTS_QUERY)
        await wait_until(lambda: all(gateway.hub.counters.tenant(t).subscriptions == 1 for t in tenants))
        published: dict[str, list[str]] = {t: [] for t in tenants}
        for n in range(20):  # interleaved, as many producers would
            for tenant in tenants:
                published[tenant].append(publish(producer, tenant, "order_created", {"n": n}))
        received = await asyncio.gather(*(client.collect("1", "events", 20) for client in clients))
        for tenant, client, events in zip(tenants, clients, received, strict=True):
            assert _ids(events) == published[tenant]
            assert {event["tenantId"] for event in events} == {tenant}
            await client.expect_silence(0.05)
        # per node: 6 for commands, 1 reader, 1 notifications, and the idle connection that each
        # of the two cluster clients keeps to the node it asked for the slot map
        per_node = _connections_per_node(local_cluster, gateway.app.state.runtime.process_id)
        assert set(per_node) == set(primaries) and all(1 <= n <= 10 for n in per_node.values()), per_node
    producer.close()


def _connections_per_node(cluster: LocalCluster, process_id: str) -> dict[int, int]:
    """Connections named after a gateway process, on each primary."""
    counts = {}
    for port in cluster.primary_ports():
        with cluster.node(port).client() as client:
            names = [c.get("name", "") for c in client.client_list()]
        counts[port] = sum(name.startswith(f"ragline-gateway:{process_id}") for name in names)
    return counts


# -- resharding --------------------------------------------------------------------


async def test_a_slot_resharded_while_events_flow_loses_no_event(
    local_cluster: LocalCluster, make_gateway: Any
) -> None:
    gateway: GatewayServer = make_gateway(redis_url=local_cluster.url)
    source, target = local_cluster.primary_ports()[:2]
    tenant = local_cluster.tenant_on(source, first_slot=True)  # the slot `--cluster reshard` moves first
    producer = async_redis(local_cluster.url)
    stream = keys.events_key(tenant)
    for start in range(0, 3000, 500):  # some history, so the migration takes a moment
        async with producer.pipeline(transaction=False) as pipe:
            for n in range(start, start + 500):
                pipe.xadd(stream, event_fields(tenant, "history", {"n": n}))  # type: ignore[arg-type]
            await pipe.execute()
    published: list[str] = []
    stop = asyncio.Event()

    async def produce() -> None:
        while not stop.is_set():
            entry: Any = await producer.xadd(stream, event_fields(tenant, "order_created", {"n": len(published)}))  # type: ignore[arg-type]
            published.append(entry.decode())
            await asyncio.sleep(0.002)

    token = make_token(tenant)
    async with connect(gateway.ws_url, token=token) as plain, connect(gateway.ws_url, token=token) as durable:
        await plain.subscribe("1", EVENTS_QUERY)
        await durable.subscribe("1", DURABLE_QUERY, {"durable": "moving"})
        await wait_until(lambda: gateway.hub.counters.tenant(tenant).subscriptions == 2)
        task = asyncio.create_task(produce())
        await asyncio.sleep(0.5)
        await asyncio.to_thread(local_cluster.reshard_first_slot, source, target)
        assert local_cluster.owner_of(stream) == target
        await asyncio.sleep(1.0)
        stop.set()
        await task
        assert _ids(await plain.collect("1", "events", len(published))) == published
        assert _ids(await durable.collect("1", "events", len(published))) == published
        await plain.expect_silence(0.2)
        with local_cluster.node(target).client() as owner:  # the groups moved with the stream
            assert len(owner.xinfo_groups(stream)) == 2
    await producer.aclose()


# -- failover ----------------------------------------------------------------------


class ReplicatedProducer:
    """Publishes round-robin to its tenants from a thread, like a careful producer: each
    XADD is followed on the same connection by `WAIT 1`, so an event counts as
    acknowledged only once a replica has it (and so survives its primary's failover).
    A primary without replicas (the one promoted after the failover) cannot confirm
    anything: its events count as unconfirmed."""

    def __init__(self, cluster: LocalCluster, tenants: list[str]) -> None:
        self.cluster = cluster
        self.tenants = tenants
        self.acked: dict[str, list[str]] = {t: [] for t in tenants}
        self.unconfirmed: dict[str, list[str]] = {t: [] for t in tenants}  # added, not known to be replicated
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._clients: dict[int, redis.Redis] = {}

    def start(self) -> ReplicatedProducer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        for client in self._clients.values():
            client.close()

    def produced(self, tenant: str) -> int:
        return len(self.acked[tenant]) + len(self.unconfirmed[tenant])

    def _run(self) -> None:
        owners, replicated = self._topology()
        n = 0
        while not self._stop.is_set():
            for tenant in self.tenants:
                try:
                    self._publish(owners, replicated, tenant, n)
                except (redis.RedisError, OSError):
                    self.failures += 1
                    time.sleep(0.05)
                    with suppress(redis.RedisError, OSError):
                        owners, replicated = self._topology()
            n += 1
            time.sleep(0.005)

    def _topology(self) -> tuple[dict[int, int], set[int]]:
        """Slot owners, and the primaries that have a replica in sync."""
        owners = self.cluster.slot_owners()
        replicated = {p for p in set(owners.values()) if self.cluster.node(p).info("replication")["connected_slaves"]}
        return owners, replicated

    def _publish(self, owners: dict[int, int], replicated: set[int], tenant: str, n: int) -> None:
        stream = keys.events_key(tenant)
        port = owners[key_slot(stream.encode())]
        client = self._clients.setdefault(port, redis.Redis(port=port, socket_timeout=2, socket_connect_timeout=1))
        pipe = client.pipeline(transaction=False)
        pipe.xadd(stream, event_fields(tenant, "order_created", {"n": n}))  # type: ignore[arg-type]
        pipe.execute_command("WAIT", 1 if port in replicated else 0, 1000)  # type: ignore[no-untyped-call]
        entry, replicas = pipe.execute()
        (self.acked if replicas >= 1 else self.unconfirmed)[tenant].append(entry.decode())


class Follower:
    """A durable subscriber that records every event id it gets. It leaves as a careful
    client does, with a WebSocket close, reading on until the gateway's close frame: the
    gateway acknowledges what it wrote, so a client that dropped its socket instead would
    lose the frames still in flight. It comes back with the same durable name, subscribing
    again while the gateway answers UNAVAILABLE (Redis failing over)."""

    def __init__(self, gateway: GatewayServer, tenant: str) -> None:
        self.gateway = gateway
        self.tenant = tenant
        self.sessions: list[list[str]] = []
        self._task: asyncio.Task[None] | None = None
        self._client: ProtocolClient | None = None

    @property
    def received(self) -> list[str]:
        return [entry for session in self.sessions for entry in session]

    async def start(self) -> None:
        subscribed = asyncio.Event()
        self._task = asyncio.create_task(self._follow(subscribed))
        async with asyncio.timeout(30):
            await subscribed.wait()

    def outcome(self) -> str:
        if self._task is None or not self._task.done():
            return "running"
        if self._task.cancelled():
            return "cancelled"
        return repr(self._task.exception())

    async def stop(self) -> None:
        assert self._task is not None and self._client is not None
        await self._client.ws.close()
        async with asyncio.timeout(30):
            await self._task

    async def _follow(self, subscribed: asyncio.Event) -> None:
        session: list[str] = []
        self.sessions.append(session)
        async with connect(self.gateway.ws_url, token=make_token(self.tenant)) as client:
            self._client = client
            await client.subscribe("1", DURABLE_QUERY, {"durable": "screen"})
            subscribed.set()
            refusals = 0
            with suppress(websockets.ConnectionClosedOK):
                while True:
                    message = await client.recv(timeout=60)
                    if message["type"] == "error" and not session and refusals < 100:
                        assert message["payload"][0]["extensions"]["code"] == "UNAVAILABLE", message
                        refusals += 1
                        await asyncio.sleep(0.2)
                        await client.subscribe("1", DURABLE_QUERY, {"durable": "screen"})
                        continue
                    assert message["type"] == "next" and "errors" not in message["payload"], message
                    session.append(message["payload"]["data"]["events"]["id"])


@pytest.mark.log_errors(r"ERROR: Redis unavailable \(")  # the killed primary, until its replica takes over
async def test_a_primary_killed_while_events_flow_fails_over_and_durable_subscribers_lose_nothing(
    fresh_cluster: LocalCluster, make_gateway: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ragline.streaming")
    gateway: GatewayServer = make_gateway(redis_url=fresh_cluster.url)
    primaries = fresh_cluster.primary_ports()
    doomed = primaries[0]
    tenants = [fresh_cluster.tenant_on(port) for port in primaries for _ in range(4)]
    affected = [t for t in tenants if fresh_cluster.owner_of(keys.events_key(t)) == doomed]
    followers = {t: Follower(gateway, t) for t in tenants}
    for follower in followers.values():
        await follower.start()
    await wait_until(lambda: all(gateway.hub.counters.tenant(t).subscriptions == 1 for t in tenants))
    producer = ReplicatedProducer(fresh_cluster, tenants).start()
    try:
        await wait_until(lambda: all(len(producer.acked[t]) >= 20 for t in tenants), timeout=20)
        await followers[affected[0]].stop()  # this one is away during the failover
        fresh_cluster.kill(doomed)
        heir = await asyncio.to_thread(fresh_cluster.wait_for_failover, doomed)
        await followers[affected[0]].start()  # and comes back afterwards, to the same durable name
        counts = {t: producer.produced(t) for t in tenants}
        await wait_until(lambda: all(producer.produced(t) >= counts[t] + 20 for t in tenants), timeout=30)
    finally:
        producer.stop()
    with fresh_cluster.client() as client:
        final = {t: _stream_ids(client, t) for t in tenants}
    try:
        await wait_until(lambda: all(set(final[t]) <= set(followers[t].received) for t in tenants), timeout=30)
    except AssertionError:
        raise AssertionError(_missing_report(followers, final)) from None
    for follower in followers.values():
        await follower.stop()

    for tenant, follower in followers.items():
        assert set(producer.acked[tenant]) <= set(final[tenant])  # WAIT-acknowledged events survive
        _assert_ordered_with_allowed_repeats(follower.sessions, final[tenant], producer.unconfirmed[tenant])
    assert fresh_cluster.owner_of(keys.events_key(affected[0])) == heir
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("Redis Cluster primaries changed") and f"127.0.0.1:{doomed} gone" in m for m in messages)
    assert sum(m.startswith("Redis unavailable") for m in messages) <= 3, messages  # no crash loop
    assert gateway.hub.running and gateway.hub.available


def _missing_report(followers: dict[str, Follower], final: dict[str, list[str]]) -> str:
    """Which tenants miss which entries, and how each follower's task ended."""
    lines = []
    for tenant, follower in followers.items():
        missing = [e for e in final[tenant] if e not in set(follower.received)]
        if missing:
            lines.append(
                f"{tenant}: {len(missing)} of {len(final[tenant])} missing (first {missing[:3]}), "
                f"sessions {[len(s) for s in follower.sessions]}, task {follower.outcome()}"
            )
    return "events not delivered:\n" + "\n".join(lines)


def _stream_ids(client: redis.Redis, tenant: str) -> list[str]:
    entries: Any = client.xrange(keys.events_key(tenant))
    return [entry.decode() for entry, _ in entries]


def _assert_ordered_with_allowed_repeats(sessions: list[list[str]], final: list[str], unconfirmed: list[str]) -> None:
    """Each session in stream order without repeats; a later session may repeat only what
    an earlier one got (redelivery after a cursor move that was lost); nothing of the
    final stream missing; nothing that Redis did not hold (or a lost, unconfirmed add)."""
    seen: list[str] = []
    for session in sessions:
        assert session == sorted(session, key=keys.parse_stream_id) and len(set(session)) == len(session)
        repeated = [entry for entry in session if entry in seen]
        assert repeated == session[: len(repeated)], "repeats only at the start of a session"
        seen += session[len(repeated):]
    assert seen == sorted(seen, key=keys.parse_stream_id)
    assert set(final) <= set(seen)
    assert set(seen) - set(final) <= set(unconfirmed)


# -- several gateway hosts ---------------------------------------------------------


def _process_env(url: str, **extra: str) -> dict[str, str]:
    return {"RAGLINE_REDIS_URL": url, "RAGLINE_JWT_SECRET": SECRET, "RAGLINE_LOG_LEVEL": "info", **extra}


async def _admin_stats(port: int) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"http://127.0.0.1:{port}/graphql", json={"query": STATS_QUERY},
            headers={"Authorization": f"Bearer {make_token('ops', roles=['admin'])}"},
        )
    return dict(response.json()["data"]["stats"])


async def test_a_killed_hosts_durable_clients_resume_on_another_and_its_ephemeral_groups_are_swept(
    local_cluster: LocalCluster, tmp_path: Path
) -> None:
    env = _process_env(local_cluster.url, RAGLINE_ORPHAN_TIMEOUT="2", RAGLINE_JANITOR_INTERVAL="1")
    doomed = GatewayProcess(env, tmp_path / "a.log").start()
    survivor = GatewayProcess(env, tmp_path / "b.log").start()
    tenants = [local_cluster.tenant_on(port) for port in local_cluster.primary_ports()]
    producer = local_cluster.client()
    published: dict[str, list[str]] = {t: [] for t in tenants}
    try:
        async with AsyncExitStack() as stack:
            durable, ephemeral, staying = {}, {}, {}
            for tenant in tenants:
                token = make_token(tenant)
                durable[tenant] = await stack.enter_async_context(connect(doomed.ws_url, token=token))
                ephemeral[tenant] = await stack.enter_async_context(connect(doomed.ws_url, token=token))
                staying[tenant] = await stack.enter_async_context(connect(survivor.ws_url, token=token))
                await durable[tenant].subscribe("1", DURABLE_QUERY, {"durable": "kiosk"})
                await ephemeral[tenant].subscribe("1", EVENTS_QUERY)
                await staying[tenant].subscribe("1", EVENTS_QUERY)
            await wait_until(lambda: all(len(groups(producer, t)) == 3 for t in tenants))
            stats = await _admin_stats(survivor.port)  # both hosts' figures, wherever their keys live
            for _ in range(50):
                if stats["subscriptions"] >= 9:
                    break
                await asyncio.sleep(0.1)
                stats = await _admin_stats(survivor.port)
            assert {t["tenantId"]: t["subscriptions"] for t in stats["tenants"] if t["tenantId"] in tenants} == dict.fromkeys(tenants, 3)

            for n in range(10):
                for tenant in tenants:
                    published[tenant].append(publish(producer, tenant, "order_created", {"n": n}))
            before = {t: _ids(await durable[t].collect("1", "events", 10)) for t in tenants}

            def flushed() -> bool:  # a kill before the cursor flush would repeat the last events
                return all(
                    g["last-delivered-id"] == before[t][-1]
                    for t in tenants for g in groups(producer, t) if ":d:" in g["name"]
                )

            await wait_until(flushed)
            doomed.kill()
            for n in range(10, 20):
                for tenant in tenants:
                    published[tenant].append(publish(producer, tenant, "order_created", {"n": n}))
            for tenant in tenants:
                async with connect(survivor.ws_url, token=make_token(tenant)) as resumed:
                    await resumed.subscribe("1", DURABLE_QUERY, {"durable": "kiosk"})
                    after = _ids(await resumed.collect("1", "events", 10))
                    await resumed.expect_silence(0.3)
                assert before[tenant] + after == published[tenant]
                assert _ids(await staying[tenant].collect("1", "events", 20)) == published[tenant]

            def swept() -> bool:  # the killed host's ephemeral groups, not the survivor's
                names = [g["name"] for t in tenants for g in groups(producer, t)]
                return len(names) == 2 * len(tenants) and sum(":d:" in name for name in names) == len(tenants)

            await wait_until(swept, timeout=20)
    finally:
        doomed.stop()
        survivor.stop()
        producer.close()


async def test_admin_stats_include_hosts_whose_liveness_keys_live_on_every_primary(
    local_cluster: LocalCluster, make_gateway: Any
) -> None:
    gateway: GatewayServer = make_gateway(redis_url=local_cluster.url)
    tenant = local_cluster.tenant_on(local_cluster.primary_ports()[0])
    client = local_cluster.client()
    hosts = [_host_id_on(local_cluster, port) for port in local_cluster.primary_ports()]
    row = {"connections": 1, "subscriptions": 2, "delivered": 5, "dead_lettered": 0, "pending": 0}
    for host in hosts:  # other gateway hosts, as their heartbeat writes them
        client.set(keys.process_key(host), orjson.dumps({tenant: row}), ex=30)
    try:
        stats = await _admin_stats(gateway.port)
        by_tenant = {t["tenantId"]: t for t in stats["tenants"]}
        assert by_tenant[tenant]["subscriptions"] == 6 and by_tenant[tenant]["eventsDelivered"] == 15
    finally:
        client.delete(*(keys.process_key(host) for host in hosts))
        client.close()


def _host_id_on(cluster: LocalCluster, port: int) -> str:
    owners = cluster.slot_owners()
    for n in range(100_000):
        if owners[key_slot(keys.process_key(f"host-{n}").encode())] == port:
            return f"host-{n}"
    raise AssertionError("no host id found")


# -- the command line --------------------------------------------------------------


def test_ragline_publish_and_token_accept_a_cluster_url(local_cluster: LocalCluster) -> None:
    tenant = local_cluster.tenant_on(local_cluster.primary_ports()[2])
    env = {"RAGLINE_REDIS_URL": local_cluster.url, "RAGLINE_JWT_SECRET": SECRET, "PATH": ""}
    command = [sys.executable, "-c", "from ragline.gateway.cli import main; raise SystemExit(main())"]
    published = subprocess.run(
        [*command, "publish", "--tenant", tenant, "--type", "order_created", "--payload", json.dumps({"order_id": "o-1"})],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=30, check=True,
    ).stdout.strip()
    client = sync_redis(local_cluster.url)
    entries: Any = client.xrange(keys.events_key(tenant))
    [(entry, fields)] = entries
    client.close()
    assert (entry.decode(), fields[b"tenant_id"].decode()) == (published, tenant)
    token = subprocess.run(
        [*command, "token", "--tenant", tenant, "--user", "u1"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=30, check=True,
    ).stdout.strip()
    assert token.count(".") == 2



class _GatedReader(NotifiedReader):
    """The real reader, whose node reads wait for `gate` first: a node read in flight."""

    def __init__(self, url: str) -> None:
        super().__init__(open_cluster_reads(url), lambda host, port: open_single(node_url(url, host, port)))
        self.gate = asyncio.Event()

    async def _read_node(self, name: str, keys: list[str], heads: dict[str, str], count: int) -> Any:
        await self.gate.wait()
        return await super()._read_node(name, keys, heads, count)


async def test_a_stream_notified_while_its_node_is_being_read_waits_for_that_read(
    local_cluster: LocalCluster,
) -> None:
    """Regression: the reader counted such a stream as due but could not start its read
    (the node was busy), so it returned at once, forever, without letting the read in
    flight finish: the event loop spun and every subscriber of the process starved."""
    port = local_cluster.primary_ports()[0]
    first, second = local_cluster.tenant_on(port), local_cluster.tenant_on(port)
    with local_cluster.client() as producer:
        ids = {t: publish(producer, t, "order_created", {"n": 1}) for t in (first, second)}
    heads = {keys.events_key(first): "0-0", keys.events_key(second): "0-0"}
    reader = _GatedReader(local_cluster.url)
    try:
        # The first stream's read is in flight; then the second stream (same node) is wanted.
        assert await reader.read({keys.events_key(first): "0-0"}, 100, 2000) == []
        await reader.wake(keys.events_key(second))
        asyncio.get_running_loop().call_later(0.2, reader.gate.set)
        got: dict[str, list[str]] = {}
        for _ in range(20):  # spinning, these returned at once and the gate never opened
            for key, entries in await asyncio.wait_for(reader.read(heads, 100, 2000), 5):
                got[_text(key)] = [_text(entry_id) for entry_id, _ in entries]
            if len(got) == 2:
                break
        assert got == {keys.events_key(first): [ids[first]], keys.events_key(second): [ids[second]]}
    finally:
        reader.gate.set()
        await reader.aclose()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
