"""Subscriptions without WebSockets: GraphQL over SSE and Apollo's multipart HTTP, with httpx.

Same resolvers, same authentication and the same delivery promises as over a
WebSocket: each stream has its own consumer group, moved only past frames that
were sent, removed when the stream closes.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from helpers import (
    EVENTS_QUERY,
    ORDERS_QUERY,
    SECRET,
    STATS_QUERY,
    GatewayProcess,
    GatewayServer,
    groups,
    make_token,
    publish,
    wait_until,
)
from ragline.app import create_app
from ragline.gateway.closes import SLOW_CONSUMER
from ragline.gateway.settings import Settings

pytestmark = pytest.mark.anyio
SSE = "text/event-stream"
MULTIPART = 'multipart/mixed;boundary="graphql";subscriptionSpec=1.0,application/json'  # Apollo Client's
BOUNDARY = "\r\n--graphql"
URQL_QUERY_ACCEPT = "application/graphql-response+json, application/graphql+json, application/json, text/event-stream, multipart/mixed"


async def sse_messages(response: httpx.Response) -> AsyncIterator[tuple[str, Any]]:
    """(event, data) of each SSE event; comments (heartbeats) are skipped."""
    event, data = "", ""
    async for line in response.aiter_lines():
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data = line[5:].strip()
        elif line == "" and event:
            yield event, json.loads(data) if data else None
            event, data = "", ""


async def multipart_messages(response: httpx.Response) -> AsyncIterator[tuple[str, Any]]:
    """("next", payload) per part with a payload, then ("complete", None); heartbeats skipped."""
    buffer = ""
    async for chunk in response.aiter_text():
        buffer += chunk
        while (end := buffer.find(BOUNDARY)) >= 0:
            part, buffer = buffer[:end], buffer[end + len(BOUNDARY):]
            body = part.split("\r\n\r\n", 1)[1] if "\r\n\r\n" in part else ""
            message = json.loads(body) if body else {}
            if "payload" in message:
                yield "next", message["payload"]
        if buffer.startswith("--"):
            yield "complete", None
            return


MESSAGES = {SSE: sse_messages, MULTIPART: multipart_messages}


@asynccontextmanager
async def subscription(
    url: str, accept: str, query: str, token: str | None, variables: dict[str, Any] | None = None
) -> AsyncIterator[tuple[httpx.Response, AsyncIterator[tuple[str, Any]]]]:
    """An open HTTP subscription: the response and its (event, data) messages."""
    headers = {"accept": accept}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    async with httpx.AsyncClient(timeout=10) as http:
        request = {"query": query, "variables": variables or {}}
        async with http.stream("POST", url, json=request, headers=headers) as response:
            yield response, MESSAGES[accept](response)


async def next_data(messages: AsyncIterator[tuple[str, Any]], field: str, count: int) -> list[dict[str, Any]]:
    received: list[dict[str, Any]] = []
    while len(received) < count:
        event, data = await asyncio.wait_for(anext(messages), 10)
        assert event == "next" and "errors" not in data, (event, data)
        received.append(data["data"][field])
    return received


def last_delivered(client: redis.Redis, tenant: str) -> str:
    (group,) = groups(client, tenant)
    return str(group["last-delivered-id"])


def publish_mix(client: redis.Redis, tenant: str) -> tuple[list[str], list[str]]:
    created = publish(client, tenant, "order_created", {"order_id": "o-1", "status": "pending"})
    tool = publish(client, tenant, "tool_call", {"tool": "search"})
    paid = publish(client, tenant, "order_updated", {"order_id": "o-1", "status": "paid"})
    return [created, tool, paid], [created, paid]


@pytest.mark.parametrize("accept", [SSE, MULTIPART], ids=["sse", "multipart"])
async def test_events_stream_over_http_and_the_group_moves_past_each_sent_event(
    accept: str, gateway: GatewayServer, redis_client: redis.Redis, tenant: str
) -> None:
    token = make_token(tenant)
    async with subscription(gateway.http_url, accept, EVENTS_QUERY, token) as (response, messages):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith(accept.split(",")[0].split(";")[0])
        await wait_until(lambda: len(groups(redis_client, tenant)) == 1)

        published, _ = publish_mix(redis_client, tenant)

        received = await next_data(messages, "events", 3)
        assert [e["id"] for e in received] == published
        assert [e["type"] for e in received] == ["order_created", "tool_call", "order_updated"]
        await wait_until(lambda: last_delivered(redis_client, tenant) == published[-1])
    await wait_until(lambda: groups(redis_client, tenant) == [])  # the stream closed: group removed


@pytest.mark.parametrize("accept", [SSE, MULTIPART], ids=["sse", "multipart"])
async def test_order_events_stream_over_http_only_for_the_asked_order(
    accept: str, gateway: GatewayServer, redis_client: redis.Redis, tenant: str
) -> None:
    token = make_token(tenant)
    variables = {"orderId": "o-1"}
    async with subscription(gateway.http_url, accept, ORDERS_QUERY, token, variables) as (_, messages):
        await wait_until(lambda: len(groups(redis_client, tenant)) == 1)
        publish(redis_client, tenant, "order_created", {"order_id": "o-2"})
        _, orders = publish_mix(redis_client, tenant)

        received = await next_data(messages, "orderEvents", 2)
        assert [(e["id"], e["orderId"], e["status"]) for e in received] == [
            (orders[0], "o-1", "pending"),
            (orders[1], "o-1", "paid"),
        ]
    await wait_until(lambda: groups(redis_client, tenant) == [])


@pytest.mark.parametrize("accept", [SSE, MULTIPART], ids=["sse", "multipart"])
@pytest.mark.parametrize("token_kind", ["none", "expired", "forged"])
async def test_http_subscriptions_without_a_valid_token_get_401(
    accept: str, token_kind: str, gateway: GatewayServer, redis_client: redis.Redis, tenant: str
) -> None:
    token = {"none": None, "expired": make_token(tenant, ttl=-60), "forged": make_token(tenant, secret="x" * 40)}
    async with subscription(gateway.http_url, accept, EVENTS_QUERY, token[token_kind]) as (response, _):
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
    assert groups(redis_client, tenant) == []


async def test_the_token_query_parameter_authenticates_an_sse_subscription(
    gateway: GatewayServer, redis_client: redis.Redis, tenant: str
) -> None:
    url = f"{gateway.http_url}?token={make_token(tenant)}"
    async with subscription(url, SSE, EVENTS_QUERY, None) as (response, messages):
        assert response.status_code == 200
        await wait_until(lambda: len(groups(redis_client, tenant)) == 1)
        entry_id = publish(redis_client, tenant, "tool_call", {})
        assert [e["id"] for e in await next_data(messages, "events", 1)] == [entry_id]


async def test_an_open_http_subscription_counts_in_stats(gateway: GatewayServer, redis_client: redis.Redis, tenant: str) -> None:
    token = make_token(tenant)
    async with subscription(gateway.http_url, SSE, EVENTS_QUERY, token):
        await wait_until(lambda: len(groups(redis_client, tenant)) == 1)
        stats = await _stats(gateway.http_url, token)
        assert (stats["connections"], stats["subscriptions"]) == (1, 1)
    await wait_until(lambda: groups(redis_client, tenant) == [])
    stats = await _stats(gateway.http_url, token)
    assert (stats["connections"], stats["subscriptions"]) == (0, 0)


async def _stats(url: str, token: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        response = await http.post(url, json={"query": STATS_QUERY}, headers={"authorization": f"Bearer {token}"})
    return dict(response.json()["data"]["stats"])


async def test_an_sse_stream_ends_with_token_expired_when_the_token_expires(
    gateway: GatewayServer, redis_client: redis.Redis, tenant: str
) -> None:
    async with subscription(gateway.http_url, SSE, EVENTS_QUERY, make_token(tenant, ttl=2)) as (_, messages):
        await wait_until(lambda: len(groups(redis_client, tenant)) == 1)
        entry_id = publish(redis_client, tenant, "tool_call", {})
        assert [e["id"] for e in await next_data(messages, "events", 1)] == [entry_id]

        event, data = await asyncio.wait_for(anext(messages), 5)
        assert event == "next"
        assert data["errors"] == [{"message": "Token expired", "extensions": {"code": "UNAUTHENTICATED"}}]
        assert (await asyncio.wait_for(anext(messages), 5)) == ("complete", None)
        assert groups(redis_client, tenant) == []  # released before `complete` was sent


async def test_a_query_that_accepts_json_before_event_stream_gets_plain_json(gateway: GatewayServer, tenant: str) -> None:
    """urql lists JSON first, then text/event-stream and multipart/mixed, for every query."""
    async with httpx.AsyncClient() as http:
        response = await http.post(
            gateway.http_url,
            json={"query": "{ stats { subscriptions } }"},
            headers={"authorization": f"Bearer {make_token(tenant)}", "accept": URQL_QUERY_ACCEPT},
        )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"data": {"stats": {"subscriptions": 0}}}


async def test_sigterm_completes_an_sse_subscription_and_removes_its_group(
    redis_url: str, redis_client: redis.Redis, tenant: str, tmp_path: Path
) -> None:
    env = {"RAGLINE_REDIS_URL": redis_url, "RAGLINE_JWT_SECRET": SECRET, "RAGLINE_DATA_DIR": str(tmp_path)}
    process = GatewayProcess(env, tmp_path / "gw.log").start()
    try:
        url = f"http://127.0.0.1:{process.port}/graphql"
        async with subscription(url, SSE, EVENTS_QUERY, make_token(tenant)) as (_, messages):
            await wait_until(lambda: len(groups(redis_client, tenant)) == 1)
            entry_id = publish(redis_client, tenant, "tool_call", {})
            assert [e["id"] for e in await next_data(messages, "events", 1)] == [entry_id]

            started = time.monotonic()
            process.process.send_signal(signal.SIGTERM)

            assert (await asyncio.wait_for(anext(messages), 5)) == ("complete", None)
        assert groups(redis_client, tenant) == []
        process.process.wait(timeout=10)
        assert time.monotonic() - started < 3  # not held for RAGLINE_SHUTDOWN_TIMEOUT (8 s)
        assert "Application shutdown complete" in (tmp_path / "gw.log").read_text()
    finally:
        process.stop()


class SlowClient:
    """The server side of one SSE request to the app over ASGI, for a client that reads
    slowly: the `send` of each of the first `stalls` `next` frames returns only on `release`."""

    def __init__(self, token: str, query: str, stalls: int) -> None:
        self.stalls = stalls
        self.stalled: asyncio.Queue[str] = asyncio.Queue()
        self.release = asyncio.Event()
        self.disconnect = asyncio.Event()
        self.sent: list[str] = []  # body frames whose `send` returned
        self.ended = False
        self._request = [{"type": "http.request", "body": json.dumps({"query": query}).encode(), "more_body": False}]
        headers = [(b"authorization", f"Bearer {token}".encode()), (b"accept", SSE.encode()), (b"content-type", b"application/json")]
        self.scope = {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
            "method": "POST", "scheme": "http", "path": "/graphql", "raw_path": b"/graphql", "root_path": "",
            "query_string": b"", "headers": headers, "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 80),
        }

    async def receive(self) -> dict[str, Any]:
        if self._request:
            return self._request.pop()
        await self.disconnect.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: MutableMapping[str, Any]) -> None:
        body = message.get("body", b"").decode()
        if body.startswith("event: next") and self.stalls > 0:
            self.stalls -= 1
            await self.stalled.put(body)
            await self.release.wait()  # the write has not completed yet
            self.release.clear()
        if message["type"] == "http.response.body":
            self.sent.append(body)
            self.ended = not message.get("more_body", False)


@asynccontextmanager
async def served(
    settings: Settings, client: SlowClient, *others: SlowClient
) -> AsyncIterator[asyncio.Task[None]]:
    """A gateway app (its own runtime, on this loop) serving `client`'s request, and `others`'."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        tasks = [asyncio.create_task(app(c.scope, c.receive, c.send)) for c in (client, *others)]
        try:
            yield tasks[0]
        finally:
            for c in (client, *others):
                c.disconnect.set()
                c.release.set()
            for task in tasks:
                await asyncio.wait_for(task, 10)


