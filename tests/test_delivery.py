"""Delivery guarantees: `after` resume, durable cursors, takeover, dead letters."""

from __future__ import annotations

import asyncio
import random

import pytest
import redis

from helpers import (
    EVENTS_QUERY,
    ORDERS_QUERY,
    GatewayServer,
    async_redis,
    connect,
    error_code,
    make_token,
    publish,
    wait_until,
    xadd_raw,
)
from ragline.streaming import keys

pytestmark = pytest.mark.anyio
RESUME_QUERY = "subscription($after: ID, $durable: String) { events(after: $after, durable: $durable) { id type payload } }"


async def subscribed(gateway: GatewayServer, tenant: str, count: int = 1) -> None:
    await wait_until(lambda: gateway.hub.counters.tenant(tenant).subscriptions >= count)


async def test_after_replays_exactly_the_later_events_then_continues_live(
    gateway: GatewayServer, redis_client: redis.Redis, tenant: str
) -> None:
    stored = [publish(redis_client, tenant, "order_created", {"n": n}) for n in range(1, 6)]
    async with connect(gateway.ws_url, token=make_token(tenant)) as client:
        await client.subscribe("1", RESUME_QUERY, {"after": stored[1]})
        assert [e["id"] for e in await client.collect("1", "events", 3)] == stored[2:]
        live = publish(redis_client, tenant, "order_created", {"n": 6})
        assert [e["id"] for e in await client.collect("1", "events", 1)] == [live]
        await client.expect_silence(0.2)


@pytest.mark.parametrize("run", range(12))
async def test_after_resume_sees_every_id_once_in_order_while_producers_publish(
    gateway: GatewayServer, redis_url: str, tenant: str, run: int
) -> None:
    rng = random.Random(run)
    producer = async_redis(redis_url)
    stream = keys.events_key(tenant)
    before = [(await producer.xadd(stream, _fields(tenant, i))).decode() for i in range(rng.randint(1, 40))]
    cut = rng.randrange(len(before))
    expected = before[cut + 1:]

    async def produce() -> None:
        for i in range(rng.randint(20, 80)):
            expected.append((await producer.xadd(stream, _fields(tenant, 1000 + i))).decode())
            if rng.random() < 0.3:
                await asyncio.sleep(rng.random() / 200)

    async with connect(gateway.ws_url, token=make_token(tenant)) as client:
        await client.subscribe("1", RESUME_QUERY, {"after": before[cut]})
        task = asyncio.create_task(produce())
        received: list[str] = []
        while not task.done():
            try:
                received += [e["id"] for e in await client.collect("1", "events", 1, timeout=0.2)]
            except TimeoutError:
                pass  # the producer is pausing
        await task
        while len(received) < len(expected):
            received += [e["id"] for e in await client.collect("1", "events", 1)]
        await client.expect_silence(0.1)
    await producer.aclose()
    assert received == expected


def _fields(tenant: str, n: int) -> dict[str, str]:
    return {"event_type": "order_created", "tenant_id": tenant, "payload": f'{{"n": {n}}}'}


@pytest.mark.parametrize("after", ["nope", "12", "1-2-3", "-1-0", ""])
async def test_a_malformed_after_is_bad_user_input_and_the_connection_stays_usable(
    gateway: GatewayServer, redis_client: redis.Redis, tenant: str, after: str
) -> None:
    async with connect(gateway.ws_url, token=make_token(tenant)) as client:
        await client.subscribe("bad", RESUME_QUERY, {"after": after})
        assert await error_code(client, "bad") == "BAD_USER_INPUT"
        await client.subscribe("good", EVENTS_QUERY)
        await subscribed(gateway, tenant)
        entry = publish(redis_client, tenant, "order_created", {})
        assert (await client.next_data("good", "events"))["id"] == entry


async def test_an_after_id_the_stream_no_longer_holds_is_cursor_expired(
    gateway: GatewayServer, redis_client: redis.Redis, tenant: str
) -> None:
    stored = [publish(redis_client, tenant, "order_created", {"n": n}) for n in range(5)]
    redis_client.xtrim(keys.events_key(tenant), maxlen=2, approximate=False)
    async with connect(gateway.ws_url, token=make_token(tenant)) as client:
        await client.subscribe("old", RESUME_QUERY, {"after": stored[0]})
        assert await error_code(client, "old") == "CURSOR_EXPIRED"
        await client.subscribe("fresh", RESUME_QUERY, {"after": stored[3]})
        assert [e["id"] for e in await client.collect("fresh", "events", 1)] == [stored[4]]


