"""The seed's /ws, /ws/orders, /ws/stats and /stream* endpoints, over real sockets, on the same core."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import redis
import websockets

from helpers import (
    STATS_QUERY,
    GatewayServer,
    groups,
    make_token,
    metric,
    new_tenant,
    publish,
    wait_until,
)
from ragline.gateway.embedded import free_port
from ragline.streaming import keys

pytestmark = pytest.mark.anyio

TIMEOUT = 10.0
ORDER_TYPES = ["order_created", "order_updated", "order_completed", "order_failed"]


def url(gateway: GatewayServer, path: str, scheme: str = "ws", **query: str) -> str:
    suffix = f"?{urlencode(query)}" if query else ""
    return f"{scheme}://127.0.0.1:{gateway.port}{path}{suffix}"


def occurred(entry_id: str) -> str:
    """The `timestamp` of an event published without `occurred_at`: its entry id's time."""
    return datetime.fromtimestamp(int(entry_id.split("-")[0]) / 1000, UTC).isoformat()


def assert_now(timestamp: str) -> None:
    moment = datetime.fromisoformat(timestamp)
    assert moment.tzinfo is not None and abs(moment.timestamp() - time.time()) < 10, timestamp


class OldClient:
    """A seed-protocol client: JSON text frames over a plain WebSocket."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws

    async def send(self, message: dict[str, Any] | str | bytes) -> None:
        await self.ws.send(message if isinstance(message, str | bytes) else json.dumps(message))

    async def recv(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        return dict(json.loads(await asyncio.wait_for(self.ws.recv(), timeout)))

    async def events(self, count: int) -> list[dict[str, Any]]:
        return [await self.recv() for _ in range(count)]

    async def expect_silence(self, seconds: float = 0.2) -> None:
        try:
            message = await asyncio.wait_for(self.ws.recv(), seconds)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected message {message}")

    async def closed(self) -> tuple[int, str]:
        """Wait for the server's close frame; its (code, reason)."""
        try:
            while True:
                await asyncio.wait_for(self.ws.recv(), TIMEOUT)
        except websockets.ConnectionClosed as closed:
            assert closed.rcvd is not None, "closed without a close frame"
            return closed.rcvd.code, closed.rcvd.reason


@asynccontextmanager
async def raw_ws(gateway: GatewayServer, path: str = "/ws", **query: str) -> AsyncIterator[OldClient]:
    async with websockets.connect(url(gateway, path, **query), compression=None) as ws:
        yield OldClient(ws)


@asynccontextmanager
async def old_ws(
    gateway: GatewayServer, path: str = "/ws", **query: str
) -> AsyncIterator[tuple[OldClient, dict[str, Any]]]:
    """A connected client and its `connected` message; the subscription is live once that arrived."""
    async with raw_ws(gateway, path, **query) as client:
        connected = await client.recv()
        assert connected["type"] == "connected", connected
        yield client, connected


class SseClient:
    """Reads server-sent events frame by frame from an httpx streaming response.

    A task reads the lines into a queue, so a read that times out never cuts
    the stream (cancelling httpx's line iterator would close the connection)."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines: asyncio.Queue[str | None] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for line in self.response.aiter_lines():
                await self._lines.put(line)
        finally:
            await self._lines.put(None)

    async def close(self) -> None:
        self._reader.cancel()
        with suppress(asyncio.CancelledError, httpx.HTTPError):
            await self._reader

    async def frame(self, timeout: float = TIMEOUT) -> dict[str, str]:
        """The next frame's fields, or {"comment": text} for a comment; EOFError when the stream ended."""
        fields: dict[str, str] = {}
        while True:
            line = await asyncio.wait_for(self._lines.get(), timeout)
            if line is None:
                raise EOFError("the server ended the stream")
            if not line:
                if fields:
                    return fields
            elif line.startswith(":"):
                if not fields:
                    return {"comment": line[1:].strip()}
            else:
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")

    async def event(self, timeout: float = TIMEOUT) -> dict[str, str]:
        while "comment" in (frame := await self.frame(timeout)):
            pass
        return frame

    async def events(self, count: int) -> list[dict[str, str]]:
        return [await self.event() for _ in range(count)]

    async def expect_no_event(self, seconds: float = 0.2) -> None:
        try:
            frame = await self.event(seconds)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected frame {frame}")


