"""Limits: what one client may cost the gateway, each with its setting, its answer and its test."""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import os
import socket
import struct
import time
import tracemalloc
from asyncio import selector_events
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from graphql import parse, validate

from helpers import (
    EVENTS_QUERY,
    LEGACY_WS,
    TIMEOUT,
    TRANSPORT_WS,
    GatewayServer,
    ProtocolClient,
    close_of,
    connect,
    make_token,
    publish,
    wait_until,
)
from ragline.app import create_app
from ragline.gateway.limits import planner_options, schema_extensions
from ragline.gateway.settings import Settings
from ragline.resolvers.root import build_schema
from ragline.resolvers.shared import Planner

pytestmark = pytest.mark.anyio
ONE_MB = 1 << 20


@pytest.fixture(scope="module")
def strict(base_settings: Settings) -> Iterator[GatewayServer]:
    """A gateway with small limits, so that tests reach them quickly."""
    server = GatewayServer(
        base_settings.with_overrides(
            max_subscriptions_per_connection=3,
            max_connections_per_user=2,
            max_connections_per_tenant=3,
            subscribe_rate=5.0,
            subscribe_burst=5,
            max_query_depth=1,
            max_query_tokens=40,
            max_query_aliases=2,
            introspection=False,
        )
    ).start()
    yield server
    server.stop()


# -- inbound frame size --------------------------------------------------------------


def _upgraded_socket(port: int) -> socket.socket:
    """A raw socket past the WebSocket handshake (graphql-transport-ws)."""
    sock = socket.create_connection(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /graphql HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {TRANSPORT_WS}\r\n\r\n".encode()
    )
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(4096)
    assert response.startswith(b"HTTP/1.1 101"), response
    return sock


def _close_frame(sock: socket.socket) -> bytes:
    data = b""
    while len(data) < 2 or len(data) < 2 + data[1]:
        chunk = sock.recv(4096)
        assert chunk, f"the socket closed after {data!r}"
        data += chunk
    return data


def _send_rest(sock: socket.socket, payload: bytes) -> None:
    """Push the frame's payload as a client would; the gateway has hung up, so it may fail."""
    view = memoryview(payload)
    try:
        for start in range(0, len(payload), 64 * 1024):
            sock.sendall(view[start : start + 64 * 1024])
    except OSError:
        pass


def test_a_1_mb_frame_is_refused_1009_without_the_gateway_ever_holding_it(gateway: GatewayServer) -> None:
    """The limit (RAGLINE_MAX_FRAME_BYTES, 64 KB) is checked on the frame header, before the payload
    is read: the gateway's memory grows by a socket read at most, never by the frame."""
    payload = b"x" * ONE_MB  # allocated before measuring: it is the client's
    header = bytes([0x81, 0x80 | 127]) + struct.pack("!Q", len(payload)) + b"\0\0\0\0"  # text, masked (zero mask)
    sock = _upgraded_socket(gateway.port)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        sock.sendall(header)
        reply = _close_frame(sock)  # answered on the header alone
        _send_rest(sock, payload)
        time.sleep(0.2)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
        sock.close()
    assert reply[:2] == b"\x88\x37"  # a close frame, 55 bytes of code and reason
    assert struct.unpack("!H", reply[2:4])[0] == 1009
    assert reply[4:57] == b"frame with 1048576 bytes exceeds limit of 65536 bytes"
    assert peak < ONE_MB // 2, f"the gateway allocated {peak} bytes for a refused 1 MB frame"


async def test_a_frame_just_under_the_limit_is_read(gateway: GatewayServer, tenant: str) -> None:
    async with connect(gateway.ws_url, token=make_token(tenant)) as client:
        query = "subscription { events { id } }" + " " * (64 * 1024 - 200)
        await client.subscribe("1", query)
        await wait_until(lambda: gateway.hub.counters.tenant(tenant).subscriptions == 1)


# -- subscriptions, rate, connections --------------------------------------------------


@pytest.mark.parametrize("protocol", [TRANSPORT_WS, LEGACY_WS])
async def test_subscriptions_beyond_the_limit_get_too_many_subscriptions(
    strict: GatewayServer, tenant: str, protocol: str
) -> None:
    async with connect(strict.ws_url, protocol, token=make_token(tenant)) as client:
        for op in range(3):
            await client.subscribe(str(op), EVENTS_QUERY)
        await wait_until(lambda: strict.hub.counters.tenant(tenant).subscriptions == 3)
        await client.subscribe("3", EVENTS_QUERY)
        error = await client.recv()
    payload = error["payload"][0] if protocol == TRANSPORT_WS else error["payload"]
    assert (error["type"], error["id"]) == ("error", "3")
    assert payload == {
        "message": "Subscription limit reached: at most 3 per connection",
        "extensions": {"code": "TOO_MANY_SUBSCRIPTIONS"},
    }


