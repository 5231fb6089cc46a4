"""Live delivery over graphql-transport-ws and legacy graphql-ws, against real Redis."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
import redis

from helpers import (
    EVENTS_QUERY,
    LEGACY_WS,
    ORDERS_QUERY,
    GatewayServer,
    connect,
    groups,
    make_token,
    new_tenant,
    publish,
    wait_until,
    xadd_raw,
)

pytestmark = pytest.mark.anyio


async def subscribed(gateway: GatewayServer, tenant: str, count: int = 1) -> None:
    """Wait until `count` subscriptions of `tenant` are registered with the hub."""
    await wait_until(lambda: gateway.hub.counters.tenant(tenant).subscriptions >= count)


async def test_client_receives_exactly_the_events_published_after_it_subscribed(
    gateway: GatewayServer, redis_client: redis.Redis, tenant: str
) -> None:
    publish(redis_client, tenant, "order_created", {"order_id": "before"})
    async with connect(gateway.ws_url, token=make_token(tenant)) as client:
        await client.subscribe("1", EVENTS_QUERY)
        await subscribed(gateway, tenant)
        ids = [
            publish(redis_client, tenant, "order_created", {"order_id": "o1", "n": 1}, event_id="e-1"),
            publish(redis_client, tenant, "user_updated", {"user": "x", "n": 2}),
            publish(redis_client, tenant, "tool_call", {"n": 3}, occurred_at="2026-01-02T03:04:05+00:00"),
        ]
        events = await client.collect("1", "events", 3)
        await client.expect_silence(0.3)

    assert [e["id"] for e in events] == ids
    assert [e["type"] for e in events] == ["order_created", "user_updated", "tool_call"]
    assert [e["payload"]["n"] for e in events] == [1, 2, 3]
    assert {e["tenantId"] for e in events} == {tenant}
    assert [e["eventId"] for e in events] == ["e-1", None, None]
    millis = int(ids[0].split("-")[0])
    assert datetime.fromisoformat(events[0]["occurredAt"]) == datetime.fromtimestamp(millis / 1000, UTC)
    assert datetime.fromisoformat(events[2]["occurredAt"]) == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


async def test_two_subscribers_of_one_tenant_both_get_every_event(
    gateway: GatewayServer, redis_client: redis.Redis, tenant: str
) -> None:
    token = make_token(tenant)
    async with connect(gateway.ws_url, token=token) as first, connect(gateway.ws_url, token=token) as second:
        await first.subscribe("a", EVENTS_QUERY)
        await second.subscribe("b", EVENTS_QUERY)
        await subscribed(gateway, tenant, 2)
        ids = [publish(redis_client, tenant, "order_created", {"i": i}) for i in range(10)]
        assert [e["id"] for e in await first.collect("a", "events", 10)] == ids
        assert [e["id"] for e in await second.collect("b", "events", 10)] == ids


async def test_a_tenant_never_sees_another_tenants_events(
    gateway: GatewayServer, redis_client: redis.Redis, tenant: str
) -> None:
    other = new_tenant()
    async with connect(gateway.ws_url, token=make_token(tenant)) as client, connect(
        gateway.ws_url, token=make_token(other)
    ) as neighbour:
        await client.subscribe("1", EVENTS_QUERY)
        await neighbour.subscribe("1", EVENTS_QUERY)
        await subscribed(gateway, tenant)
        await subscribed(gateway, other)
        foreign = [publish(redis_client, other, "order_created", {"secret": i}) for i in range(3)]
        marker = publish(redis_client, tenant, "marker", {})
        assert [e["id"] for e in await client.collect("1", "events", 1)] == [marker]
        await client.expect_silence(0.3)
        assert [e["id"] for e in await neighbour.collect("1", "events", 3)] == foreign


async def test_types_filter_passes_prefix_matches_and_drops_the_rest(
    gateway: GatewayServer, redis_client: redis.Redis, tenant: str
) -> None:
    async with connect(gateway.ws_url, token=make_token(tenant)) as client:
        await client.subscribe("1", EVENTS_QUERY, {"types": ["order_*", "tool_call"]})
        await subscribed(gateway, tenant)
        created = publish(redis_client, tenant, "order_created", {"order_id": "o1"})
        publish(redis_client, tenant, "user_updated", {})
        tool = publish(redis_client, tenant, "tool_call", {})
        publish(redis_client, tenant, "tool_call_done", {})
        assert [e["id"] for e in await client.collect("1", "events", 2)] == [created, tool]
        await client.expect_silence(0.3)


async def test_order_events_with_order_id_pass_only_that_orders_events(
    gateway: GatewayServer, redis_client: redis.Redis, tenant: str
) -> None:
    async with connect(gateway.ws_url, token=make_token(tenant)) as client:
        await client.subscribe("all", ORDERS_QUERY)
        await client.subscribe("o1", ORDERS_QUERY, {"orderId": "o1"})
        await subscribed(gateway, tenant, 2)
        first = publish(redis_client, tenant, "order_created", {"order_id": "o1", "status": "pending"})
        second = publish(redis_client, tenant, "order_created", {"order_id": "o2"})
        publish(redis_client, tenant, "user_updated", {"order_id": "o1"})
        third = publish(redis_client, tenant, "order_completed", {"order_id": "o1", "status": "done"})
        received = await client.collect_by_id({"all": 3, "o1": 2})
        await client.expect_silence(0.3)

    assert [e["id"] for e in received["all"]] == [first, second, third]
    assert [(e["id"], e["orderId"], e["status"]) for e in received["o1"]] == [
        (first, "o1", "pending"),
        (third, "o1", "done"),
    ]
    assert received["all"][1]["status"] is None


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"types": []}, "'types' must not be empty; omit it for all types"),
        ({"types": ["Order Created"]}, "Invalid event type pattern 'Order Created'"),
    ],
)
async def test_bad_types_argument_is_bad_user_input_and_the_connection_stays_usable(
    gateway: GatewayServer, redis_client: redis.Redis, tenant: str, variables: dict[str, object], message: str
) -> None:
    async with connect(gateway.ws_url, token=make_token(tenant)) as client:
        await client.subscribe("bad", EVENTS_QUERY, variables)
        error = await client.recv()
        assert error["type"] == "error" and error["id"] == "bad"
        assert error["payload"][0]["message"] == message
        assert error["payload"][0]["extensions"]["code"] == "BAD_USER_INPUT"
        await client.subscribe("good", EVENTS_QUERY)
        await subscribed(gateway, tenant)
        entry = publish(redis_client, tenant, "ping", {})
        assert (await client.next_data("good", "events"))["id"] == entry


async def test_delivered_events_leave_nothing_pending_and_the_group_goes_with_the_subscription(
    gateway: GatewayServer, redis_client: redis.Redis, tenant: str
) -> None:
    async with connect(gateway.ws_url, token=make_token(tenant)) as client:
        await client.subscribe("1", EVENTS_QUERY, {"types": ["order_*"]})
        await client.subscribe("2", ORDERS_QUERY)
        await subscribed(gateway, tenant, 2)
        names = sorted(g["name"] for g in groups(redis_client, tenant))
        assert len(names) == 2
        assert names[0].startswith(f"ragline-ws-orders-{tenant}:") and names[1].startswith(f"ragline-ws-{tenant}:")
        ids = [publish(redis_client, tenant, kind, {"order_id": "o"}) for kind in ("order_created", "skipped", "order_updated")]
        await client.collect_by_id({"1": 2, "2": 2})

        def settled() -> bool:
            found = groups(redis_client, tenant)
            return all(g["pending"] == 0 and g["last-delivered-id"] == ids[-1] for g in found)

        await wait_until(settled)
        await client.complete("1")
        await wait_until(lambda: len(groups(redis_client, tenant)) == 1)
    await wait_until(lambda: groups(redis_client, tenant) == [])


async def test_an_entry_missing_payload_does_not_stop_the_subscription(
    gateway: GatewayServer, redis_client: redis.Redis, tenant: str
) -> None:
    bad = await delivered_around(
        gateway, redis_client, tenant,
        lambda: xadd_raw(redis_client, tenant, {"event_type": "order_created", "tenant_id": tenant}),
    )
    assert dead_letters(redis_client, tenant) == [(bad, "missing field payload")]


async def test_an_entry_that_is_not_utf8_is_dead_lettered_and_the_subscription_goes_on(
    gateway: GatewayServer, redis_client: redis.Redis, tenant: str
) -> None:
    fields = {"event_type": "order_created", "tenant_id": tenant, "payload": b'{"note": "\xff"}'}
    bad = await delivered_around(
        gateway, redis_client, tenant, lambda: redis_client.xadd(f"ragline:{{{tenant}}}:events", fields).decode()
    )
    assert dead_letters(redis_client, tenant) == [(bad, "a field is not UTF-8")]


async def delivered_around(
    gateway: GatewayServer, redis_client: redis.Redis, tenant: str, add_bad: Callable[[], str]
) -> str:
    """A live subscriber gets the valid events published before and after a bad entry
    (`add_bad` appends it, returning its id), and only them; the bad entry's id."""
    async with connect(gateway.ws_url, token=make_token(tenant)) as client:
        await client.subscribe("1", EVENTS_QUERY)
        await subscribed(gateway, tenant)
        before = publish(redis_client, tenant, "order_created", {"n": 1})
        bad = add_bad()
        after = publish(redis_client, tenant, "order_created", {"n": 2})
        assert [e["id"] for e in await client.collect("1", "events", 2)] == [before, after]
    return bad