@asynccontextmanager
async def sse(
    gateway: GatewayServer, path: str, headers: dict[str, str] | None = None, **query: str
) -> AsyncIterator[SseClient]:
    """A live event stream; it has subscribed once its `connected` event arrived."""
    async with httpx.AsyncClient(timeout=TIMEOUT) as http, http.stream(
        "GET", url(gateway, path, "http", **query), headers=headers
    ) as response:
        assert response.status_code == 200, await response.aread()
        client = SseClient(response)
        try:
            connected = await client.event()
            assert connected["event"] == "connected", connected
            yield client
        finally:
            await client.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def snake(value: Any) -> Any:
    """GraphQL's camelCase stats as the snake_case JSON of the old endpoints."""
    if isinstance(value, dict):
        return {re.sub(r"(?<!^)([A-Z])", r"_\1", k).lower(): snake(v) for k, v in value.items()}
    if isinstance(value, list):
        return [snake(v) for v in value]
    return value


# -- /ws messages -------------------------------------------------------------


async def test_ws_greets_with_connected_carrying_the_clients_identity(gateway: GatewayServer, tenant: str) -> None:
    async with old_ws(gateway, token=make_token(tenant, "alice")) as (_, connected):
        data = connected["data"]
        assert connected == {"type": "connected", "data": data}
        assert data == {
            "client_id": data["client_id"], "tenant_id": tenant, "user_id": "alice",
            "subscriptions": [], "timestamp": data["timestamp"],
        }
        assert str(uuid.UUID(data["client_id"])) == data["client_id"]
        assert_now(data["timestamp"])


async def test_ws_orders_starts_subscribed_to_the_order_types(gateway: GatewayServer, tenant: str) -> None:
    async with old_ws(gateway, "/ws/orders", token=make_token(tenant)) as (_, connected):
        data = connected["data"]
        assert connected == {"type": "connected", "stream": "orders", "data": data}
        assert data["subscriptions"] == ORDER_TYPES
        assert set(data) == {"client_id", "tenant_id", "user_id", "subscriptions", "timestamp"}


async def test_subscribe_gets_subscription_updated_and_narrows_what_is_delivered(
    gateway: GatewayServer, redis_client: redis.Redis, tenant: str
) -> None:
    async with old_ws(gateway, token=make_token(tenant)) as (client, _):
        await client.send({"type": "subscribe", "subscriptions": ["order_created", "payment_*", "order_created"]})
        updated = await client.recv()
        assert updated == {
            "type": "subscription_updated", "subscriptions": ["order_created", "payment_*"],
            "timestamp": updated["timestamp"],
        }
        assert_now(updated["timestamp"])
        publish(redis_client, tenant, "user_updated", {"user": "x"})
        created = publish(redis_client, tenant, "order_created", {"order_id": "o-1", "total": 12.5})
        paid = publish(redis_client, tenant, "payment_processed", {"order_id": "o-1"})
        assert await client.events(2) == [
            {"type": "event", "id": created, "event_type": "order_created",
             "data": {"order_id": "o-1", "total": 12.5}, "timestamp": occurred(created)},
            {"type": "event", "id": paid, "event_type": "payment_processed",
             "data": {"order_id": "o-1"}, "timestamp": occurred(paid)},
        ]
        await client.expect_silence()


async def test_an_empty_subscription_set_or_all_delivers_every_event(
    gateway: GatewayServer, redis_client: redis.Redis, tenant: str
) -> None:
    async with old_ws(gateway, token=make_token(tenant)) as (client, _):
        for subscriptions in (["tool_call"], ["all"], []):
            await client.send({"type": "subscribe", "subscriptions": subscriptions})
            assert (await client.recv())["subscriptions"] == subscriptions
        ids = [publish(redis_client, tenant, t) for t in ("user_updated", "tool_call", "order_created")]
        assert [m["id"] for m in await client.events(3)] == ids


