"""Every lifecycle rule on every transport (gateway/connection.py), as each client sees it.

The rules: a token's expiry ends the connection; a client that stops reading loses its
subscription as a slow consumer; a graceful drain completes it; the per-user and
per-tenant connection limits refuse one connection too many, on any transport, until
one closes. Each transport says an ending in its own words (gateway/closes.py,
docs/errors.md); the tables below hold them, one row per transport (tests/transports.py).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from test_backpressure import SLOW_CONSUMER_CLOSES, SLOW_CONSUMER_ERROR
from transports import (
    BY_NAME,
    ENDED,
    EVENT_TYPE,
    MULTIPART_END,
    OPEN,
    OPERATION,
    TRANSPORTS,
    End,
    Ending,
    Transport,
    connect,
    refusal,
)

from helpers import GatewayServer, groups, make_token, metric, publish, wait_until
from ragline.gateway.settings import Settings
from ragline.streaming import keys

pytestmark = pytest.mark.anyio
MATRIX = [pytest.param(transport, id=transport.name) for transport in TRANSPORTS]

STALLING_EVENTS = 400  # 8 MB: twice what loopback's socket buffers (4 MB) hold
BLOB = "x" * 20_000
SLOW_REASON = str(SLOW_CONSUMER_ERROR["message"])
COMPAT_SLOW_REASON = "Slow consumer: the client did not read its events in time; reconnect with last_event_id"
USER_LIMIT = "connections_per_user"
TENANT_LIMIT = "connections_per_tenant"
USER_REASON = "Too many connections for this user (at most 1)"
TENANT_REASON = "Too many connections for this tenant (at most 2)"


@dataclass(frozen=True)
class Outcome:
    """What a client reads after its last event: the frames, then the end."""

    words: list[Any]
    end: End


def result_error(message: str, code: str) -> dict[str, Any]:
    return {"data": None, "errors": [{"message": message, "extensions": {"code": code}}]}


def http_operation_ended(result: dict[str, Any]) -> dict[str, Outcome]:
    """GraphQL over SSE and multipart: the result with the error, `complete`, the response's end."""
    return {
        "graphql-sse": Outcome([{"event": "next", "data": result}, {"event": "complete", "data": None}], ENDED),
        "multipart": Outcome([{"payload": result}, MULTIPART_END], ENDED),
    }


def both(path: str, outcome: Outcome) -> dict[str, Outcome]:
    """/ws and /ws/orders, or /stream and /stream/orders, alike."""
    return {path: outcome, f"{path}-orders": outcome}


EXPIRED = {
    "graphql-transport-ws": Outcome([], (4403, "Token expired")),
    "graphql-ws": Outcome([], (4403, "Token expired")),
    **http_operation_ended(result_error("Token expired", "UNAUTHENTICATED")),
    **both("ws", Outcome([], (1008, "Token expired"))),
    **both("stream", Outcome([{"event": "error", "data": {"code": "UNAUTHENTICATED", "message": "Token expired"}}], ENDED)),
}
SLOW = {
    "graphql-transport-ws": Outcome(
        [{"id": OPERATION, "type": "next", "payload": {"data": None, "errors": [SLOW_CONSUMER_ERROR]}},
         {"id": OPERATION, "type": "complete"}],
        OPEN,  # the connection stays open for new operations
    ),
    "graphql-ws": Outcome([{"id": OPERATION, "type": "error", "payload": SLOW_CONSUMER_ERROR}], (1013, SLOW_REASON)),
    **http_operation_ended(result_error(SLOW_REASON, "SLOW_CONSUMER")),
    **both("ws", Outcome([{"type": "error", "code": "SLOW_CONSUMER", "message": COMPAT_SLOW_REASON}], (1013, COMPAT_SLOW_REASON))),
    **both("stream", Outcome([{"event": "error", "data": {"code": "SLOW_CONSUMER", "message": COMPAT_SLOW_REASON}}], ENDED)),
}
DRAINED = {
    "graphql-transport-ws": Outcome([{"id": OPERATION, "type": "complete"}], (1001, "Server shutting down")),
    "graphql-ws": Outcome([{"id": OPERATION, "type": "complete"}], (1001, "Server shutting down")),
    "graphql-sse": Outcome([{"event": "complete", "data": None}], ENDED),
    "multipart": Outcome([MULTIPART_END], ENDED),
    **both("ws", Outcome([], (1001, "Server shutting down"))),
    **both("stream", Outcome([], ENDED)),  # no error event: EventSource just reconnects
}