async def test_an_event_is_acknowledged_only_after_its_sse_frame_was_sent(
    base_settings: Settings, redis_client: redis.Redis, tenant: str
) -> None:
    """The stalled stream's group must stay put through cursor flushes (one every
    RAGLINE_ACK_INTERVAL): a second stream of the same tenant, which reads at once,
    proves each flush happened by its own group moving past a marker."""
    token = make_token(tenant)
    client = SlowClient(token, EVENTS_QUERY, stalls=2)
    observer = SlowClient(token, "subscription { orderEvents { id } }", stalls=0)
    stalled, observed = f"ragline-ws-{tenant}:", f"ragline-ws-orders-{tenant}:"  # their groups
    async with served(base_settings, client, observer):
        await wait_until(lambda: len(groups(redis_client, tenant)) == 2)
        start = position(redis_client, tenant, stalled)
        first = publish(redis_client, tenant, "tool_call", {"n": 1})  # skipped by the observer
        second = publish(redis_client, tenant, "tool_call", {"n": 2})

        assert first in await asyncio.wait_for(client.stalled.get(), 10)
        marker = publish(redis_client, tenant, "order_created", {"n": 3})
        await wait_until(lambda: position(redis_client, tenant, observed) == marker)  # a flush
        assert position(redis_client, tenant, stalled) == start
        client.release.set()  # the first frame is written

        assert second in await asyncio.wait_for(client.stalled.get(), 10)
        await wait_until(lambda: position(redis_client, tenant, stalled) == first)
        marker_2 = publish(redis_client, tenant, "order_created", {"n": 4})
        await wait_until(lambda: position(redis_client, tenant, observed) == marker_2)
        assert position(redis_client, tenant, stalled) == first
        client.release.set()  # the second frame is written; the markers are not held
        await wait_until(lambda: position(redis_client, tenant, stalled) == marker_2)
    frames = [f for f in client.sent if f.startswith("event: next")]
    ids = [json.loads(f.split("data: ", 1)[1])["data"]["events"]["id"] for f in frames]
    assert ids == [first, second, marker, marker_2]
    assert groups(redis_client, tenant) == []


