"""Who is online (`presence`, `presenceChanges`) and live figures (`statsUpdates`), as clients see them.

Presence counts every authenticated connection of any transport on any gateway process that
shares the Redis; a process that dies stops counting once its liveness key expired. The
gateways here read presence every CONTROL seconds; each process writes its counts ~0.05 s after
a connection opens or closes. `statsUpdates` computes once per interval and visibility, for all
of its subscribers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from test_http_subscriptions import MULTIPART, SSE, next_data, subscription
from test_resilience import process_env
from transports import BY_NAME

from helpers import (
    LEGACY_WS,
    TIMEOUT,
    GatewayProcess,
    GatewayServer,
    ProtocolClient,
    async_redis,
    connect,
    make_token,
    new_tenant,
    publish,
    wait_until,
)
from ragline.streaming import keys
from ragline.streaming.janitor import Janitor, JanitorConfig, SweepReport
from ragline.streaming.replies import text

pytestmark = pytest.mark.anyio
CONTROL = 0.2  # seconds between the gateways' presence reads
GRACE = 1.0  # a user gone this long is LEFT (unless its processes died)
PRESENCE_QUERY = "{ presence { tenantId connections users { userId connections since } } }"
CHANGES_QUERY = "subscription { presenceChanges { kind userId connections at } }"
STATS_UPDATES = (
    "subscription($every: Int) { statsUpdates(intervalSeconds: $every) "
    "{ connections subscriptions eventsDelivered tenants { tenantId connections eventsDelivered } } }"
)
INTERVAL_ERROR = "intervalSeconds must be between 1 and 3600"


# -- presence -------------------------------------------------------------------------


async def presence(port: int, token: str) -> dict[str, Any]:
    """The `presence` query over HTTP POST (no connection of its own)."""
    async with httpx.AsyncClient(timeout=TIMEOUT) as http:
        response = await http.post(
            f"http://127.0.0.1:{port}/graphql", json={"query": PRESENCE_QUERY},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert "errors" not in body, body
    return dict(body["data"]["presence"])


def counts(found: dict[str, Any]) -> dict[str, int]:
    return {user["userId"]: user["connections"] for user in found["users"]}


async def presence_becomes(port: int, token: str, expected: dict[str, int], timeout: float = 5.0) -> dict[str, Any]:
    """`presence` once its users and their connection counts are `expected` (it follows the
    connections ~0.05 s late); AssertionError with the last answer after `timeout`."""
    deadline = time.monotonic() + timeout
    while counts(found := await presence(port, token)) != expected:
        assert time.monotonic() < deadline, f"presence is {found}, expected {expected}"
        await asyncio.sleep(0.05)
    return found


def instant(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


async def change(client: ProtocolClient, op_id: str = "w", timeout: float = TIMEOUT) -> tuple[str, str, int]:
    """The watcher's next presence change: (kind, user id, connections)."""
    data = await client.next_data(op_id, "presenceChanges", timeout)
    return data["kind"], data["userId"], data["connections"]