async def test_subscribes_faster_than_the_rate_get_rate_limited_until_tokens_refill(
    strict: GatewayServer, tenant: str
) -> None:
    async with connect(strict.ws_url, token=make_token(tenant)) as client:
        for op in "abc":
            await client.subscribe(op, EVENTS_QUERY)
        await client.complete("a")  # completes spend tokens too: 5 spent, the burst
        await client.complete("b")
        await client.subscribe("over", EVENTS_QUERY)
        error = await client.recv()
        assert error["id"] == "over" and error["payload"][0] == {
            "message": "Too many subscribe/complete messages: at most 5 per second (bursts of 5); retry later",
            "extensions": {"code": "RATE_LIMITED"},
        }
        await wait_until(lambda: strict.hub.counters.tenant(tenant).subscriptions == 1)
        await asyncio.sleep(0.25)  # 5 per second: a token is back
        await client.subscribe("later", EVENTS_QUERY)
        await wait_until(lambda: strict.hub.counters.tenant(tenant).subscriptions == 2)


async def _refused(url: str, protocol: str, token: str) -> tuple[int, str]:
    async with connect(url, protocol) as client:
        await client.send({"type": "connection_init", "payload": {"token": token}})
        if protocol == LEGACY_WS:
            message = await client.recv()
            assert message["type"] == "connection_error", message
        return await close_of(client)


@pytest.mark.parametrize("protocol", [TRANSPORT_WS, LEGACY_WS])
async def test_connections_beyond_the_per_user_and_per_tenant_limits_close_4429(
    strict: GatewayServer, tenant: str, protocol: str
) -> None:
    alice, bob, carol = (make_token(tenant, user) for user in ("alice", "bob", "carol"))
    async with connect(strict.ws_url, protocol, token=alice), connect(strict.ws_url, protocol, token=alice):
        assert await _refused(strict.ws_url, protocol, alice) == (4429, "Too many connections for this user (at most 2)")
        async with connect(strict.ws_url, protocol, token=bob):
            assert await _refused(strict.ws_url, protocol, carol) == (
                4429, "Too many connections for this tenant (at most 3)"
            )
    async with connect(strict.ws_url, protocol, token=alice), connect(strict.ws_url, protocol, token=alice):
        pass  # released when they closed: alice may connect twice again


async def test_a_flood_of_1000_subscribes_ends_at_the_limit_with_errors_and_flat_memory(
    gateway: GatewayServer, redis_client: redis.Redis, tenant: str
) -> None:
    """Default limits: 20 subscriptions per connection, bursts of 40 subscribes."""
    async with connect(gateway.ws_url, token=make_token(tenant)) as client:
        first = await _flood(client, "a")
        await wait_until(lambda: gateway.hub.counters.tenant(tenant).subscriptions == 20)
        tracemalloc.start()
        try:
            before = _kept_bytes()
            second = await _flood(client, "b")
            grown = _kept_bytes() - before
        finally:
            tracemalloc.stop()
        # the first 40 (the burst, plus what refilled meanwhile) pass the rate: 20 start, the rest
        # find the subscription limit; everything after that is rate-limited
        assert set(first) == set(second) == {"TOO_MANY_SUBSCRIPTIONS", "RATE_LIMITED"}
        assert first["RATE_LIMITED"] > 900 and second["RATE_LIMITED"] > 950
        assert gateway.hub.counters.tenant(tenant).subscriptions == 20
        assert grown < 100 * 1000, f"memory grew by {grown} bytes over 1000 refused subscribes"
        entry = publish(redis_client, tenant, "order_created")
        received = await client.collect_by_id({f"a{n}": 1 for n in range(20)})
        assert {events[0]["id"] for events in received.values()} == {entry}


def _kept_bytes() -> int:
    """Memory this process holds, as tracemalloc sees it: not cyclic garbage the collector has
    yet to reach, nor the buffer of a socket read in flight in the server's thread (a
    256 KiB bytes object while `recv` waits, whenever the snapshot lands then)."""
    gc.collect()
    snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, selector_events.__file__)])
    return sum(stat.size for stat in snapshot.statistics("filename"))


async def _flood(client: ProtocolClient, prefix: str) -> Counter[str]:
    """1000 subscribes sent at once; the error codes they got (the accepted ones get none).
    The replies are read under one timeout: a timeout per message would leave a thousand
    cancelled timers in this process's loop until their deadlines, counted as growth."""
    for n in range(1000):
        await client.subscribe(f"{prefix}{n}", EVENTS_QUERY)
    codes: Counter[str] = Counter()
    accepted = 20 if prefix == "a" else 0
    async with asyncio.timeout(TIMEOUT):
        while sum(codes.values()) < 1000 - accepted:
            message = json.loads(await client.ws.recv())
            assert message["type"] == "error", message
            codes[message["payload"][0]["extensions"]["code"]] += 1
    return codes


# -- documents: depth, tokens, aliases, introspection ------------------------------------

DEEP_QUERY = "{ stats { tenants { tenantId } } }"
ALIASED = "subscription { a: events { x: id y: id } }"
LONG = "subscription { events { " + " ".join(["id"] * 40) + " } }"
INTROSPECTION = "{ __schema { description } }"