def refused(transport: str, reason: str) -> Any:
    """What a connection over a limit sees: an HTTP transport (status, JSON body), a
    WebSocket its frames and close (transports.Refused)."""
    if transport in {"graphql-sse", "multipart"}:
        return (429, result_error(reason, "TOO_MANY_CONNECTIONS"))
    if transport.startswith("stream"):
        return (429, {"detail": reason, "code": "TOO_MANY_CONNECTIONS"})
    words = [{"type": "connection_error", "payload": {"message": reason}}] if transport == "graphql-ws" else []
    return Ending([], words, (4429, reason))


@pytest.fixture(scope="module")
def slow(base_settings: Settings) -> Iterator[GatewayServer]:
    """A gateway that gives up on a client after a second without reading."""
    server = GatewayServer(base_settings.with_overrides(slow_consumer_timeout=1.0)).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def limited(base_settings: Settings) -> Iterator[GatewayServer]:
    """A gateway that takes one connection per user and two per tenant."""
    server = GatewayServer(base_settings.with_overrides(max_connections_per_user=1, max_connections_per_tenant=2)).start()
    yield server
    server.stop()


async def connections(gateway: GatewayServer, tenant: str) -> float:
    return await metric(gateway.port, "ragline_connections", tenant=tenant)


async def refusals(gateway: GatewayServer, limit: str) -> float:
    """`ragline_limit_refusals_total{limit}`; 0 before the first refusal."""
    try:
        return await metric(gateway.port, "ragline_limit_refusals_total", limit=limit)
    except AssertionError as missing:
        if "no sample" not in str(missing):
            raise
        return 0.0


async def released(
    gateway: GatewayServer, redis_client: redis.Redis, tenant: str, left: int, *, groups_left: int | None = None
) -> None:
    """Wait until the tenant is down to `left` connections and `groups_left` consumer groups
    (as many as connections unless told)."""
    expected = (left, left if groups_left is None else groups_left)

    def figures() -> tuple[int, int]:
        return gateway.hub.counters.tenant(tenant).connections, len(groups(redis_client, tenant))

    await wait_until(
        lambda: figures() == expected,
        failure=lambda: f"(connections, groups) of the tenant stayed {figures()}, not {expected}",
    )


# -- 1. token expiry ---------------------------------------------------------------------


@pytest.mark.parametrize("transport", MATRIX)
async def test_an_expired_token_ends_the_connection_and_releases_it(
    transport: Transport, gateway: GatewayServer, redis_client: redis.Redis, tenant: str
) -> None:
    """When the token's `exp` passes (`exp` is whole seconds: 1 to 2 s from now), the client
    is told in its transport's words, the connection is no longer counted and its group goes."""
    async with connect(transport, gateway, redis_client, tenant, make_token(tenant, ttl=2)) as client:
        assert await connections(gateway, tenant) == 1
        ending = await client.rest()
    expected = EXPIRED[transport.name]
    assert ending == Ending([], expected.words, expected.end)
    await released(gateway, redis_client, tenant, 0)
    assert await connections(gateway, tenant) == 0


# -- 2. slow consumers -------------------------------------------------------------------


def publish_bulk(client: redis.Redis, tenant: str) -> list[str]:
    with client.pipeline(transaction=False) as pipe:
        for n in range(STALLING_EVENTS):
            fields: dict[Any, Any] = {"event_type": EVENT_TYPE, "tenant_id": tenant, "payload": json.dumps({"blob": BLOB, "n": n})}
            pipe.xadd(keys.events_key(tenant), fields)
        return [entry_id.decode() for entry_id in pipe.execute()]


async def given_up(gateway: GatewayServer, tenant: str) -> None:
    """Stay stalled until the gateway released the stalled subscription, which it does right
    before its last words (given a second to be taken): polled every 5 ms. The proof that
    it was a slow consumer is what the client then reads, and /metrics."""
    await wait_until(
        lambda: gateway.hub.counters.tenant(tenant).subscriptions == 0, timeout=30, interval=0.005,
        failure=lambda: f"the gateway never gave up on the stalled client of {tenant}",
    )