async def test_presence_counts_every_transport_on_every_process_and_follows_the_closes(
    make_gateway: Any, tenant: str
) -> None:
    first: GatewayServer = make_gateway(control_interval=CONTROL)
    second: GatewayServer = make_gateway(control_interval=CONTROL)
    other = new_tenant()
    asker, other_asker = make_token(tenant, "asker"), make_token(other, "asker")
    async with AsyncExitStack() as stack:
        opened: dict[tuple[str, str], tuple[AsyncExitStack, float]] = {}
        for user, transport, gateway in [
            ("b", "graphql-ws", first),
            ("a", "graphql-transport-ws", first),
            ("b", "graphql-sse", second),
            ("c", "multipart", second),
            ("c", "ws", first),
            ("c", "stream", second),
        ]:
            begun = time.time()
            connection = AsyncExitStack()
            await connection.enter_async_context(BY_NAME[transport].open(gateway, make_token(tenant, user), False))
            opened[(user, transport)] = (connection, begun)
            stack.push_async_callback(connection.aclose)
        await stack.enter_async_context(BY_NAME["graphql-transport-ws"].open(second, make_token(other, "x"), False))

        everyone = {"a": 1, "b": 2, "c": 3}
        found = await presence_becomes(first.port, asker, everyone)
        assert found["tenantId"] == tenant and found["connections"] == 6  # HTTP queries are no connections
        assert [u["userId"] for u in found["users"]] == ["a", "b", "c"]
        since = {u["userId"]: instant(u["since"]) for u in found["users"]}
        # since: the user's earliest open connection (rounded to the millisecond)
        assert opened[("b", "graphql-ws")][1] - 0.002 <= since["b"] <= opened[("b", "graphql-sse")][1]
        assert opened[("c", "multipart")][1] - 0.002 <= since["c"] <= opened[("c", "ws")][1]
        assert await presence(second.port, asker) == found  # the same on either process
        assert counts(await presence_becomes(second.port, other_asker, {"x": 1})) == {"x": 1}

        connection, _ = opened[("b", "graphql-ws")]
        await connection.aclose()  # b's earliest: since is now its other connection's
        found = await presence_becomes(second.port, asker, {"a": 1, "b": 1, "c": 3})
        assert found["connections"] == 5
        b_since = instant(found["users"][1]["since"])
        assert opened[("b", "graphql-sse")][1] - 0.002 <= b_since <= opened[("c", "multipart")][1]

        for key in [("a", "graphql-transport-ws"), ("c", "stream"), ("c", "multipart")]:
            await opened[key][0].aclose()
        found = await presence_becomes(first.port, asker, {"b": 1, "c": 1})
        assert found["connections"] == 2
        for key in [("b", "graphql-sse"), ("c", "ws")]:
            await opened[key][0].aclose()
        assert await presence_becomes(second.port, asker, {}) == {"tenantId": tenant, "connections": 0, "users": []}
        theirs = await presence(first.port, other_asker)
        assert counts(theirs) == {"x": 1} and (theirs["tenantId"], theirs["connections"]) == (other, 1)


async def test_a_watcher_that_subscribes_at_once_is_in_its_first_joined_list(make_gateway: Any, tenant: str) -> None:
    """The initial JOINED list holds every user present, sorted: the watcher's own user
    (its connection is open) included, even when it subscribes right after connection_ack."""
    watched: GatewayServer = make_gateway(control_interval=CONTROL)
    async with connect(watched.ws_url, token=make_token(tenant, "x")):
        await presence_becomes(watched.port, make_token(tenant), {"x": 1})
        async with connect(watched.ws_url, token=make_token(tenant, "w")) as watcher:
            await watcher.subscribe("w", CHANGES_QUERY)
            assert [await change(watcher) for _ in range(2)] == [("JOINED", "w", 1), ("JOINED", "x", 1)]
            await watcher.expect_silence(2 * CONTROL)


async def test_presence_changes_join_leave_and_a_quick_reconnect_is_no_change(make_gateway: Any, tenant: str) -> None:
    watched: GatewayServer = make_gateway(control_interval=CONTROL)
    elsewhere: GatewayServer = make_gateway(control_interval=CONTROL)
    async with connect(elsewhere.ws_url, LEGACY_WS, token=make_token(tenant, "a")):
        a_since = (await presence_becomes(watched.port, make_token(tenant), {"a": 1}))["users"][0]["since"]
        async with connect(watched.ws_url, token=make_token(tenant, "w")) as watcher, connect(
            watched.ws_url, token=make_token(new_tenant(), "b")  # another tenant's user: never seen
        ):
            await watcher.subscribe("w", CHANGES_QUERY)  # at once: its own connection counts too
            first = await watcher.next_data("w", "presenceChanges")
            assert first == {"kind": "JOINED", "userId": "a", "connections": 1, "at": a_since}
            assert await change(watcher) == ("JOINED", "w", 1)

            async with connect(elsewhere.ws_url, token=make_token(tenant, "c")):
                assert await change(watcher) == ("JOINED", "c", 1)
                async with connect(watched.ws_url, token=make_token(tenant, "c")):
                    await presence_becomes(watched.port, make_token(tenant), {"a": 1, "c": 2, "w": 1})
                closed = time.monotonic()
            assert await change(watcher, timeout=GRACE + 4 * CONTROL + 2) == ("LEFT", "c", 0)
            # not before the grace, and soon after it
            assert GRACE - 0.1 <= time.monotonic() - closed <= GRACE + 4 * CONTROL + 1

            d_token = make_token(tenant, "d")
            async with connect(watched.ws_url, token=d_token):
                assert await change(watcher) == ("JOINED", "d", 1)
            await presence_becomes(watched.port, d_token, {"a": 1, "w": 1})  # d is gone from Redis...
            await asyncio.sleep(CONTROL + 0.05)  # ... long enough for the watch to see it gone
            async with connect(elsewhere.ws_url, LEGACY_WS, token=d_token):  # ... and back within a second
                await watcher.expect_silence(GRACE + 0.5)  # no LEFT d, no JOINED d
                async with connect(watched.ws_url, token=make_token(tenant, "e")):
                    assert await change(watcher) == ("JOINED", "e", 1)  # the next change is e's
                await watcher.complete("w")
                await watcher.expect_silence(0.1)