async def test_ping_gets_pong(gateway: GatewayServer, tenant: str) -> None:
    async with old_ws(gateway, token=make_token(tenant)) as (client, _):
        await client.send({"type": "ping"})
        pong = await client.recv()
        assert pong == {"type": "pong", "timestamp": pong["timestamp"]}
        assert_now(pong["timestamp"])


async def test_get_stats_gets_the_figures_of_the_graphql_stats_query(
    gateway: GatewayServer, redis_client: redis.Redis, tenant: str
) -> None:
    token = make_token(tenant)
    async with old_ws(gateway, token=token) as (client, _):
        publish(redis_client, tenant, "order_created", {"order_id": "o-1"})
        await client.recv()
        await wait_until(lambda: gateway.hub.counters.tenant(tenant).delivered == 1)
        async with httpx.AsyncClient(timeout=TIMEOUT) as http:
            response = await http.post(gateway.http_url, json={"query": STATS_QUERY}, headers=bearer(token))
        graphql = snake(response.json()["data"]["stats"])
        await client.send({"type": "get_stats"})
        stats = await client.recv()
    assert stats == {"type": "stats", "data": graphql, "timestamp": stats["timestamp"]}
    assert stats["data"] == {
        "connections": 1, "subscriptions": 1, "events_delivered": 1, "pending": 0, "dead_lettered": 0,
        "redis_available": True,
        "tenants": [{"tenant_id": tenant, "connections": 1, "subscriptions": 1, "events_delivered": 1,
                     "pending": 0, "dead_lettered": 0}],
    }


async def test_ws_stats_over_http_answers_like_get_stats_and_401_without_a_token(
    gateway: GatewayServer, tenant: str
) -> None:
    token = make_token(tenant)
    async with old_ws(gateway, token=token) as (client, _), httpx.AsyncClient(timeout=TIMEOUT) as http:
        by_header = await http.get(url(gateway, "/ws/stats", "http"), headers=bearer(token))
        by_query = await http.get(url(gateway, "/ws/stats", "http", token=token))
        refused = await http.get(url(gateway, "/ws/stats", "http"))
        await client.send({"type": "get_stats"})
        stats = await client.recv()
    assert by_header.status_code == by_query.status_code == 200
    assert by_header.json() == by_query.json() == stats["data"]
    assert by_header.json()["connections"] == 1
    assert (refused.status_code, refused.headers["www-authenticate"]) == (401, "Bearer")


async def test_bad_messages_get_an_error_and_the_connection_stays_open(
    gateway: GatewayServer, redis_client: redis.Redis, tenant: str
) -> None:
    cases: list[tuple[str | bytes | dict[str, Any], str]] = [
        ("{not json", "Invalid JSON message"),
        ("[1, 2]", "A message must be a JSON object with a string 'type'"),
        ({"type": "dance"}, "Unknown message type: dance"),
        ({"type": "subscribe", "subscriptions": "order_created"}, "'subscriptions' must be a list of event types"),
        ({"type": "subscribe", "subscriptions": ["Order Created"]}, "Invalid event type pattern 'Order Created'"),
        (b"\x00binary", "Messages must be JSON text frames"),
    ]
    async with old_ws(gateway, token=make_token(tenant)) as (client, _):
        for message, text in cases:
            await client.send(message)
            error = await client.recv()
            assert error == {"type": "error", "code": "BAD_USER_INPUT", "message": text,
                             "timestamp": error["timestamp"]}
        await client.send({"type": "ping"})
        assert (await client.recv())["type"] == "pong"
        entry = publish(redis_client, tenant, "user_updated")  # the bad subscribes changed nothing
        assert (await client.recv())["id"] == entry


@pytest.mark.parametrize("path", ["/ws", "/ws/orders"])
async def test_a_missing_or_invalid_token_closes_with_1008_and_a_reason(
    gateway: GatewayServer, tenant: str, path: str
) -> None:
    cases = [
        ({}, "Authentication required"),
        ({"token": "not-a-jwt"}, "Invalid token"),
        ({"token": make_token(tenant, secret="another-secret-" + "y" * 40)}, "Invalid token"),
        ({"token": make_token(tenant, ttl=-60)}, "Invalid token"),
    ]
    for query, reason in cases:
        async with raw_ws(gateway, path, **query) as client:
            assert await client.closed() == (1008, reason)