@pytest.mark.parametrize("registry", ["with_position", "recorded_before_positions"])
async def test_a_durable_subscriber_gets_exactly_what_arrived_while_it_was_away(
    gateway: GatewayServer, redis_client: redis.Redis, tenant: str, registry: str
) -> None:
    """The durable registry holds the cursor's position, for a resume to read in O(1); where
    it holds none (a cursor written before it kept them) the resume finds it all the same."""
    token = make_token(tenant)
    group = keys.durable_group(keys.EVENTS_KIND, tenant, "u1", "kitchen")
    durables = keys.durable_registry_key(tenant)
    async with connect(gateway.ws_url, token=token) as client:
        await client.subscribe("1", RESUME_QUERY, {"durable": "kitchen"})
        await subscribed(gateway, tenant)
        first = [publish(redis_client, tenant, "order_created", {"n": n}) for n in range(2)]
        assert [e["id"] for e in await client.collect("1", "events", 2)] == first
    await wait_until(lambda: not redis_client.hexists(durables, f"owner:{group}"))  # released
    assert redis_client.hget(durables, f"pos:{group}") == first[-1].encode()
    if registry == "recorded_before_positions":
        redis_client.hdel(durables, f"pos:{group}")
    missed = [publish(redis_client, tenant, "order_updated", {"n": n}) for n in range(3)]
    async with connect(gateway.ws_url, token=token) as client:
        await client.subscribe("1", RESUME_QUERY, {"durable": "kitchen"})
        assert [e["id"] for e in await client.collect("1", "events", 3)] == missed
        await client.expect_silence(0.3)


async def test_durable_names_are_scoped_to_the_user(
    gateway: GatewayServer, redis_client: redis.Redis, tenant: str
) -> None:
    alice_token, bob_token = make_token(tenant, "alice"), make_token(tenant, "bob")
    async with connect(gateway.ws_url, token=alice_token) as alice:
        await alice.subscribe("1", RESUME_QUERY, {"durable": "screen"})
        await subscribed(gateway, tenant)
    await wait_until(lambda: gateway.hub.counters.tenant(tenant).subscriptions == 0)
    missed = publish(redis_client, tenant, "order_created", {"n": 1})  # after alice's cursor
    async with connect(gateway.ws_url, token=bob_token) as bob:
        await bob.subscribe("1", RESUME_QUERY, {"durable": "screen"})  # bob's own, new cursor
        await subscribed(gateway, tenant)
        live = publish(redis_client, tenant, "order_created", {"n": 2})
        assert [e["id"] for e in await bob.collect("1", "events", 1)] == [live]  # no `missed` first
    await wait_until(lambda: gateway.hub.counters.tenant(tenant).subscriptions == 0)
    async with connect(gateway.ws_url, token=alice_token) as alice:
        await alice.subscribe("1", RESUME_QUERY, {"durable": "screen"})  # her old cursor
        assert [e["id"] for e in await alice.collect("1", "events", 2)] == [missed, live]
        await alice.expect_silence(0.3)


async def test_a_newer_subscription_takes_over_a_durable_name(
    gateway: GatewayServer, redis_client: redis.Redis, tenant: str
) -> None:
    token = make_token(tenant)
    async with connect(gateway.ws_url, token=token) as older, connect(gateway.ws_url, token=token) as newer:
        await older.subscribe("1", RESUME_QUERY, {"durable": "screen"})
        await subscribed(gateway, tenant)
        first = publish(redis_client, tenant, "order_created", {"n": 1})
        assert [e["id"] for e in await older.collect("1", "events", 1)] == [first]
        await newer.subscribe("2", RESUME_QUERY, {"durable": "screen"})
        assert await error_code(older, "1") == "DURABLE_TAKEN_OVER"
        rest = [publish(redis_client, tenant, "order_created", {"n": n}) for n in range(2, 5)]
        assert [e["id"] for e in await newer.collect("2", "events", 3)] == rest
        await older.expect_silence(0.3)


async def test_durable_with_after_repositions_the_cursor(
    gateway: GatewayServer, redis_client: redis.Redis, tenant: str
) -> None:
    stored = [publish(redis_client, tenant, "order_created", {"n": n}) for n in range(4)]
    async with connect(gateway.ws_url, token=make_token(tenant)) as client:
        await client.subscribe("1", RESUME_QUERY, {"durable": "d1", "after": stored[0]})
        assert [e["id"] for e in await client.collect("1", "events", 3)] == stored[1:]
        await client.complete("1")
        await wait_until(lambda: gateway.hub.counters.tenant(tenant).subscriptions == 0)
        await client.subscribe("2", RESUME_QUERY, {"durable": "d1", "after": stored[1]})
        assert [e["id"] for e in await client.collect("2", "events", 2)] == stored[2:]


