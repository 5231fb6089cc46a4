"""Payload filters (`where`): every operator, paths into objects and lists, combinations,
variables, limits, history replay, durable cursors, over real clients."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis
from gql import Client, GraphQLRequest
from gql.transport.websockets import WebsocketsTransport
from test_http_subscriptions import MULTIPART, SSE, next_data, subscription

from helpers import GatewayServer, connect, groups, make_token, metric, publish, wait_until
from ragline.streaming import keys

pytestmark = pytest.mark.anyio
EVENTS = "subscription($where: EventFilter, $after: ID) { events(where: $where, after: $after) { id } }"
ORDERS = (
    "subscription($orderId: String, $where: EventFilter, $after: ID) "
    "{ orderEvents(orderId: $orderId, where: $where, after: $after) { id } }"
)
PAYLOADS: list[tuple[str, dict[str, Any]]] = [
    ("order_created", {  # 0
        "order_id": "o1", "total": 120, "status": "paid", "station": "grill",
        "customer": {"tier": "gold", "name": "Ann"}, "items": [{"sku": "A", "qty": 2}, {"sku": "B", "qty": 1}],
        "tags": ["rush", "vip"], "note": "extra spicy", "at": "2026-01-02T10:00:00Z",
    }),
    ("order_created", {  # 1
        "order_id": "o2", "total": 80.5, "status": "pending", "station": "salad", "customer": {"tier": "silver"},
        "items": [{"sku": "C", "qty": 1}], "tags": [], "note": None, "at": "2026-01-02T11:00:00Z",
    }),
    ("order_updated", {  # 2
        "order_id": "o1", "total": 120.0, "status": "done", "station": "grill", "items": [{"sku": "A", "qty": 3}],
        "at": "2026-01-03T09:00:00Z",
    }),
    ("tool_call", {"conversation": "c1", "tool": "search", "args": {"q": "pizza"}}),  # 3
    ("tool_call", {"conversation": "c2", "tool": "search", "flag": True}),  # 4
    ("order_created", {"order_id": "o3", "total": "100", "status": "pending", "items": [[{"sku": "A"}]]}),  # 5
]
# Each filter and the payloads (by index) it lets through.
FILTERS: dict[str, tuple[dict[str, Any], list[int]]] = {
    "eq": ({"path": "status", "eq": "paid"}, [0]),
    "eq, numbers by value": ({"path": "total", "eq": 120}, [0, 2]),
    "eq null": ({"path": "note", "eq": None}, [1]),
    "ne, missing paths false": ({"path": "status", "ne": "pending"}, [0, 2]),
    "gt, not across kinds": ({"path": "total", "gt": 100}, [0, 2]),
    "gte": ({"path": "total", "gte": 120}, [0, 2]),
    "lt": ({"path": "total", "lt": 100}, [1]),
    "lte on ISO times": ({"path": "at", "lte": "2026-01-02T11:00:00Z"}, [0, 1]),
    "in": ({"path": "station", "in": ["salad", "bar"]}, [1]),
    "notIn": ({"path": "station", "notIn": ["salad"]}, [0, 2]),
    "contains, substring": ({"path": "note", "contains": "spicy"}, [0]),
    "contains, list member": ({"path": "tags", "contains": "vip"}, [0]),
    "beginsWith": ({"path": "customer.name", "beginsWith": "An"}, [0]),
    "exists": ({"path": "customer", "exists": True}, [0, 1]),
    "exists false": ({"path": "customer", "exists": False}, [2, 3, 4, 5]),
    "nested path": ({"path": "customer.tier", "eq": "gold"}, [0]),
    "list fan-in": ({"path": "items.sku", "eq": "A"}, [0, 2, 5]),
    "list index": ({"path": "items.1.sku", "eq": "B"}, [0]),
    "list index, none": ({"path": "items.0.sku", "eq": "B"}, []),
    "and, or, not": (
        {"or": [
            {"path": "tool", "eq": "search"},
            {"and": [{"path": "total", "gte": 100}, {"not": {"path": "status", "eq": "done"}}]},
        ]},
        [0, 3, 4],
    ),
    "not of a missing path": ({"not": {"path": "customer.tier", "eq": "gold"}}, [1, 2, 3, 4, 5]),
}


def published(redis_client: redis.Redis, tenant: str) -> tuple[str, list[str]]:
    """The payloads, published after a marker; (the marker's id, their ids)."""
    marker = publish(redis_client, tenant, "marker", {})
    return marker, [publish(redis_client, tenant, kind, payload) for kind, payload in PAYLOADS]


async def test_every_operator_and_path_over_graphql_ws(
    gateway: GatewayServer, redis_client: redis.Redis, tenant: str
) -> None:
    """Each filter replays the stream from before the payloads (`after`): history is filtered
    too; each gets exactly its ids, then nothing."""
    marker, ids = published(redis_client, tenant)
    names = list(FILTERS)
    for start in range(0, len(names), 10):  # 20 subscriptions per connection at most
        chosen = names[start : start + 10]
        async with connect(gateway.ws_url, token=make_token(tenant)) as client:
            for name in chosen:
                await client.subscribe(name, EVENTS, {"where": FILTERS[name][0], "after": marker})
            expected = {name: [ids[i] for i in FILTERS[name][1]] for name in chosen}
            received = await client.collect_by_id({name: len(want) for name, want in expected.items()})
            await client.expect_silence(0.3)
        for name, want in expected.items():
            assert [e["id"] for e in received[name]] == want, name


@pytest.mark.parametrize("accept", [SSE, MULTIPART], ids=["graphql-sse", "multipart"])
async def test_a_filter_with_order_id_and_as_a_variable_over_http(
    gateway: GatewayServer, redis_client: redis.Redis, tenant: str, accept: str
) -> None:
    marker, ids = published(redis_client, tenant)
    variables = {"orderId": "o1", "where": {"path": "status", "eq": "done"}, "after": marker}
    async with subscription(gateway.http_url, accept, ORDERS, make_token(tenant), variables) as (response, messages):
        assert response.status_code == 200
        first = await next_data(messages, "orderEvents", 1)
        later = publish(redis_client, tenant, "order_updated", {"order_id": "o1", "status": "done"})
        publish(redis_client, tenant, "order_updated", {"order_id": "o2", "status": "done"})  # another order
        publish(redis_client, tenant, "order_updated", {"order_id": "o1", "status": "paid"})  # another status
        closing = publish(redis_client, tenant, "order_updated", {"order_id": "o1", "status": "done"})
        got = first + await next_data(messages, "orderEvents", 2)
    assert [e["id"] for e in got] == [ids[2], later, closing]


async def test_a_filter_given_as_a_variable_over_gql(
    gateway: GatewayServer, redis_client: redis.Redis, tenant: str
) -> None:
    transport = WebsocketsTransport(
        url=gateway.ws_url, init_payload={"authorization": f"Bearer {make_token(tenant)}"},
        subprotocols=[WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL],
    )
    marker, ids = published(redis_client, tenant)
    where = {"and": [{"path": "conversation", "eq": "c1"}, {"path": "args.q", "exists": True}]}
    request = GraphQLRequest(EVENTS, variable_values={"where": where, "after": marker})
    async with Client(transport=transport) as session:
        async for data in session.subscribe(request):
            assert data["events"]["id"] == ids[3]
            break


async def test_filtered_out_events_leave_nothing_pending_and_a_durable_cursor_keeps_its_filter(
    gateway: GatewayServer, redis_client: redis.Redis, tenant: str
) -> None:
    query = 'subscription($where: EventFilter) { events(where: $where, durable: "grill") { id } }'
    grill = {"where": {"path": "station", "eq": "grill"}}
    token = make_token(tenant)
    async with connect(gateway.ws_url, token=token) as client:
        await client.subscribe("1", query, grill)
        await wait_until(lambda: len(groups(redis_client, tenant)) == 1)
        kept = publish(redis_client, tenant, "order_created", {"station": "grill"})
        skipped = publish(redis_client, tenant, "order_created", {"station": "salad"})
        assert [e["id"] for e in await client.collect("1", "events", 1)] == [kept]
        (group,) = groups(redis_client, tenant)
        await wait_until(lambda: groups(redis_client, tenant)[0]["last-delivered-id"] == skipped)
        assert groups(redis_client, tenant)[0]["pending"] == 0  # acknowledged as skipped
    later = [publish(redis_client, tenant, "order_created", {"station": s}) for s in ("salad", "grill", "bar")]
    async with connect(gateway.ws_url, token=token) as client:
        await client.subscribe("1", query, grill)
        assert [e["id"] for e in await client.collect("1", "events", 1)] == [later[1]]
        await client.expect_silence(0.3)
    assert group["name"] == keys.durable_group(keys.EVENTS_KIND, tenant, "u1", "grill")


REFUSED: dict[str, tuple[dict[str, Any], str]] = {
    "conditions": (
        {"and": [{"path": "a", "eq": n} for n in range(21)]}, "where: at most 20 conditions (this filter has 21)"
    ),
    "depth": (
        {"not": {"not": {"not": {"not": {"not": {"path": "a", "eq": 1}}}}}},
        "where.not.not.not.not.not: nesting deeper than 5 levels",
    ),
    "values": ({"path": "a", "in": list(range(101))}, "where.in: at most 100 values (got 101)"),
    "segments": ({"path": ".".join("a" * 11), "eq": 1}, "where.path: at most 10 segments (got 11)"),
    "path length": ({"path": "a" * 257, "eq": 1}, "where.path: at most 256 characters (got 257)"),
    "no operator": ({"path": "a"}, "where: path requires an operator"),
    "two operators": ({"path": "a", "eq": 1, "gt": 2}, "where: a path takes exactly one operator, got eq and gt"),
    "operator without path": ({"gt": 1}, "where: gt requires a path"),
    "nothing": ({}, "where: a filter needs exactly one of and, or, not, or a path with one operator"),
    "and beside a path": (
        {"and": [{"path": "a", "eq": 1}], "path": "b", "eq": 2},
        "where: a filter needs exactly one of and, or, not, or a path with one operator",
    ),
    "the place inside": (
        {"or": [{"path": "a", "eq": 1}, {"path": "b", "eq": 1}, {"path": "a..b", "eq": 1}]},
        "where.or[2].path: empty segment",
    ),
}


@pytest.mark.parametrize("transport", ["graphql-transport-ws", "graphql-ws"])
async def test_each_limit_and_malformed_filter_is_bad_user_input_naming_the_place(
    gateway: GatewayServer, tenant: str, transport: str
) -> None:
    async with connect(gateway.ws_url, transport, token=make_token(tenant)) as client:
        for name, (where, message) in REFUSED.items():
            await client.subscribe(name, EVENTS, {"where": where})
            assert await refusal(client, name) == ("BAD_USER_INPUT", message), name
        await client.subscribe("fine", EVENTS, {"where": {"path": "a", "exists": True}})  # still usable
        await client.expect_silence(0.2)


async def refusal(client: Any, op_id: str) -> tuple[str, str]:
    """(code, message) of the error that ended `op_id`."""
    message = await client.recv()
    assert message.get("id") == op_id, message
    if message["type"] == "error":
        payload = message["payload"]
        error = payload[0] if isinstance(payload, list) else payload
    else:
        assert message["type"] in {"next", "data"} and message["payload"].get("errors"), message
        error = message["payload"]["errors"][0]
        assert (await client.recv()) == {"id": op_id, "type": "complete"}
    return str(error["extensions"]["code"]), str(error["message"])


async def test_subscribers_with_the_same_filter_share_one_evaluation_per_event(
    gateway: GatewayServer, redis_client: redis.Redis, tenant: str
) -> None:
    """Four subscribers on four transports' worth of sockets, two distinct filters: per event,
    two evaluations (`ragline_filter_evaluations_total`), not four."""
    grill, salad = {"path": "station", "eq": "grill"}, {"path": "station", "eq": "salad"}
    token = make_token(tenant)
    before = await metric(gateway.port, "ragline_filter_evaluations_total")
    async with connect(gateway.ws_url, token=token) as a, connect(gateway.ws_url, token=token) as b, connect(
        gateway.ws_url, "graphql-ws", token=token
    ) as c:
        for op, client, where in (("1", a, grill), ("2", b, grill), ("3", c, grill), ("4", c, salad)):
            await client.subscribe(op, EVENTS, {"where": where})
        await wait_until(lambda: len(groups(redis_client, tenant)) == 4)
        ids = [publish(redis_client, tenant, "order_created", {"station": s}) for s in ("grill", "salad", "bar")]
        for op, client in (("1", a), ("2", b)):
            assert [e["id"] for e in await client.collect(op, "events", 1)] == [ids[0]]
        # c's two operations: their frames may come in either order (one subscriber each)
        both = await c.collect_by_id({"3": 1, "4": 1})
        assert {op: [e["id"] for e in got] for op, got in both.items()} == {"3": [ids[0]], "4": [ids[1]]}
        await wait_until(lambda: all(g["last-delivered-id"] == ids[2] for g in groups(redis_client, tenant)))
        assert await metric(gateway.port, "ragline_filter_evaluations_total") - before == 2 * 3


EXAMPLES = Path(__file__).resolve().parent.parent / "graphql" / "operations"


async def test_the_documented_examples_select_what_they_say(
    gateway: GatewayServer, redis_client: redis.Redis, tenant: str
) -> None:
    """docs/filters.md includes these operations from graphql/operations/."""
    examples = {
        "kitchenStation": ({"station": "grill"}, "orderEvents"),
        "largeOrders": ({"minimum": 100}, "orderEvents"),
        "conversationToolCalls": ({"conversation": "c-7"}, "events"),
    }
    async with connect(gateway.ws_url, token=make_token(tenant)) as client:
        for name, (variables, _) in examples.items():
            await client.subscribe(name, (EXAMPLES / f"{name}.graphql").read_text(), variables)
        await wait_until(lambda: len(groups(redis_client, tenant)) == len(examples))
        events = [
            ("order_created", {"order_id": "o1", "station": "grill", "status": "new", "total": 40, "currency": "EUR"}),
            ("order_updated", {"order_id": "o1", "station": "grill", "status": "done", "total": 40, "currency": "EUR"}),
            ("order_created", {"order_id": "o2", "station": "bar", "status": "new", "total": 180, "currency": "EUR"}),
            ("order_created", {"order_id": "o3", "station": "bar", "status": "new", "total": 250, "currency": "USD"}),
            ("tool_call", {"conversation_id": "c-7", "tool": "search"}),
            ("tool_call", {"conversation_id": "c-8", "tool": "search"}),
            ("notification", {"conversation_id": "c-7"}),
        ]
        ids = [publish(redis_client, tenant, kind, payload) for kind, payload in events]
        received = await client.collect_by_id({"kitchenStation": 1, "largeOrders": 1, "conversationToolCalls": 1})
        await client.expect_silence(0.3)
    assert {name: [e["id"] for e in got] for name, got in received.items()} == {
        "kitchenStation": [ids[0]], "largeOrders": [ids[2]], "conversationToolCalls": [ids[4]],
    }
