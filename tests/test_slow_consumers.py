"""The slow-consumer deadline holds on every /graphql WebSocket path: legacy graphql-ws, and
graphql-transport-ws on Strawberry's path (a document the shared fast path declines) as on
the fast path (tests/test_backpressure.py). A client that stops reading loses its operations,
its ephemeral groups and nothing it did not receive; the others get everything."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import redis
import websockets
from test_backpressure import EVENTS, PAYLOAD, SLOW_CONSUMER_CLOSES, SLOW_CONSUMER_ERROR

from helpers import (
    EVENTS_QUERY,
    LEGACY_WS,
    TRANSPORT_WS,
    GatewayServer,
    ProtocolClient,
    connect,
    groups,
    make_token,
    metric,
    publish,
    wait_until,
)
from ragline.streaming import keys

pytestmark = pytest.mark.anyio
SLOW_CONSUMER_REASON = SLOW_CONSUMER_ERROR["message"]
# On graphql-transport-ws, QUERY takes the shared fast path and STRAWBERRY_QUERY, whose
# inline fragment the planner declines, Strawberry's; legacy graphql-ws always takes Strawberry's.
QUERY = "subscription($d: String) { events(durable: $d) { id payload } }"
STRAWBERRY_QUERY = "subscription($d: String) { ... on Subscription { events(durable: $d) { id payload } } }"
RESUME_QUERY = "subscription($d: String) { events(durable: $d) { id } }"
QUERIES = {LEGACY_WS: QUERY, TRANSPORT_WS: STRAWBERRY_QUERY}  # Strawberry's path on both


@asynccontextmanager
async def stalled_client(gateway: GatewayServer, protocol: str, token: str) -> AsyncIterator[ProtocolClient]:
    """A client whose reads stop once it is connected: a 64 KB receive buffer (not under
    loopback's MSS, or reading back crawls) and a queue of one message, so that the server's
    socket buffers fill and its writes wait, as tests/test_backpressure.py does."""
    sock = socket.create_connection(("127.0.0.1", gateway.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
    async with websockets.connect(gateway.ws_url, sock=sock, subprotocols=[protocol], max_queue=1) as raw:
        client = ProtocolClient(raw, protocol)
        assert (await client.init({"token": token}))["type"] == "connection_ack"
        yield client


def publish_bulk(client: redis.Redis, tenant: str) -> list[str]:
    with client.pipeline(transaction=False) as pipe:
        for n in range(EVENTS):
            fields = {"event_type": "bulk", "tenant_id": tenant, "payload": json.dumps({**PAYLOAD, "n": n})}
            pipe.xadd(keys.events_key(tenant), fields)
        return [i.decode() for i in pipe.execute()]


@dataclass
class Received:
    """What the stalled client finally read."""

    events: dict[str, list[str]]  # by operation, the ids of its events
    after: list[dict[str, Any]]  # the messages after the events
    closed: websockets.ConnectionClosed | None  # how the connection ended; None: it is still open


async def read_once_given_up(gateway: GatewayServer, client: ProtocolClient, operations: list[str]) -> Received:
    """Stay stalled until the gateway gives up on the client, then read all it was sent.

    The wait polls the process's own figure every 5 ms: the gateway gives its last words a
    second to be taken, so the reading must start well within it. graphql-transport-ws keeps
    the connection open after them: the reading stops at the last operation's `complete`."""
    figures = gateway.app.state.runtime.metrics.delivery
    try:
        await wait_until(lambda: figures.slow_consumers >= 1, timeout=30, interval=0.005)
    except AssertionError:
        raise AssertionError("the gateway never gave up on the stalled client as a slow consumer") from None
    return await read_all(client, operations)


async def read_once_dropped(gateway: GatewayServer, client: ProtocolClient, operations: list[str]) -> Received:
    """Stay stalled, never taking the last words, until the gateway has ended the connection,
    then read all it was sent."""
    runtime = gateway.app.state.runtime
    await wait_until(lambda: runtime.metrics.delivery.slow_consumers >= 1, timeout=30)
    await wait_until(lambda: len(runtime.connections) == 1, timeout=5)  # the healthy one's
    return await read_all(client, operations)


async def read_all(client: ProtocolClient, operations: list[str]) -> Received:
    """All the client was sent: each operation's events up to the first other message, then the
    rest, until the connection ends or, on graphql-transport-ws, every operation completed."""
    received = Received({operation: [] for operation in operations}, [], None)
    try:
        while sum(message["type"] == "complete" for message in received.after) < len(operations):
            message = await client.recv()
            if message["type"] in {"next", "data"} and "errors" not in message["payload"] and not received.after:
                received.events[message["id"]].append(message["payload"]["data"]["events"]["id"])
            else:
                received.after.append(message)  # an event among these fails the test: none may follow an error
    except websockets.ConnectionClosed as closed:
        received.closed = closed
    return received


async def give_up_on_a_stalled_client(
    gateway: GatewayServer, redis_client: redis.Redis, tenant: str, protocol: str, operations: dict[str, str],
    *, durable: str | None = None, reader: Any = read_once_given_up,
) -> tuple[list[str], Received]:
    """A stalled client (with `operations`, by id) and a healthy one subscribed to the tenant,
    many large events published: the healthy one gets them all; the gateway ends the stalled
    one's operations as a slow consumer, counted once for the connection, and removes their
    groups unless durable. The published ids, and what the stalled client finally reads."""
    token = make_token(tenant)
    closes_before = await metric(gateway.port, SLOW_CONSUMER_CLOSES)
    async with stalled_client(gateway, protocol, token) as stalled:
        for operation_id, query in operations.items():
            await stalled.subscribe(operation_id, query, {"d": durable})
        await wait_until(lambda: len(groups(redis_client, tenant)) == len(operations))
        stalled_groups = {group["name"] for group in groups(redis_client, tenant)}
        async with connect(gateway.ws_url, token=token) as healthy:
            await healthy.subscribe("h", EVENTS_QUERY)
            await wait_until(lambda: gateway.hub.counters.tenant(tenant).subscriptions == len(operations) + 1)
            ids = publish_bulk(redis_client, tenant)
            healthy_events, received = await asyncio.gather(
                healthy.collect("h", "events", EVENTS), reader(gateway, stalled, list(operations))
            )
            assert [e["id"] for e in healthy_events] == ids
            assert gateway.hub.counters.tenant(tenant).subscriptions == 1
            names = {group["name"] for group in groups(redis_client, tenant)}
            kept = stalled_groups & names  # a durable cursor outlives its subscription; an ephemeral group not
            assert kept == (stalled_groups if durable is not None else set()), (stalled_groups, names)
            assert len(names - stalled_groups) == 1, names  # the healthy one's
    assert await metric(gateway.port, SLOW_CONSUMER_CLOSES) - closes_before == 1
    for operation_id, written in received.events.items():  # a prefix of the events each
        assert len(written) < EVENTS and written == ids[: len(written)], (operation_id, len(written), written[-1:])
    assert any(received.events.values())
    return ids, received


def assert_slow_consumer_ending(protocol: str, received: Received) -> None:
    """The documented end for every operation, or as much of it as the gateway wrote before
    dropping a client that did not take it within a second (then without a close frame).
    graphql-transport-ws: a `next` with the SLOW_CONSUMER error, then `complete`, the
    connection left open; legacy graphql-ws: an `error` with it, then close 1013."""
    after, closed = received.after, received.closed
    if protocol == TRANSPORT_WS:
        ending = [
            message
            for operation_id in received.events
            for message in (
                {"id": operation_id, "type": "next", "payload": {"data": None, "errors": [SLOW_CONSUMER_ERROR]}},
                {"id": operation_id, "type": "complete"},
            )
        ]
        if closed is None:
            assert after == ending
        else:
            assert closed.rcvd is None and after == ending[: len(after)], (after, closed)
    else:
        ending = [{"id": operation_id, "type": "error", "payload": SLOW_CONSUMER_ERROR} for operation_id in received.events]
        assert closed is not None
        if closed.rcvd is not None:
            assert after == ending and (closed.rcvd.code, closed.rcvd.reason) == (1013, SLOW_CONSUMER_REASON)
        else:
            assert after == ending[: len(after)], after


async def test_a_legacy_graphql_ws_client_that_stops_reading_ends_as_a_slow_consumer(
    make_gateway: Any, redis_client: redis.Redis, tenant: str
) -> None:
    gateway: GatewayServer = make_gateway(slow_consumer_timeout=1.0)
    operations = {"s": QUERY, "t": QUERY}
    _, received = await give_up_on_a_stalled_client(gateway, redis_client, tenant, LEGACY_WS, operations)
    assert_slow_consumer_ending(LEGACY_WS, received)


async def test_a_client_that_stops_reading_on_strawberrys_path_ends_as_a_slow_consumer(
    make_gateway: Any, redis_client: redis.Redis, tenant: str
) -> None:
    gateway: GatewayServer = make_gateway(slow_consumer_timeout=1.0)
    planner = gateway.app.state.planner
    assert planner.plan(STRAWBERRY_QUERY, {"d": None}, None) is None and planner.plan(QUERY, {"d": None}, None)
    operations = {"s": STRAWBERRY_QUERY, "t": STRAWBERRY_QUERY}
    _, received = await give_up_on_a_stalled_client(gateway, redis_client, tenant, TRANSPORT_WS, operations)
    assert_slow_consumer_ending(TRANSPORT_WS, received)


@pytest.mark.parametrize("protocol", [LEGACY_WS, TRANSPORT_WS])
async def test_a_durable_slow_consumer_resumes_right_after_the_last_event_it_received(
    make_gateway: Any, redis_client: redis.Redis, tenant: str, protocol: str
) -> None:
    gateway: GatewayServer = make_gateway(slow_consumer_timeout=1.0)
    ids, received = await give_up_on_a_stalled_client(
        gateway, redis_client, tenant, protocol, {"s": QUERIES[protocol]}, durable="stalled"
    )
    assert_slow_consumer_ending(protocol, received)
    # Nothing after the last event written to it was acknowledged: its durable cursor resumes
    # right after that event, nothing lost, nothing repeated, up to one published since.
    written = received.events["s"]
    fresh = publish(redis_client, tenant, "bulk")
    async with connect(gateway.ws_url, token=make_token(tenant)) as resumed:
        await resumed.subscribe("r", RESUME_QUERY, {"d": "stalled"})
        rest = []
        while (event_id := (await resumed.next_data("r", "events"))["id"]) != fresh:
            rest.append(event_id)
    assert rest == ids[len(written) :], (len(rest), len(ids) - len(written))


@pytest.mark.parametrize("protocol", [LEGACY_WS, TRANSPORT_WS], ids=["legacy", "fast-path"])
async def test_a_slow_consumer_that_does_not_take_even_the_last_words_is_dropped(
    make_gateway: Any, redis_client: redis.Redis, tenant: str, protocol: str
) -> None:
    gateway: GatewayServer = make_gateway(slow_consumer_timeout=1.0)
    _, received = await give_up_on_a_stalled_client(
        gateway, redis_client, tenant, protocol, {"s": QUERY}, reader=read_once_dropped
    )
    # Its buffers stayed full: nothing more could be written, not even a close frame.
    assert received.after == [] and received.closed is not None and received.closed.rcvd is None, received