@pytest.mark.parametrize("name", ["", "a b", "x" * 65, "a:b", "{t}"])
async def test_an_invalid_durable_name_is_bad_user_input(gateway: GatewayServer, tenant: str, name: str) -> None:
    async with connect(gateway.ws_url, token=make_token(tenant)) as client:
        await client.subscribe("1", RESUME_QUERY, {"durable": name})
        assert await error_code(client, "1") == "BAD_USER_INPUT"


BAD_ENTRIES = {
    "missing field event_type": lambda t: {"tenant_id": t, "payload": "{}"},
    "missing field tenant_id": lambda t: {"event_type": "order_created", "payload": "{}"},
    "missing field payload": lambda t: {"event_type": "order_created", "tenant_id": t},
    "payload is not JSON": lambda t: {"event_type": "order_created", "tenant_id": t, "payload": "{oops"},
    "payload is not a JSON object": lambda t: {"event_type": "order_created", "tenant_id": t, "payload": "[1, 2]"},
    "invalid event_type": lambda t: {"event_type": "Order Created", "tenant_id": t, "payload": "{}"},
    "tenant_id does not match the stream's tenant": lambda t: {"event_type": "order_created", "tenant_id": "intruder", "payload": "{}"},
    "occurred_at is not ISO-8601": lambda t: {"event_type": "order_created", "tenant_id": t, "payload": "{}", "occurred_at": "yesterday"},
}


@pytest.mark.parametrize("reason", list(BAD_ENTRIES))
async def test_bad_entries_are_dead_lettered_once_and_never_delivered(
    gateway: GatewayServer, redis_client: redis.Redis, tenant: str, reason: str
) -> None:
    async with connect(gateway.ws_url, token=make_token(tenant)) as first, connect(
        gateway.ws_url, token=make_token(tenant)
    ) as second:
        await first.subscribe("1", EVENTS_QUERY)
        await second.subscribe("1", ORDERS_QUERY)
        await subscribed(gateway, tenant, 2)
        good_before = publish(redis_client, tenant, "order_created", {"order_id": "a"})
        bad = xadd_raw(redis_client, tenant, BAD_ENTRIES[reason](tenant))
        good_after = publish(redis_client, tenant, "order_created", {"order_id": "b"})
        assert [e["id"] for e in await first.collect("1", "events", 2)] == [good_before, good_after]
        assert [e["id"] for e in await second.collect("1", "orderEvents", 2)] == [good_before, good_after]
    dead = redis_client.xrange(keys.dlq_key(tenant))
    assert [(f[b"original_id"].decode(), f[b"reason"].decode()) for _, f in dead] == [(bad, reason)]
    assert gateway.hub.counters.tenant(tenant).dead_lettered == 1



async def test_durable_clients_resuming_at_once_each_get_exactly_what_they_missed(
    gateway: GatewayServer, redis_client: redis.Redis, tenant: str
) -> None:
    """Clients that left at different positions (two of them more than one catch-up read,
    500 entries, apart from the others) come back at the same moment; their catch-up reads
    are shared, and each gets exactly the events after the last one it received."""
    users = [f"u{n}" for n in range(8)]
    last: dict[str, str] = {}
    for n, user in enumerate(users):
        async with connect(gateway.ws_url, token=make_token(tenant, user)) as client:
            await client.subscribe("1", RESUME_QUERY, {"durable": "back"})
            await subscribed(gateway, tenant)
            sent = publish(redis_client, tenant, "order_created", {"n": n})
            last[user] = (await client.collect("1", "events", 1))[0]["id"]
            assert last[user] == sent
        await wait_until(lambda: gateway.hub.counters.tenant(tenant).subscriptions == 0)
        if n in (0, 1):  # the first two left far behind the others
            with redis_client.pipeline(transaction=False) as pipe:
                for _ in range(600):
                    pipe.xadd(keys.events_key(tenant), {"event_type": "bulk", "tenant_id": tenant, "payload": "{}"})
                pipe.execute()
    for n in range(3):
        publish(redis_client, tenant, "order_updated", {"n": n})
    stream = [entry_id.decode() for entry_id, _ in redis_client.xrange(keys.events_key(tenant))]

    async def resume(user: str) -> tuple[list[str], list[str]]:
        missed = stream[stream.index(last[user]) + 1 :]
        async with connect(gateway.ws_url, token=make_token(tenant, user)) as client:
            await client.subscribe("1", RESUME_QUERY, {"durable": "back"})
            got = [e["id"] for e in await client.collect("1", "events", len(missed))]
            await client.expect_silence(0.3)
        return got, missed

    for got, missed in await asyncio.gather(*(resume(user) for user in users)):
        assert got == missed