def position(client: redis.Redis, tenant: str, prefix: str) -> str:
    """Last-delivered id of the tenant's one group whose name starts with `prefix`."""
    (group,) = [g for g in groups(client, tenant) if str(g["name"]).startswith(prefix)]
    return str(group["last-delivered-id"])


async def test_a_stalled_http_subscription_ends_with_slow_consumer_and_its_event_unacknowledged(
    base_settings: Settings, redis_client: redis.Redis, tenant: str
) -> None:
    query = 'subscription { events(durable: "slow") { id } }'  # a durable cursor outlives the stream
    client = SlowClient(make_token(tenant), query, stalls=1)
    async with served(base_settings.with_overrides(slow_consumer_timeout=0.5), client) as task:
        await wait_until(lambda: len(groups(redis_client, tenant)) == 1)
        start = last_delivered(redis_client, tenant)
        unsent = publish(redis_client, tenant, "tool_call", {})

        assert unsent in await asyncio.wait_for(client.stalled.get(), 10)
        await asyncio.wait_for(task, 5)  # the response ended on its own

    error = {"message": SLOW_CONSUMER.reason, "extensions": {"code": "SLOW_CONSUMER"}}
    assert client.sent == [f"event: next\ndata: {json.dumps({'data': None, 'errors': [error]}, separators=(',', ':'))}\n\nevent: complete\ndata: \n\n", ""]
    assert client.ended
    assert last_delivered(redis_client, tenant) == start  # resuming "slow" starts with `unsent`