@pytest.mark.parametrize("transport", MATRIX)
async def test_a_client_that_stops_reading_loses_its_subscription_and_nothing_unread_is_acknowledged(
    transport: Transport, slow: GatewayServer, redis_client: redis.Redis, tenant: str
) -> None:
    """A client that stops reading while 8 MB of events come gets, once it reads again, a
    prefix of them and then its transport's SLOW_CONSUMER words; its group is removed, its
    connection no longer counts (graphql-transport-ws keeps it open), it is counted once as
    a slow consumer, and no event after the last one it received was acknowledged (every
    one it received, the first included, was)."""
    closes_before = await metric(slow.port, SLOW_CONSUMER_CLOSES)
    expected = SLOW[transport.name]
    try:
        async with connect(transport, slow, redis_client, tenant, make_token(tenant), stalling=True) as client:
            ids = publish_bulk(redis_client, tenant)
            await given_up(slow, tenant)
            ending = await client.rest(stop_at_complete=expected.end == OPEN)
            await released(slow, redis_client, tenant, 1 if expected.end == OPEN else 0, groups_left=0)
    finally:
        redis_client.delete(keys.events_key(tenant))  # 8 MB
    written = ending.events
    assert 0 < len(written) < len(ids) and written == ids[: len(written)], (len(written), written[-1:])
    assert (ending.words, ending.end) == (expected.words, expected.end)
    closes = await metric(slow.port, SLOW_CONSUMER_CLOSES) - closes_before
    assert closes == 1, f"{closes:g} slow consumers counted"
    acknowledged = await metric(slow.port, "ragline_events_acknowledged_total", tenant=tenant)
    assert acknowledged == 1 + len(written), f"{acknowledged:g} events acknowledged, {1 + len(written)} received"


# -- 3. graceful drain -------------------------------------------------------------------


@pytest.mark.parametrize("transport", MATRIX)
async def test_a_graceful_drain_ends_the_subscription_in_its_words_and_loses_nothing(
    transport: Transport, make_gateway: Any, redis_client: redis.Redis, tenant: str
) -> None:
    """A gateway stopping (SIGTERM's path: DrainingServer) while the client has events still
    unread: the client reads every one of them, then its transport's end; its group goes."""
    gateway: GatewayServer = make_gateway()
    async with connect(transport, gateway, redis_client, tenant, make_token(tenant)) as client:
        ids = [publish(redis_client, tenant, EVENT_TYPE, {"n": n}) for n in range(3)]
        # written to the client's socket (counted once written), not read by the client yet
        await wait_until(lambda: gateway.hub.counters.tenant(tenant).delivered == 1 + len(ids))
        stopping = asyncio.create_task(asyncio.to_thread(gateway.stop))
        ending = await client.rest()
        await stopping
    expected = DRAINED[transport.name]
    assert ending == Ending(ids, expected.words, expected.end)
    assert groups(redis_client, tenant) == []


# -- 4. connection limits ----------------------------------------------------------------


@pytest.mark.parametrize("transport", MATRIX)
async def test_a_connection_over_the_user_or_tenant_limit_is_refused_until_one_closes(
    transport: Transport, limited: GatewayServer, redis_client: redis.Redis, tenant: str
) -> None:
    """One connection per user, two per tenant: alice's second and carol's (after alice's and
    bob's) are refused in the transport's words and counted in /metrics by limit; once
    alice's closes, its slot is free again."""
    alice, bob, carol = (make_token(tenant, user) for user in ("alice", "bob", "carol"))
    users, tenants = await refusals(limited, USER_LIMIT), await refusals(limited, TENANT_LIMIT)
    async with connect(transport, limited, redis_client, tenant, bob):
        async with connect(transport, limited, redis_client, tenant, alice):
            assert await refusal(transport, limited, alice) == refused(transport.name, USER_REASON)
            assert await refusals(limited, USER_LIMIT) - users == 1
            assert await refusal(transport, limited, carol) == refused(transport.name, TENANT_REASON)
            assert await refusals(limited, TENANT_LIMIT) - tenants == 1
        await released(limited, redis_client, tenant, 1)
        async with connect(transport, limited, redis_client, tenant, alice):
            pass  # accepted, and live
    assert (await refusals(limited, USER_LIMIT) - users, await refusals(limited, TENANT_LIMIT) - tenants) == (1, 1)


CROSSINGS = [("stream", "ws"), ("ws", "stream"), ("graphql-sse", "graphql-transport-ws"), ("graphql-ws", "multipart")]


@pytest.mark.parametrize(("held", "other"), [pytest.param(a, b, id=f"{a}-then-{b}") for a, b in CROSSINGS])
async def test_the_user_limit_counts_connections_of_every_transport(
    held: str, other: str, limited: GatewayServer, redis_client: redis.Redis, tenant: str
) -> None:
    """A user holding a connection on one transport is refused one on another, until it closes."""
    token = make_token(tenant, "alice")
    users = await refusals(limited, USER_LIMIT)
    async with connect(BY_NAME[held], limited, redis_client, tenant, token):
        assert await refusal(BY_NAME[other], limited, token) == refused(other, USER_REASON)
    assert await refusals(limited, USER_LIMIT) - users == 1
    await released(limited, redis_client, tenant, 0)
    async with connect(BY_NAME[other], limited, redis_client, tenant, token):
        pass  # accepted, and live