@pytest.fixture
def doomed(redis_url: str, tmp_path: Path) -> Iterator[Callable[[int], GatewayProcess]]:
    """Starts `ragline serve` processes with the given orphan timeout, to be killed."""
    started: list[GatewayProcess] = []

    def start(orphan_timeout: int) -> GatewayProcess:
        env = process_env(redis_url, RAGLINE_ORPHAN_TIMEOUT=str(orphan_timeout), RAGLINE_JANITOR_INTERVAL="0.5")
        started.append(GatewayProcess(env, tmp_path / f"doomed-{len(started)}.log"))
        return started[-1].start()

    yield start
    for process in started:
        process.stop()


def counted_by(client: redis.Redis, tenant: str, user: str) -> set[str]:
    """The ids of the processes that count `user` in the tenant's presence hash."""
    fields = [text(field) for field in client.hkeys(keys.presence_key(tenant))]
    return {field.partition("|")[0] for field in fields if field.partition("|")[2] == user}


async def test_the_users_of_a_killed_process_leave_within_the_orphan_timeout(
    make_gateway: Any, doomed: Callable[[int], GatewayProcess], redis_client: redis.Redis, tenant: str
) -> None:
    orphan_timeout = 3
    # no sweep by the survivor during the test: the watch itself must find the dead process
    survivor: GatewayServer = make_gateway(control_interval=CONTROL, janitor_interval=60.0)
    killed_process: GatewayProcess = doomed(orphan_timeout)
    asker = make_token(tenant, "asker")
    async with AsyncExitStack() as stack:
        for user, gateway in [("k", killed_process), ("s", killed_process), ("s", survivor), ("w", survivor)]:
            await stack.enter_async_context(connect(gateway.ws_url, token=make_token(tenant, user)))
        watcher = await stack.enter_async_context(connect(survivor.ws_url, token=make_token(tenant, "w")))
        await presence_becomes(survivor.port, asker, {"k": 1, "s": 2, "w": 2})
        await watcher.subscribe("w", CHANGES_QUERY)
        joined = [await change(watcher) for _ in range(3)]
        assert joined == [("JOINED", "k", 1), ("JOINED", "s", 2), ("JOINED", "w", 2)]

        killed_process.kill()
        killed = time.monotonic()
        assert counts(await presence(survivor.port, asker)) == {"k": 1, "s": 2, "w": 2}  # until its key expires
        bound = orphan_timeout + 2 * CONTROL + 0.6  # the key's TTL, the watch's read and liveness check, margin
        assert await change(watcher, timeout=bound + 1) == ("LEFT", "k", 0)
        assert time.monotonic() - killed <= bound
        found = await presence(survivor.port, asker)
        assert counts(found) == {"s": 1, "w": 2} and found["connections"] == 3  # s: its survivor connection
        await watcher.expect_silence(GRACE + 2 * CONTROL)  # and s, still here, gets no LEFT


async def test_a_dead_process_users_leave_at_once_even_when_a_janitor_swept_its_counts_first(
    make_gateway: Any, doomed: Callable[[int], GatewayProcess], redis_url: str, redis_client: redis.Redis, tenant: str
) -> None:
    """A killed process's key expired, and a janitor (of any process, at any moment) deleted
    its presence counts before the watch read them: its users still leave at once, not
    after the grace that a user who merely disconnected gets."""
    survivor: GatewayServer = make_gateway(control_interval=CONTROL, janitor_interval=60.0)
    killed_process: GatewayProcess = doomed(1)
    janitor = Janitor(async_redis(redis_url), JanitorConfig(process_id="test-janitor"))
    try:
        async with connect(killed_process.ws_url, token=make_token(tenant, "k")), connect(
            survivor.ws_url, token=make_token(tenant, "w")
        ) as watcher:
            await presence_becomes(survivor.port, make_token(tenant), {"k": 1, "w": 1})
            await watcher.subscribe("w", CHANGES_QUERY)
            assert [await change(watcher) for _ in range(2)] == [("JOINED", "k", 1), ("JOINED", "w", 1)]
            (dead_id,) = counted_by(redis_client, tenant, "k")
            killed_process.kill()
            await wait_until(lambda: not redis_client.exists(keys.process_key(dead_id)), interval=0.001)
            await janitor._sweep_presence(keys.presence_key(tenant), {}, SweepReport())  # the sweep's step for it
            swept = time.monotonic()
            assert not counted_by(redis_client, tenant, "k")
            assert await change(watcher) == ("LEFT", "k", 0)
            assert time.monotonic() - swept < GRACE - 0.3  # a read or two, not the grace
    finally:
        await janitor.redis.aclose()