async def _http_errors(gateway: GatewayServer, tenant: str, query: str) -> list[str]:
    async with httpx.AsyncClient() as http:
        response = await http.post(gateway.http_url, json={"query": query}, headers={"Authorization": f"Bearer {make_token(tenant)}"})
    return [error["message"] for error in response.json()["errors"]]


async def test_a_query_deeper_than_the_limit_is_refused(strict: GatewayServer, tenant: str) -> None:
    assert await _http_errors(strict, tenant, DEEP_QUERY) == ["'anonymous' exceeds maximum operation depth of 1"]


async def test_introspection_can_be_switched_off(strict: GatewayServer, gateway: GatewayServer, tenant: str) -> None:
    assert await _http_errors(strict, tenant, INTROSPECTION) == [
        "GraphQL introspection has been disabled, but the requested query contained the field '__schema'."
    ]
    async with httpx.AsyncClient() as http:
        response = await http.post(
            gateway.http_url, json={"query": INTROSPECTION}, headers={"Authorization": f"Bearer {make_token(tenant)}"}
        )
    assert response.json() == {"data": {"__schema": {"description": None}}}


@pytest.mark.parametrize("protocol", [TRANSPORT_WS, LEGACY_WS], ids=["shared fast path", "strawberry path"])
async def test_too_many_aliases_are_refused_on_both_paths_alike(strict: GatewayServer, tenant: str, protocol: str) -> None:
    async with connect(strict.ws_url, protocol, token=make_token(tenant)) as client:
        await client.subscribe("1", ALIASED)
        error = await client.recv()
    payload = error["payload"][0] if protocol == TRANSPORT_WS else error["payload"]
    assert (error["type"], payload["message"]) == ("error", "3 aliases found. Allowed: 2")
    assert strict.hub.counters.tenant(tenant).subscriptions == 0


async def test_a_document_over_the_token_limit_is_refused_on_both_paths_alike(strict: GatewayServer, tenant: str) -> None:
    message = "Syntax Error: Document contains more than 40 tokens. Parsing aborted."
    async with connect(strict.ws_url, token=make_token(tenant)) as client:
        await client.subscribe("1", LONG)
        assert await close_of(client) == (4400, message)  # Strawberry closes on syntax errors
    async with connect(strict.ws_url, LEGACY_WS, token=make_token(tenant)) as client:
        await client.subscribe("1", LONG)
        error = await client.recv()
        assert error["payload"]["message"] == message
    assert strict.hub.counters.tenant(tenant).subscriptions == 0


DOCUMENTS = [
    "subscription { events { id } }",
    DEEP_QUERY,
    "subscription { events { id { deeper } } }",
    ALIASED,
    "subscription { a: events { id } }",
    LONG,
    "subscription { events { id type tenantId eventId occurredAt payload } }",
    "subscription { events { __typename } }",
    "subscription { __schema { types { name } } }",
    "subscription { events(types: [\"a\"]) { nosuch } }",
    "subscription S { orderEvents { id orderId status } }",
]


@pytest.mark.parametrize("document", DOCUMENTS)
def test_the_fast_path_planner_refuses_exactly_what_strawberry_refuses(base_settings: Settings, document: str) -> None:
    settings = base_settings.with_overrides(max_query_depth=1, max_query_tokens=40, max_query_aliases=2, introspection=False)
    extensions = schema_extensions(settings)
    schema = build_schema(extensions)
    options = planner_options(extensions)
    planner = Planner(schema._schema, options.rules, options.max_tokens)
    strawberry_accepts = _strawberry_accepts(schema, extensions, document)
    assert (planner.plan(document, None, None) is not None) == strawberry_accepts


def _strawberry_accepts(schema: Any, extensions: list[Any], document: str) -> bool:
    """Strawberry's own verdict: parse with the token limit, validate with the extensions' rules."""
    from graphql import GraphQLError, specified_rules
    from strawberry.schema.schema import validate_document

    instances = [make() for make in extensions]
    tokens = min(e.max_token_count for e in instances if hasattr(e, "max_token_count"))
    rules = (*specified_rules, *(r for e in instances for r in getattr(e, "validation_rules", [])))
    try:
        ast = parse(document, max_tokens=tokens)
    except GraphQLError:
        return False
    return not validate_document(schema._schema, ast, rules) and not validate(schema._schema, ast)


def test_the_document_limits_reach_the_app(base_settings: Settings) -> None:
    app = create_app(base_settings.with_overrides(max_query_tokens=40))
    assert app.state.planner._max_tokens == 40
    assert len(app.state.planner._rules) > 30


def test_limits_are_quick_to_check() -> None:
    """The token bucket costs well under a microsecond per message."""
    from ragline.gateway.limits import TokenBucket

    bucket = TokenBucket(1e9, 10**9)
    started = time.perf_counter()
    for _ in range(100_000):
        bucket.take()
    assert time.perf_counter() - started < 0.5