async def test_a_page_on_another_origin_is_refused_like_on_graphql(gateway: GatewayServer, tenant: str) -> None:
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(
            url(gateway, "/ws", token=make_token(tenant)), origin=websockets.Origin("http://evil.example")
        ):
            pass
    assert refused.value.response.status_code == 403


# -- delivery ------------------------------------------------------------------


async def test_two_ws_clients_of_one_tenant_both_get_every_event_and_another_tenant_none(
    gateway: GatewayServer, redis_client: redis.Redis, tenant: str
) -> None:
    token = make_token(tenant)
    async with old_ws(gateway, token=token) as (first, _), old_ws(gateway, token=token) as (second, _), old_ws(
        gateway, token=make_token(new_tenant())
    ) as (neighbour, _):
        ids = [publish(redis_client, tenant, "order_created", {"i": i}) for i in range(10)]
        assert [m["id"] for m in await first.events(10)] == ids
        assert [m["id"] for m in await second.events(10)] == ids
        await neighbour.expect_silence()


async def test_ws_orders_never_delivers_a_non_order_event_even_when_subscribed_to_one(
    gateway: GatewayServer, redis_client: redis.Redis, tenant: str
) -> None:
    async with old_ws(gateway, "/ws/orders", token=make_token(tenant)) as (client, _):
        await client.send({"type": "subscribe", "subscriptions": ["user_updated", "order_created"]})
        assert (await client.recv())["subscriptions"] == ["user_updated", "order_created"]
        publish(redis_client, tenant, "user_updated", {"user": "x"})
        publish(redis_client, tenant, "order_updated", {"order_id": "o-1"})
        created = publish(redis_client, tenant, "order_created", {"order_id": "o-2"})
        assert await client.recv() == {
            "type": "order_event", "id": created, "event_type": "order_created",
            "data": {"order_id": "o-2"}, "timestamp": occurred(created),
        }
        await client.send({"type": "subscribe", "subscriptions": []})
        await client.recv()
        publish(redis_client, tenant, "user_updated")
        failed = publish(redis_client, tenant, "order_failed", {"order_id": "o-3"})
        assert (await client.recv())["id"] == failed
        await client.expect_silence()


async def test_last_event_id_resumes_right_after_that_id(
    gateway: GatewayServer, redis_client: redis.Redis, tenant: str
) -> None:
    first, second, third = (publish(redis_client, tenant, "order_created", {"i": i}) for i in range(3))
    async with old_ws(gateway, token=make_token(tenant), last_event_id=first) as (client, _):
        live = publish(redis_client, tenant, "order_created", {"i": 3})
        assert [m["id"] for m in await client.events(3)] == [second, third, live]
        await client.expect_silence()


async def test_a_malformed_or_trimmed_last_event_id_gets_an_error_then_a_close_code(
    gateway: GatewayServer, redis_client: redis.Redis, tenant: str
) -> None:
    oldest = publish(redis_client, tenant, "order_created")
    publish(redis_client, tenant, "order_created")
    redis_client.xtrim(keys.events_key(tenant), maxlen=1, approximate=False)
    cases = [
        ("nonsense", "BAD_USER_INPUT", 4400),
        (oldest, "CURSOR_EXPIRED", 4409),
    ]
    for last_event_id, code, close_code in cases:
        async with raw_ws(gateway, token=make_token(tenant), last_event_id=last_event_id) as client:
            error = await client.recv()
            assert (error["type"], error["code"]) == ("error", code), error
            assert "last_event_id" in error["message"] and "'after'" not in error["message"]
            assert await client.closed() == (close_code, error["message"])


@pytest.mark.parametrize(("path", "prefix"), [("/ws", "ragline-ws-"), ("/ws/orders", "ragline-ws-orders-")])
async def test_ws_delivery_leaves_nothing_pending_and_the_group_goes_on_disconnect(
    gateway: GatewayServer, redis_client: redis.Redis, tenant: str, path: str, prefix: str
) -> None:
    async with old_ws(gateway, path, token=make_token(tenant)) as (client, _):
        ids = [publish(redis_client, tenant, "order_created", {"i": i}) for i in range(3)]
        await client.events(3)
        await wait_until(lambda: [g["last-delivered-id"] for g in groups(redis_client, tenant)] == [ids[-1]])
        [group] = groups(redis_client, tenant)
        assert group["name"].startswith(f"{prefix}{tenant}:") and group["pending"] == 0
    await wait_until(lambda: groups(redis_client, tenant) == [])