def dead_letters(redis_client: redis.Redis, tenant: str) -> list[tuple[str, str]]:
    """(original id, reason) of each entry in the tenant's dead-letter stream."""
    dead = redis_client.xrange(f"ragline:{{{tenant}}}:dlq")
    return [(f[b"original_id"].decode(), f[b"reason"].decode()) for _, f in dead]


async def test_legacy_graphql_ws_clients_receive_events(
    gateway: GatewayServer, redis_client: redis.Redis, tenant: str
) -> None:
    async with connect(gateway.ws_url, LEGACY_WS, token=make_token(tenant)) as client:
        await client.subscribe("1", EVENTS_QUERY)
        await subscribed(gateway, tenant)
        ids = [publish(redis_client, tenant, "order_created", {"i": i}) for i in range(3)]
        events = await client.collect("1", "events", 3)
        assert [e["id"] for e in events] == ids
        await client.complete("1")
        await wait_until(lambda: groups(redis_client, tenant) == [])


async def test_payload_json_round_trips_unchanged(
    gateway: GatewayServer, redis_client: redis.Redis, tenant: str
) -> None:
    payload = {"order_id": "o1", "items": [{"sku": "a", "qty": 2}], "note": "ünïcode ✓", "total": 12.5, "paid": None}
    async with connect(gateway.ws_url, token=make_token(tenant)) as client:
        await client.subscribe("1", EVENTS_QUERY)
        await subscribed(gateway, tenant)
        publish(redis_client, tenant, "order_created", payload)
        event = await client.next_data("1", "events")
    assert event["payload"] == json.loads(json.dumps(payload))
