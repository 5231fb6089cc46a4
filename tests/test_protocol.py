"""Protocol conformance on /graphql: graphql-transport-ws's rules, each with its exact close
code and reason, the server's pings, and the same discipline for legacy graphql-ws."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis
import websockets

from helpers import (
    EVENTS_QUERY,
    LEGACY_WS,
    TRANSPORT_WS,
    GatewayServer,
    ProtocolClient,
    close_of,
    groups,
    make_token,
    publish,
    wait_until,
)
from ragline.gateway.settings import Settings
from ragline.streaming import keys

pytestmark = pytest.mark.anyio
# A fragment at the root keeps a subscription off the shared fast path: Strawberry runs it.
STRAWBERRY_QUERY = "subscription { ...Root } fragment Root on Subscription { events { id type } }"
DURABLE_QUERY = "subscription($durable: String) { events(durable: $durable) { id } }"


@pytest.fixture(scope="module")
def quick(base_settings: Settings) -> Iterator[GatewayServer]:
    """A gateway with short init, ping and keep-alive intervals."""
    server = GatewayServer(base_settings.with_overrides(init_timeout=0.4, ping_interval=0.3, ping_timeout=0.3)).start()
    yield server
    server.stop()


OPENED: list[Any] = []


@pytest.fixture(autouse=True)
async def close_sockets() -> AsyncIterator[None]:
    """Every socket a test opened is closed when it ends, whatever the server did."""
    yield
    while OPENED:
        await OPENED.pop().close()


async def opened(url: str, subprotocols: list[str] | None) -> Any:
    ws = await websockets.connect(url, subprotocols=subprotocols, compression=None)
    OPENED.append(ws)
    return ws


async def raw(gateway: GatewayServer, protocol: str = TRANSPORT_WS) -> ProtocolClient:
    return ProtocolClient(await opened(gateway.ws_url, [protocol]), protocol)


async def closed_with_nothing_before(client: ProtocolClient, timeout: float = 5) -> tuple[int, str]:
    """The close, asserting that no message came before it (pings and `ka` aside)."""
    try:
        message = await client.recv(timeout)
    except websockets.ConnectionClosed as closed:
        assert closed.rcvd is not None, "closed without a close frame"
        return closed.rcvd.code, closed.rcvd.reason
    raise AssertionError(f"expected the socket to close, got {message}")


async def initialised(gateway: GatewayServer, tenant: str, protocol: str = TRANSPORT_WS) -> ProtocolClient:
    client = await raw(gateway, protocol)
    assert (await client.init({"token": make_token(tenant)}))["type"] == "connection_ack"
    return client


# -- graphql-transport-ws ---------------------------------------------------------------


async def test_no_connection_init_within_the_timeout_closes_4408(quick: GatewayServer) -> None:
    client = await raw(quick)
    started = time.monotonic()
    assert await closed_with_nothing_before(client) == (4408, "Connection initialisation timeout")
    assert 0.3 < time.monotonic() - started < 2


async def test_a_second_connection_init_closes_4429(gateway: GatewayServer, tenant: str) -> None:
    client = await initialised(gateway, tenant)
    await client.send({"type": "connection_init", "payload": {"token": make_token(tenant)}})
    assert await closed_with_nothing_before(client) == (4429, "Too many initialisation requests")


async def test_a_null_connection_init_payload_is_accepted(gateway: GatewayServer, tenant: str) -> None:
    ws = await opened(f"{gateway.ws_url}?token={make_token(tenant)}", [TRANSPORT_WS])
    client = ProtocolClient(ws, TRANSPORT_WS)
    await client.send({"type": "connection_init", "payload": None})
    assert await client.recv() == {"type": "connection_ack"}
    await ws.close()


async def test_subscribe_before_connection_ack_closes_4401(gateway: GatewayServer) -> None:
    client = await raw(gateway)
    await client.subscribe("1", EVENTS_QUERY)
    assert await closed_with_nothing_before(client) == (4401, "Unauthorized")


@pytest.mark.parametrize("query", [EVENTS_QUERY, STRAWBERRY_QUERY], ids=["shared path", "strawberry path"])
async def test_subscribe_with_an_active_id_closes_4409(gateway: GatewayServer, tenant: str, query: str) -> None:
    client = await initialised(gateway, tenant)
    await client.subscribe("dup", query)
    await wait_until(lambda: gateway.hub.counters.tenant(tenant).subscriptions == 1)
    await client.subscribe("dup", query)
    assert await closed_with_nothing_before(client) == (4409, "Subscriber for dup already exists")
    await wait_until(lambda: gateway.hub.counters.tenant(tenant).subscriptions == 0)


INVALID_FRAMES: dict[str, tuple[str | bytes, str]] = {
    "binary": (b"\x00\x01", "WebSocket message type must be text"),
    "not JSON": ("{not json", "WebSocket message must be valid JSON"),
    "a JSON list": ("[1, 2]", "Message must be a JSON object"),
    "a JSON string": ('"subscribe"', "Message must be a JSON object"),
    "no type": ('{"id": "1"}', "Message must have a string 'type'"),
    "a numeric type": ('{"type": 7}', "Message must have a string 'type'"),
    "an unknown type": ('{"type": "bogus"}', "Unknown message type: bogus"),
    "a server message": ('{"type": "next", "id": "1", "payload": {}}', "Unknown message type: next"),
    "ping with a list payload": ('{"type": "ping", "payload": [1]}', "'ping' payload must be an object or null"),
    "subscribe without id": ('{"type": "subscribe", "payload": {"query": "{ stats { connections } }"}}',
                             "'subscribe' must have a non-empty string 'id'"),
    "subscribe with a numeric id": ('{"type": "subscribe", "id": 1, "payload": {"query": "x"}}',
                                    "'subscribe' must have a non-empty string 'id'"),
    "subscribe with a string payload": ('{"type": "subscribe", "id": "1", "payload": "query"}',
                                        "'subscribe' payload must be an object with a string 'query'"),
    "subscribe without query": ('{"type": "subscribe", "id": "1", "payload": {}}',
                                "'subscribe' payload must be an object with a string 'query'"),
    "subscribe with list variables": ('{"type": "subscribe", "id": "1", "payload": {"query": "x", "variables": []}}',
                                      "'subscribe' variables must be an object or null"),
    "subscribe with a numeric operationName": (
        '{"type": "subscribe", "id": "1", "payload": {"query": "x", "operationName": 3}}',
        "'subscribe' operationName must be a string or null"),
    "complete with an object id": ('{"type": "complete", "id": {}}', "'complete' must have a non-empty string 'id'"),
}


@pytest.mark.parametrize("case", list(INVALID_FRAMES))
async def test_a_malformed_message_closes_4400_with_what_was_wrong(gateway: GatewayServer, tenant: str, case: str) -> None:
    frame, reason = INVALID_FRAMES[case]
    client = await initialised(gateway, tenant)
    await client.ws.send(frame)
    assert await closed_with_nothing_before(client) == (4400, reason)


async def test_a_malformed_connection_init_closes_4400_before_any_ack(gateway: GatewayServer) -> None:
    client = await raw(gateway)
    await client.send({"type": "connection_init", "payload": "Bearer x"})
    assert await closed_with_nothing_before(client) == (4400, "'connection_init' payload must be an object or null")


async def test_a_long_client_chosen_reason_is_cut_to_fit_a_close_frame(gateway: GatewayServer, tenant: str) -> None:
    client = await initialised(gateway, tenant)
    await client.send({"type": "x" * 500})
    code, reason = await closed_with_nothing_before(client)
    assert code == 4400 and reason.startswith("Unknown message type: xxx") and len(reason.encode()) <= 123


@pytest.mark.parametrize("subprotocols", [["graphql-sse"], ["chat"], []], ids=["graphql-sse", "chat", "none"])
async def test_an_unsupported_subprotocol_closes_4406(gateway: GatewayServer, subprotocols: list[str]) -> None:
    ws = await opened(gateway.ws_url, subprotocols or None)
    assert ws.subprotocol is None
    assert await closed_with_nothing_before(ProtocolClient(ws, TRANSPORT_WS)) == (4406, "Subprotocol not acceptable")


@pytest.mark.parametrize("query", [EVENTS_QUERY, STRAWBERRY_QUERY], ids=["shared path", "strawberry path"])
async def test_a_client_complete_stops_next_messages_for_that_id_only(
    gateway: GatewayServer, redis_client: redis.Redis, tenant: str, query: str
) -> None:
    client = await initialised(gateway, tenant)
    await client.subscribe("done", query)
    await client.subscribe("kept", EVENTS_QUERY)
    await wait_until(lambda: gateway.hub.counters.tenant(tenant).subscriptions == 2)
    first = publish(redis_client, tenant, "order_created")
    received = await client.collect_by_id({"done": 1, "kept": 1})
    assert received["done"][0]["id"] == received["kept"][0]["id"] == first
    await client.complete("done")
    await wait_until(lambda: gateway.hub.counters.tenant(tenant).subscriptions == 1)
    later = [publish(redis_client, tenant, "order_created") for _ in range(3)]
    assert [e["id"] for e in await client.collect("kept", "events", 3)] == later  # no `done` among them
    await client.expect_silence(0.3)
    assert len(groups(redis_client, tenant)) == 1


async def test_nothing_is_sent_for_an_id_after_its_error(gateway: GatewayServer, redis_client: redis.Redis, tenant: str) -> None:
    client = await initialised(gateway, tenant)
    await client.subscribe("bad", "subscription { events { nosuchfield } }")
    message = await client.recv()
    assert message["type"] == "error" and message["id"] == "bad"
    assert message["payload"][0]["message"] == "Cannot query field 'nosuchfield' on type 'Event'."
    publish(redis_client, tenant, "order_created")
    await client.expect_silence(0.4)  # no `complete`, no `next`
    await client.subscribe("bad", EVENTS_QUERY)  # the id is free again
    await wait_until(lambda: gateway.hub.counters.tenant(tenant).subscriptions == 1)


async def test_nothing_is_sent_for_an_id_after_the_server_completed_it(
    gateway: GatewayServer, redis_client: redis.Redis, tenant: str
) -> None:
    older = await initialised(gateway, tenant)
    await older.subscribe("1", DURABLE_QUERY, {"durable": "screen"})
    await wait_until(lambda: gateway.hub.counters.tenant(tenant).subscriptions == 1)
    newer = await initialised(gateway, tenant)
    await newer.subscribe("1", DURABLE_QUERY, {"durable": "screen"})
    ended = await older.recv()
    assert ended["type"] == "next" and ended["payload"]["errors"][0]["extensions"]["code"] == "DURABLE_TAKEN_OVER"
    assert await older.recv() == {"id": "1", "type": "complete"}
    entry = publish(redis_client, tenant, "order_created")
    assert (await newer.next_data("1", "events"))["id"] == entry
    await older.expect_silence(0.4)
    await newer.ws.close()


# -- server pings -----------------------------------------------------------------------


async def test_the_server_pings_and_a_client_that_answers_stays_connected(
    quick: GatewayServer, redis_client: redis.Redis, tenant: str
) -> None:
    client = await initialised(quick, tenant)
    await client.subscribe("1", EVENTS_QUERY)
    pings, deadline = 0, time.monotonic() + 1.5
    while time.monotonic() < deadline:
        with pytest.raises(TimeoutError):  # answer every ping, nothing else arrives
            while True:
                message = json.loads(await asyncio.wait_for(client.ws.recv(), deadline - time.monotonic()))
                assert message == {"type": "ping"}, message
                pings += 1
                await client.send({"type": "pong"})
    assert pings >= 3
    entry = publish(redis_client, tenant, "order_created")
    assert (await client.next_data("1", "events"))["id"] == entry
    await client.ws.close()


async def test_a_client_that_does_not_answer_pings_is_closed_4408_and_its_groups_removed(
    quick: GatewayServer, redis_client: redis.Redis, tenant: str
) -> None:
    client = await initialised(quick, tenant)
    await client.subscribe("1", EVENTS_QUERY)
    await client.subscribe("2", DURABLE_QUERY, {"durable": "kept"})
    await wait_until(lambda: len(groups(redis_client, tenant)) == 2)
    started = time.monotonic()
    assert await close_of(client) == (4408, "Ping timeout")  # the pings it ignored came first
    assert time.monotonic() - started < 2 * 0.3 + 0.5
    await wait_until(lambda: quick.hub.counters.tenant(tenant).subscriptions == 0)
    # the ephemeral group is gone, the durable one stays for the client's return
    assert [g["name"] for g in groups(redis_client, tenant)] == [keys.durable_group(keys.EVENTS_KIND, tenant, "u1", "kept")]


# -- legacy graphql-ws ------------------------------------------------------------------


async def test_legacy_without_connection_init_closes_4408(quick: GatewayServer) -> None:
    client = await raw(quick, LEGACY_WS)
    assert await closed_with_nothing_before(client) == (4408, "Connection initialisation timeout")


async def test_legacy_second_connection_init_closes_4429(gateway: GatewayServer, tenant: str) -> None:
    client = await initialised(gateway, tenant, LEGACY_WS)
    await client.send({"type": "connection_init", "payload": {"token": make_token(tenant)}})
    assert await closed_with_nothing_before(client) == (4429, "Too many initialisation requests")


async def test_legacy_start_before_connection_ack_closes_4401(gateway: GatewayServer) -> None:
    client = await raw(gateway, LEGACY_WS)
    await client.subscribe("1", EVENTS_QUERY)
    assert await closed_with_nothing_before(client) == (4401, "Unauthorized")


LEGACY_INVALID: dict[str, tuple[str | bytes, str]] = {
    "binary": (b"\x00", "WebSocket message type must be text"),
    "not JSON": ("nope", "WebSocket message must be valid JSON"),
    "a JSON number": ("42", "Message must be a JSON object"),
    "no type": ("{}", "Message must have a string 'type'"),
    "an unknown type": ('{"type": "subscribe"}', "Unknown message type: subscribe"),
    "start without id": ('{"type": "start", "payload": {"query": "x"}}', "'start' must have a non-empty string 'id'"),
    "start with a list payload": ('{"type": "start", "id": "1", "payload": []}',
                                  "'start' payload must be an object with a string 'query'"),
    "stop with a numeric id": ('{"type": "stop", "id": 5}', "'stop' must have a non-empty string 'id'"),
}


@pytest.mark.parametrize("case", list(LEGACY_INVALID))
async def test_legacy_malformed_message_gets_connection_error_then_close_4400(
    gateway: GatewayServer, tenant: str, case: str
) -> None:
    frame, reason = LEGACY_INVALID[case]
    client = await initialised(gateway, tenant, LEGACY_WS)
    await client.ws.send(frame)
    assert await client.recv() == {"type": "connection_error", "payload": {"message": reason}}
    assert await closed_with_nothing_before(client) == (4400, reason)


async def test_legacy_keep_alive_sends_ka_after_the_ack_and_on_every_interval(quick: GatewayServer, tenant: str) -> None:
    client = await raw(quick, LEGACY_WS)
    await client.send({"type": "connection_init", "payload": {"token": make_token(tenant)}})
    frames = [json.loads(await asyncio.wait_for(client.ws.recv(), 2)) for _ in range(4)]
    assert frames == [{"type": "connection_ack"}, {"type": "ka"}, {"type": "ka"}, {"type": "ka"}]
    await client.ws.close()


async def test_legacy_stop_ends_the_operation_with_complete_and_nothing_after(
    gateway: GatewayServer, redis_client: redis.Redis, tenant: str
) -> None:
    client = await initialised(gateway, tenant, LEGACY_WS)
    await client.subscribe("1", EVENTS_QUERY)
    await wait_until(lambda: gateway.hub.counters.tenant(tenant).subscriptions == 1)
    await client.complete("1")
    assert await client.recv() == {"type": "complete", "id": "1"}
    publish(redis_client, tenant, "order_created")
    await client.expect_silence(0.4)
    assert groups(redis_client, tenant) == []


async def test_legacy_start_with_an_active_id_restarts_that_operation(
    gateway: GatewayServer, redis_client: redis.Redis, tenant: str
) -> None:
    """As subscriptions-transport-ws's own server does: the old operation ends, the new one runs."""
    client = await initialised(gateway, tenant, LEGACY_WS)
    await client.subscribe("1", EVENTS_QUERY, {"types": ["a"]})
    await wait_until(lambda: gateway.hub.counters.tenant(tenant).subscriptions == 1)
    await client.subscribe("1", EVENTS_QUERY, {"types": ["b"]})
    assert await client.recv() == {"type": "complete", "id": "1"}
    await wait_until(lambda: len(groups(redis_client, tenant)) == 1)
    publish(redis_client, tenant, "a")
    entry = publish(redis_client, tenant, "b")
    assert (await client.next_data("1", "events"))["id"] == entry


@pytest.mark.parametrize("query", [EVENTS_QUERY, STRAWBERRY_QUERY], ids=["shared path", "strawberry path"])
async def test_subscriptions_completed_right_after_subscribing_leave_nothing_behind(
    gateway: GatewayServer, redis_client: redis.Redis, tenant: str, query: str
) -> None:
    """The complete lands while the group is being created: nothing may keep running."""
    client = await initialised(gateway, tenant)
    for n in range(15):
        await client.subscribe(f"s{n}", query)
        await client.complete(f"s{n}")
    await client.subscribe("last", EVENTS_QUERY)
    await wait_until(lambda: gateway.hub.counters.tenant(tenant).subscriptions == 1)
    await asyncio.sleep(0.3)
    assert gateway.hub.counters.tenant(tenant).subscriptions == 1
    assert len(groups(redis_client, tenant)) == 1
    entry = publish(redis_client, tenant, "order_created")
    assert (await client.next_data("last", "events"))["id"] == entry  # and nothing for the completed ones
    await client.expect_silence(0.3)