# -- SSE -----------------------------------------------------------------------


async def test_sse_writes_each_event_with_its_entry_id_and_type(
    gateway: GatewayServer, redis_client: redis.Redis, tenant: str
) -> None:
    token = make_token(tenant, "bob")
    async with httpx.AsyncClient(timeout=TIMEOUT) as http, http.stream(
        "GET", url(gateway, "/stream", "http"), headers=bearer(token)
    ) as response:
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert response.headers["cache-control"] == "no-cache"
        client = SseClient(response)
        try:
            connected = await client.frame()
            assert connected == {"event": "connected", "data": connected["data"]}
            greeting = json.loads(connected["data"])
            assert greeting == {"tenant_id": tenant, "user_id": "bob", "timestamp": greeting["timestamp"]}
            payload = {"order_id": "o-1", "note": "é\nx"}
            created = publish(redis_client, tenant, "order_created", payload)
            tool = publish(redis_client, tenant, "tool_call", {"n": 2})
            assert await client.frame() == {
                "id": created, "event": "order_created",
                "data": json.dumps(payload, ensure_ascii=False, separators=(",", ":")),
            }
            assert await client.frame() == {"id": tool, "event": "tool_call", "data": '{"n":2}'}
        finally:
            await client.close()


async def test_sse_client_reconnecting_with_last_event_id_gets_exactly_the_rest(
    gateway: GatewayServer, redis_client: redis.Redis, tenant: str
) -> None:
    token = make_token(tenant)
    async with sse(gateway, "/stream", token=token) as client:
        ids = [publish(redis_client, tenant, "order_created", {"i": i}) for i in range(5)]
        assert [(await client.event())["id"] for _ in range(2)] == ids[:2]
    await wait_until(lambda: groups(redis_client, tenant) == [])
    async with sse(gateway, "/stream", headers={"Last-Event-ID": ids[1]}, token=token) as client:
        assert [(await client.event())["id"] for _ in range(3)] == ids[2:]
        await client.expect_no_event()
        await wait_until(lambda: [g["last-delivered-id"] for g in groups(redis_client, tenant)] == [ids[-1]])
        assert [g["pending"] for g in groups(redis_client, tenant)] == [0]
    await wait_until(lambda: groups(redis_client, tenant) == [])


async def test_sse_orders_and_notifications_deliver_only_their_types(
    gateway: GatewayServer, redis_client: redis.Redis, tenant: str
) -> None:
    token = make_token(tenant)
    async with sse(gateway, "/stream/orders", token=token) as orders, sse(
        gateway, "/stream/notifications", token=token
    ) as notifications:
        types = ["user_updated", "order_updated", "payment_processed", "order_created", "system_alert"]
        ids = dict(zip(types, (publish(redis_client, tenant, t, {"order_id": "o"}) for t in types), strict=True))
        assert [(await orders.event())["id"] for _ in range(2)] == [ids["order_updated"], ids["order_created"]]
        assert [(await notifications.event())["event"] for _ in range(3)] == [
            "payment_processed", "order_created", "system_alert",
        ]
        await orders.expect_no_event(0.2)
        await notifications.expect_no_event(0.1)
        assert sorted(g["name"].split(":")[0] for g in groups(redis_client, tenant)) == [
            f"ragline-ws-orders-{tenant}", f"ragline-ws-{tenant}",
        ]
    await wait_until(lambda: groups(redis_client, tenant) == [])