# -- statsUpdates ---------------------------------------------------------------------


async def stats_ticks(client: ProtocolClient, op_id: str, count: int) -> list[tuple[float, dict[str, Any]]]:
    """`count` values of `statsUpdates` with when each arrived (monotonic)."""
    ticks = []
    for _ in range(count):
        value = await client.next_data(op_id, "statsUpdates")
        ticks.append((time.monotonic(), value))
    return ticks


async def test_stats_updates_come_at_once_then_every_interval(make_gateway: Any, tenant: str) -> None:
    gateway: GatewayServer = make_gateway()
    token = make_token(tenant)
    async with connect(gateway.ws_url, token=token) as every_second, connect(gateway.ws_url, token=token) as default:

        async def cadence() -> list[float]:
            subscribed = time.monotonic()
            await every_second.subscribe("1", STATS_UPDATES, {"every": 1})
            return [at - subscribed for at, _ in await stats_ticks(every_second, "1", 5)]

        async def default_interval() -> float:
            subscribed = time.monotonic()
            await default.subscribe("5", STATS_UPDATES)
            (at, value), = await stats_ticks(default, "5", 1)
            assert value["tenants"] == [{"tenantId": tenant, "connections": 2, "eventsDelivered": 0}]
            await default.expect_silence(4.0)  # the next one is due 5 s after the first
            return at - subscribed

        arrivals, first_default = await asyncio.gather(cadence(), default_interval())
    assert arrivals[0] < 0.5 and first_default < 0.5
    gaps = [later - earlier for earlier, later in pairwise(arrivals)]
    assert all(0.8 <= gap <= 1.2 for gap in gaps), gaps
    assert 3.8 <= arrivals[-1] - arrivals[0] <= 4.3, arrivals  # no drift over four intervals


@pytest.mark.parametrize("every", [0, 3601, -1])
async def test_stats_updates_refuse_an_interval_out_of_range(gateway: GatewayServer, tenant: str, every: int) -> None:
    async with connect(gateway.ws_url, token=make_token(tenant)) as client:
        await client.subscribe("bad", STATS_UPDATES, {"every": every})
        message = await client.recv()
        assert message["type"] == "error" and message["id"] == "bad", message
        (error,) = message["payload"]
        assert error["message"] == INTERVAL_ERROR and error["extensions"]["code"] == "BAD_USER_INPUT", message
        await client.subscribe("edge", STATS_UPDATES, {"every": 3600})  # the bounds themselves are fine
        await client.subscribe("low", STATS_UPDATES, {"every": 1})
        received = await client.collect_by_id({"edge": 1, "low": 1})
        assert received["edge"][0]["tenants"][0]["tenantId"] == tenant


async def test_stats_updates_show_the_callers_tenant_and_admins_every_tenant(make_gateway: Any, tenant: str) -> None:
    gateway: GatewayServer = make_gateway()
    theirs, ops = new_tenant(), new_tenant()
    async with connect(gateway.ws_url, token=make_token(tenant)) as mine, connect(
        gateway.ws_url, token=make_token(theirs)
    ), connect(gateway.ws_url, token=make_token(ops, "root", roles=["admin"])) as admin:
        await mine.subscribe("1", STATS_UPDATES, {"every": 1})
        await admin.subscribe("1", STATS_UPDATES, {"every": 1})
        own = await mine.next_data("1", "statsUpdates")
        assert own["tenants"] == [{"tenantId": tenant, "connections": 1, "eventsDelivered": 0}]
        assert own["connections"] == 1
        everyone = await admin.next_data("1", "statsUpdates")
        by_tenant = {t["tenantId"]: t["connections"] for t in everyone["tenants"]}
        assert by_tenant[tenant] == by_tenant[theirs] == by_tenant[ops] == 1, by_tenant
        assert everyone["connections"] == sum(by_tenant.values()) >= 3

        async with connect(gateway.ws_url, token=make_token(tenant, "u2")):  # the figures follow
            assert await _connections_become(mine, 2) and await _connections_become(admin, 2, tenant)
        assert await _connections_become(mine, 1)