async def test_sse_refuses_a_bad_token_or_last_event_id_before_streaming(
    gateway: GatewayServer, redis_client: redis.Redis, tenant: str
) -> None:
    oldest = publish(redis_client, tenant, "order_created")
    publish(redis_client, tenant, "order_created")
    redis_client.xtrim(keys.events_key(tenant), maxlen=1, approximate=False)
    stream = url(gateway, "/stream/orders", "http")
    async with httpx.AsyncClient(timeout=TIMEOUT) as http:
        missing = await http.get(stream)
        invalid = await http.get(stream, headers=bearer("not-a-jwt"))
        malformed = await http.get(stream, headers={**bearer(make_token(tenant)), "Last-Event-ID": "x"})
        trimmed = await http.get(stream, params={"token": make_token(tenant), "last_event_id": oldest})
    assert (missing.status_code, invalid.status_code) == (401, 401)
    assert (malformed.status_code, malformed.json()["code"]) == (400, "BAD_USER_INPUT")
    assert (trimmed.status_code, trimmed.json()["code"]) == (409, "CURSOR_EXPIRED")
    assert "last_event_id" in trimmed.json()["detail"]
    assert groups(redis_client, tenant) == []


# -- timers, outages, shutdown -------------------------------------------------


BEATS = 10


def median_gap(arrivals: list[float]) -> float:
    """The median time between heartbeats (the greeting's arrival is time 0)."""
    return statistics.median(b - a for a, b in zip([0.0, *arrivals], arrivals, strict=False))


async def test_heartbeats_arrive_at_the_configured_intervals(
    make_gateway: Callable[..., GatewayServer], tenant: str
) -> None:
    gateway = make_gateway(ws_heartbeat=0.15, ws_orders_heartbeat=0.25, sse_heartbeat=0.15)
    token = make_token(tenant)

    async def ws_beats(path: str) -> tuple[list[dict[str, Any]], list[float]]:
        async with old_ws(gateway, path, token=token) as (client, _):
            start = time.monotonic()
            beats, arrivals = [], []
            for _ in range(BEATS):
                beats.append(await client.recv())
                arrivals.append(time.monotonic() - start)
        return beats, arrivals

    async def sse_beats() -> list[float]:
        async with sse(gateway, "/stream", token=token) as client:
            start = time.monotonic()
            arrivals = []
            for _ in range(BEATS):
                assert await client.frame() == {"comment": "heartbeat"}
                arrivals.append(time.monotonic() - start)
        return arrivals

    (beats, arrivals), (order_beats, order_arrivals), sse_arrivals = await asyncio.gather(
        ws_beats("/ws"), ws_beats("/ws/orders"), sse_beats()
    )
    assert beats == [{"type": "heartbeat", "timestamp": b["timestamp"]} for b in beats]
    assert order_beats == [{"type": "heartbeat", "stream": "orders", "timestamp": b["timestamp"]} for b in order_beats]
    gaps = {"/ws": median_gap(arrivals), "/ws/orders": median_gap(order_arrivals), "/stream": median_gap(sse_arrivals)}
    intervals = {"/ws": 0.15, "/ws/orders": 0.25, "/stream": 0.15}
    # A heartbeat waits its interval after the previous one: never early (the median shrugs off
    # a late arrival followed by a short gap), late by however busy the machine is, which is
    # milliseconds here (75 ms would be extreme) ...
    for path, interval in intervals.items():
        assert interval - 0.02 < gaps[path] < interval + 0.075, (path, gaps)
    # ... and a busy machine delays the three streams alike, so /ws/orders' gap stays about
    # 0.1 s longer than the others' (swapped intervals make it 0.1 s shorter).
    assert gaps["/ws/orders"] - max(gaps["/ws"], gaps["/stream"]) > 0.05, gaps


async def test_token_expiry_closes_ws_with_1008_and_ends_sse_with_an_error_event(
    gateway: GatewayServer, tenant: str
) -> None:
    token = make_token(tenant, ttl=1.5)  # `exp` is whole seconds: expires in 0.5 to 1.5 s

    async def ws_close() -> tuple[int, str]:
        async with old_ws(gateway, token=token) as (client, _):
            return await client.closed()

    async def sse_end() -> dict[str, str]:
        async with sse(gateway, "/stream", token=token) as client:
            frame = await client.event()
            with pytest.raises(EOFError):
                await client.frame()
            return frame

    closed, ended = await asyncio.gather(ws_close(), sse_end())
    assert closed == (1008, "Token expired")
    assert ended == {"event": "error", "data": json.dumps({"code": "UNAUTHENTICATED", "message": "Token expired"},
                                                          separators=(",", ":"))}


@pytest.mark.log_errors(r"ERROR: Redis unreachable at start-up", r"ERROR: Redis unavailable \(")  # as asserted
async def test_unreachable_redis_gets_unavailable_with_1013_or_503(
    make_gateway: Callable[..., GatewayServer], tenant: str
) -> None:
    gateway = make_gateway(redis_url=f"redis://127.0.0.1:{free_port()}")
    async with raw_ws(gateway, token=make_token(tenant)) as client:
        error = await client.recv()
        assert (error["type"], error["code"]) == ("error", "UNAVAILABLE")
        assert await client.closed() == (1013, error["message"])
    async with httpx.AsyncClient(timeout=TIMEOUT) as http:
        response = await http.get(url(gateway, "/stream", "http", token=make_token(tenant)))
    assert (response.status_code, response.json()["code"]) == (503, "UNAVAILABLE")


async def test_shutdown_closes_ws_with_1001_ends_sse_and_releases_every_group(
    make_gateway: Callable[..., GatewayServer], redis_client: redis.Redis, tenant: str
) -> None:
    gateway = make_gateway()
    token = make_token(tenant)
    async with old_ws(gateway, token=token) as (client, _), sse(gateway, "/stream/orders", token=token) as stream:
        assert len(groups(redis_client, tenant)) == 2
        stopping = asyncio.create_task(asyncio.to_thread(gateway.stop))
        assert await client.closed() == (1001, "Server shutting down")
        with pytest.raises(EOFError):
            await stream.frame()
        await stopping
    assert groups(redis_client, tenant) == []


SLOW_CONSUMER_MESSAGE = "Slow consumer: the client did not read its events in time; reconnect with last_event_id"
STALLING_EVENTS = 300  # 6 MB: more than loopback's socket buffers (4 MB) hold


def publish_bulk(client: redis.Redis, tenant: str) -> list[str]:
    with client.pipeline(transaction=False) as pipe:
        for n in range(STALLING_EVENTS):
            payload = json.dumps({"blob": "x" * 20_000, "n": n})
            pipe.xadd(keys.events_key(tenant), {"event_type": "bulk", "tenant_id": tenant, "payload": payload})
        return [i.decode() for i in pipe.execute()]