async def _connections_become(client: ProtocolClient, expected: int, tenant: str | None = None) -> bool:
    """Read values (one a second) until `connections` (of `tenant`'s row, if given) is
    `expected`: within three of them."""
    seen = []
    for _ in range(3):
        value = await client.next_data("1", "statsUpdates")
        rows = {t["tenantId"]: t["connections"] for t in value["tenants"]}
        seen.append(value["connections"] if tenant is None else rows[tenant])
        if seen[-1] == expected:
            return True
    raise AssertionError(f"connections went {seen}, never {expected}")


async def test_subscribers_of_one_visibility_get_the_same_computation(
    make_gateway: Any, redis_client: redis.Redis, tenant: str
) -> None:
    """Events flow all the time, so figures computed at different moments differ: equal
    values at the same ticks mean one computation shared by both subscribers."""
    gateway: GatewayServer = make_gateway()
    stop = asyncio.Event()

    async def produce() -> None:
        while not stop.is_set():
            publish(redis_client, tenant, "order_created", {})
            await asyncio.sleep(0.02)

    async def consume(client: ProtocolClient) -> None:
        while True:
            await client.next_data("e", "events")

    token = make_token(tenant)
    async with connect(gateway.ws_url, token=token) as reader, connect(
        gateway.ws_url, token=token
    ) as one, connect(gateway.ws_url, token=make_token(tenant, "u2")) as two:
        await reader.subscribe("e", "subscription { events { id } }")
        await wait_until(lambda: gateway.hub.counters.tenant(tenant).subscriptions == 1)
        tasks = [asyncio.create_task(produce()), asyncio.create_task(consume(reader))]
        try:
            await one.subscribe("1", STATS_UPDATES, {"every": 1})
            await asyncio.sleep(0.3)  # the second subscriber comes later, within the same interval
            await two.subscribe("1", STATS_UPDATES, {"every": 1})
            first, second = await asyncio.gather(stats_ticks(one, "1", 4), stats_ticks(two, "1", 4))
        finally:
            stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    assert [value for _, value in first] == [value for _, value in second]
    assert all(abs(a - b) < 0.15 for (a, _), (b, _) in zip(first[1:], second[1:], strict=True))
    delivered = [value["eventsDelivered"] for _, value in first]
    assert delivered == sorted(set(delivered)), delivered  # the figures moved at every tick


# -- over HTTP ------------------------------------------------------------------------


async def test_presence_changes_and_stats_updates_over_sse_and_multipart(make_gateway: Any, tenant: str) -> None:
    gateway: GatewayServer = make_gateway(control_interval=CONTROL)
    token = make_token(tenant, "h")
    async with subscription(gateway.http_url, SSE, CHANGES_QUERY, token) as (_, changes):
        (own,) = await next_data(changes, "presenceChanges", 1)  # the SSE response is h's connection
        assert (own["kind"], own["userId"], own["connections"]) == ("JOINED", "h", 1)
        async with subscription(gateway.http_url, MULTIPART, STATS_UPDATES, token, {"every": 1}) as (_, stats):
            subscribed = time.monotonic()
            (first,) = await next_data(stats, "statsUpdates", 1)
            assert time.monotonic() - subscribed < 0.5
            assert first["tenants"] == [{"tenantId": tenant, "connections": 2, "eventsDelivered": 0}]
            async with connect(gateway.ws_url, token=make_token(tenant, "i")):
                (joined,) = await next_data(changes, "presenceChanges", 1)
                assert (joined["kind"], joined["userId"], joined["connections"]) == ("JOINED", "i", 1)
                (second,) = await next_data(stats, "statsUpdates", 1)
                assert 0.8 <= time.monotonic() - subscribed <= 1.5
                assert second["connections"] == 3
        (left,) = await next_data(changes, "presenceChanges", 1)
        assert (left["kind"], left["userId"], left["connections"]) == ("LEFT", "i", 0)