def stalling_socket(gateway: GatewayServer) -> socket.socket:
    """A connection whose reader will stop: a small receive buffer, so that what the server's
    socket holds stalls it, but not under loopback's MSS (64 KiB), or reading it all back
    once the gateway gave up would crawl at ~40 KB/s (silly-window avoidance)."""
    sock = socket.create_connection(("127.0.0.1", gateway.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
    return sock


async def given_up(gateway: GatewayServer, tenant: str, remaining: int) -> None:
    """Stay stalled until the stalled subscription of `tenant` was released (its count drops to
    `remaining`), which the gateway does right before its last words to the client; polled
    every 5 ms, as those get a second to be taken. The proof is what the client then reads."""
    try:
        await wait_until(lambda: gateway.hub.counters.tenant(tenant).subscriptions == remaining, timeout=30, interval=0.005)
    except AssertionError:
        raise AssertionError(f"the stalled subscription of {tenant} never ended") from None


def read_response(raw: bytes) -> tuple[str, list[dict[str, str]], bool]:
    """An HTTP/1.1 chunked event stream as read off the socket: its status line, its
    frames (fields by name, comments left out) and whether the response was complete."""
    head, _, body = raw.partition(b"\r\n\r\n")
    text, complete = b"", False
    while body:
        size, _, rest = body.partition(b"\r\n")
        length = int(size, 16)
        if length == 0:
            complete = True
            break
        if len(rest) < length + 2:
            break  # cut off
        text, body = text + rest[:length], rest[length + 2 :]
    frames = [
        dict(line.split(": ", 1) for line in block.split("\n") if not line.startswith(":"))
        for block in text.decode().split("\n\n")
        if block and not block.startswith(":")
    ]
    return head.decode().split("\r\n")[0], frames, complete


async def read_until_ended(sock: socket.socket) -> bytes:
    """Everything a raw HTTP connection received until its response ended (its last chunk)
    or the server closed it."""
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    data = b""
    async with asyncio.timeout(TIMEOUT):
        while not data.endswith(b"\r\n0\r\n\r\n") and (chunk := await loop.sock_recv(sock, 1 << 16)):
            data += chunk
    return data


async def test_a_stalled_client_ends_as_a_slow_consumer_and_the_others_get_everything(
    make_gateway: Callable[..., GatewayServer], redis_client: redis.Redis, tenant: str
) -> None:
    """A `/ws` client and a `/stream` client stop reading (each in its own tenant, so that
    their ends can be told apart); each ends with SLOW_CONSUMER as documented, the
    healthy clients of both tenants get every event, /metrics counts two."""
    gateway = make_gateway(slow_consumer_timeout=1.0)
    closes_before = await metric(gateway.port, "ragline_slow_consumer_closes_total")
    ws_tenant, sse_tenant = tenant, new_tenant()
    ws_token, sse_token = make_token(ws_tenant), make_token(sse_tenant)
    ws_sock, sse_sock = stalling_socket(gateway), stalling_socket(gateway)
    sse_sock.sendall(f"GET /stream?token={sse_token} HTTP/1.1\r\nHost: gateway\r\n\r\n".encode())  # read at the end
    stalled_ws = websockets.connect(url(gateway, "/ws", token=ws_token), sock=ws_sock, max_queue=1, close_timeout=0.1)

    async def stalled_ws_end(client: OldClient) -> tuple[list[str], dict[str, Any], tuple[int, str]]:
        await given_up(gateway, ws_tenant, 1)
        assert (await client.recv())["type"] == "connected"
        ids = []
        while (message := await client.recv())["type"] == "event":
            ids.append(message["id"])
        return ids, message, await client.closed()

    async def stalled_sse_end() -> bytes:
        await given_up(gateway, sse_tenant, 1)
        return await read_until_ended(sse_sock)

    try:
        async with stalled_ws as ws, old_ws(gateway, token=ws_token) as (healthy_ws, _), sse(
            gateway, "/stream", token=sse_token
        ) as healthy_sse:
            await wait_until(lambda: [gateway.hub.counters.tenant(t).subscriptions for t in (ws_tenant, sse_tenant)] == [2, 2])
            ws_ids, sse_ids = publish_bulk(redis_client, ws_tenant), publish_bulk(redis_client, sse_tenant)
            healthy_ws_events, healthy_sse_events, (ws_written, ws_error, ws_close), sse_raw = await asyncio.gather(
                healthy_ws.events(STALLING_EVENTS),
                healthy_sse.events(STALLING_EVENTS),
                stalled_ws_end(OldClient(ws)),
                stalled_sse_end(),
            )
            assert [m["id"] for m in healthy_ws_events] == ws_ids
            assert [f["id"] for f in healthy_sse_events] == sse_ids
            # The stalled /ws client read a prefix of the events, then the error, then the close.
            assert 0 < len(ws_written) < STALLING_EVENTS and ws_written == ws_ids[: len(ws_written)], len(ws_written)
            assert ws_error == {"type": "error", "code": "SLOW_CONSUMER", "message": SLOW_CONSUMER_MESSAGE,
                                "timestamp": ws_error["timestamp"]}
            assert ws_close == (1013, SLOW_CONSUMER_MESSAGE)
            # The stalled /stream client: a prefix of the events, then `event: error`, then the end.
            status, frames, complete = read_response(sse_raw)
            assert status == "HTTP/1.1 200 OK" and frames[0]["event"] == "connected", (status, frames[:1])
            sse_written = [f["id"] for f in frames[1:-1]]
            assert 0 < len(sse_written) < STALLING_EVENTS and sse_written == sse_ids[: len(sse_written)], len(sse_written)
            assert frames[-1] == {"event": "error", "data": json.dumps(
                {"code": "SLOW_CONSUMER", "message": SLOW_CONSUMER_MESSAGE}, separators=(",", ":"))}
            assert complete, "the response did not end with its last chunk"
            # Only the healthy clients' groups are left.
            assert [len(groups(redis_client, t)) for t in (ws_tenant, sse_tenant)] == [1, 1]
    finally:
        sse_sock.close()
    assert await metric(gateway.port, "ragline_slow_consumer_closes_total") - closes_before == 2
