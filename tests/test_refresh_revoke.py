"""`refreshToken` and `revoke` (CONTRACT.md 3a and 5), as the clients of every transport see them.

A connection goes on under a new token of its own tenant and user (`refreshToken` on the
GraphQL WebSockets, `refresh_token` on /ws) and then outlives the old token's expiry; any
other token is FORBIDDEN and changes nothing. An admin's `revoke` (or `ragline revoke`)
ends the matching connections of every gateway sharing the Redis, each in its transport's
words, within 2 s; from then on their tokens issued before it are refused everywhere, also
by a gateway started later, while tokens issued after it work.

The two gateways of `pair` are separate apps (each its own runtime, Redis clients and
revocation follower) in this process, as two processes on one Redis would be; they read
revocations every 0.2 s (RAGLINE_CONTROL_INTERVAL). Connections are spread over both.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import test_node_clients as node_clients
from test_cli import RAGLINE, ROOT
from test_lifecycle import EXPIRED, Outcome, both, http_operation_ended, result_error
from test_node_clients import node_env  # noqa: F401  (the fixture: Node.js with tests/clients installed)
from test_resilience import process_env
from transports import (
    BY_NAME,
    ENDED,
    EVENT_TYPE,
    TRANSPORTS,
    Client,
    CompatWsClient,
    Ending,
    GraphQLWsClient,
    connect,
    refusal,
)

from helpers import (
    STATS_QUERY,
    TRANSPORT_WS,
    GatewayProcess,
    GatewayServer,
    groups,
    make_token,
    metric,
    new_tenant,
    publish,
    wait_until,
)
from ragline.gateway.settings import Settings
from ragline.streaming import keys

pytestmark = pytest.mark.anyio

CONTROL_INTERVAL = 0.2  # RAGLINE_CONTROL_INTERVAL of the gateways here
REVOKE_WITHIN = 2.0  # seconds from the revoke to the last matching connection's end
EXPIRY_TOLERANCE = 1.0  # seconds after a token's exp within which its connection must end
QUIET_AFTER_EXPIRY = 0.5  # how long past the old exp a refreshed connection must stay quiet and open
NODE_SUITE = "refresh-revoke.mjs"
LIFETIME = 86400  # RAGLINE_MAX_TOKEN_LIFETIME's default

REFRESH = "mutation($token: String!) { refreshToken(token: $token) { tenantId userId expiresAt } }"
REVOKE = (
    "mutation($tenantId: String!, $userId: String, $reason: String) {"
    " revoke(tenantId: $tenantId, userId: $userId, reason: $reason) { tenantId userId revokedBefore } }"
)
REFRESH_ID = "refresh"  # the operation id of a refresh on a GraphQL WebSocket
# What the refresh of a connection answers to a token it does not take (gateway/connection.py).
OTHER_IDENTITY = "The token names another tenant or user"
EXPIRED_TOKEN = "Token refused: invalid token (ExpiredSignatureError)"
MALFORMED_TOKEN = "Token refused: malformed token"
REVOKED_TOKEN = "Token refused: token revoked"
# The WebSocket transports that can refresh their token without reconnecting.
REFRESHABLE = ["graphql-transport-ws", "graphql-ws", "ws", "ws-orders"]

# How a revoked connection ends, by transport (the words of an expiry, saying "Revoked").
REVOKED = {
    "graphql-transport-ws": Outcome([], (4403, "Revoked")),
    "graphql-ws": Outcome([{"type": "connection_error", "payload": {"message": "Revoked"}}], (4403, "Revoked")),
    **http_operation_ended(result_error("Revoked", "UNAUTHENTICATED")),
    **both("ws", Outcome([], (1008, "Revoked"))),
    **both("stream", Outcome([{"event": "error", "data": {"code": "UNAUTHENTICATED", "message": "Revoked"}}], ENDED)),
}
# What a connection with a revoked token sees (transports.refusal): a refused token's words.
UNAUTHORIZED = (401, {"detail": "Unauthorized"})
REFUSED = {
    "graphql-transport-ws": Ending([], [], (4403, "Forbidden")),
    "graphql-ws": Ending([], [{"type": "connection_error", "payload": {"message": "Forbidden"}}], (4403, "Forbidden")),
    "graphql-sse": UNAUTHORIZED,
    "multipart": UNAUTHORIZED,
    "ws": Ending([], [], (1008, "Invalid token")),
    "ws-orders": Ending([], [], (1008, "Invalid token")),
    "stream": UNAUTHORIZED,
    "stream-orders": UNAUTHORIZED,
}


@pytest.fixture(scope="module")
def pair(base_settings: Settings) -> Iterator[tuple[GatewayServer, GatewayServer]]:
    settings = base_settings.with_overrides(control_interval=CONTROL_INTERVAL)
    gateways = (GatewayServer(settings).start(), GatewayServer(settings).start())
    yield gateways
    for gateway in gateways:
        gateway.stop()


def admin(tenant: str) -> str:
    return make_token(tenant, "root", roles=["admin"])


def moment(text: str) -> float:
    """A DateTime of the API (ISO-8601 with a zone), in unix seconds."""
    parsed = datetime.fromisoformat(text)
    assert parsed.tzinfo is not None, text
    return parsed.timestamp()


def field_error(query: str, field: str, message: str, code: str) -> dict[str, Any]:
    """The result of a mutation whose resolver failed, as Strawberry gives it."""
    column = query.index(f"{field}(") + 1
    error = {"message": message, "locations": [{"line": 1, "column": column}], "path": [field], "extensions": {"code": code}}
    return {"data": None, "errors": [error]}


async def post(gateway: GatewayServer, token: str, query: str, variables: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        return await http.post(
            gateway.http_url, json={"query": query, "variables": variables}, headers={"Authorization": f"Bearer {token}"}
        )


async def revoke(gateway: GatewayServer, token: str, tenant: str, user: str | None, reason: str = "test") -> float:
    """The `revoke` mutation over HTTP: its `revokedBefore`, checked to be the time of the call."""
    before = time.time()
    response = await post(gateway, token, REVOKE, {"tenantId": tenant, "userId": user, "reason": reason})
    after = time.time()
    assert response.status_code == 200, response.text
    result = response.json()
    revoked_before = result["data"]["revoke"]["revokedBefore"]
    assert result == {"data": {"revoke": {"tenantId": tenant, "userId": user, "revokedBefore": revoked_before}}}
    assert before - 0.001 <= moment(revoked_before) <= after + 0.001, (before, revoked_before, after)
    return moment(revoked_before)


Spec = tuple[str, GatewayServer, str]  # a connection to open: transport, gateway, token


async def open_all(stack: AsyncExitStack, redis_client: redis.Redis, tenant: str, specs: list[Spec]) -> list[Client]:
    """(transport, gateway, token) connections of `tenant`, opened and proven live one after
    another (transports.connect); each has then read the events that proved the later ones
    live, so that they all wait at the same point of the tenant's stream."""
    clients = [
        await stack.enter_async_context(connect(BY_NAME[name], gateway, redis_client, tenant, token))
        for name, gateway, token in specs
    ]
    entries: Any = redis_client.xrange(keys.events_key(tenant))
    lives = [entry_id.decode() for entry_id, _ in entries][-len(clients) :]
    for n, client in enumerate(clients):
        assert [await client.event() for _ in lives[n + 1 :]] == lives[n + 1 :]
    return clients


async def all_get_the_next_event(clients: list[Client], redis_client: redis.Redis, tenant: str) -> None:
    """An event published now reaches every one of `clients`, as their next frame."""
    entry = publish(redis_client, tenant, EVENT_TYPE, {"after": "this"})
    assert [await client.event() for client in clients] == [entry] * len(clients)


async def ends(clients: list[Client]) -> list[tuple[Ending, float]]:
    """How each client's connection ended (transports.Client.rest), and when (unix time)."""

    async def end(client: Client) -> tuple[Ending, float]:
        ending = await client.rest()
        return ending, time.time()

    return list(await asyncio.gather(*(end(client) for client in clients)))


async def refresh(client: Client, token: str) -> Any:
    """Refresh the connection's token with its protocol's message. The answer: a GraphQL
    WebSocket's result (`next`, or legacy `data`, then `complete`); /ws's message."""
    if isinstance(client, GraphQLWsClient):
        await client.protocol.subscribe(REFRESH_ID, REFRESH, {"token": token})
        answer = await client.frame()
        kind = "next" if client.protocol.protocol == TRANSPORT_WS else "data"
        assert (answer.get("type"), answer.get("id")) == (kind, REFRESH_ID), answer
        assert await client.frame() == {"id": REFRESH_ID, "type": "complete"}
        return answer["payload"]
    assert isinstance(client, CompatWsClient), client
    await client.ws.send(json.dumps({"type": "refresh_token", "token": token}))
    return await client.frame()  # its `timestamp` checked and left out


def refreshed_until(client: Client, answer: Any, tenant: str, user: str) -> float:
    """The new expiry a successful refresh answered (unix seconds), the rest of the answer checked."""
    if isinstance(client, GraphQLWsClient):
        expires_at = answer["data"]["refreshToken"]["expiresAt"]
        assert answer == {"data": {"refreshToken": {"tenantId": tenant, "userId": user, "expiresAt": expires_at}}}
    else:
        expires_at = answer.get("expires_at")
        assert answer == {"type": "token_refreshed", "expires_at": expires_at}
    return moment(expires_at)


def forbidden(client: Client, message: str) -> Any:
    """The answer to a refresh with a token the connection does not take."""
    if isinstance(client, GraphQLWsClient):
        return field_error(REFRESH, "refreshToken", message, "FORBIDDEN")
    return {"type": "error", "code": "FORBIDDEN", "message": message}


async def quiet_until(client: Client, deadline: float) -> None:
    """Nothing comes, and the connection stays open, until `deadline` (unix time)."""
    try:
        async with asyncio.timeout(deadline - time.time()):
            frame = await client.next_frame()  # heartbeats and keep-alives skipped; a close raises Ended
    except TimeoutError:
        return
    raise AssertionError(f"{frame} came before {deadline}")


async def revoked_refusals(gateway: GatewayServer) -> float:
    """`ragline_auth_failures_total{reason="revoked"}`; 0 before the first."""
    try:
        return await metric(gateway.port, "ragline_auth_failures_total", reason="revoked")
    except AssertionError as missing:
        if "no sample" not in str(missing):
            raise
        return 0.0


async def stats_status(gateway: GatewayServer, token: str) -> int:
    return (await post(gateway, token, STATS_QUERY, {})).status_code


async def wait_until_groups(redis_client: redis.Redis, tenant: str, count: int) -> None:
    """Until the tenant has `count` consumer groups: the ended connections' groups are gone."""
    await wait_until(lambda: len(groups(redis_client, tenant)) == count)


# -- refreshToken ------------------------------------------------------------------------


def test_the_graphql_ws_client_refreshes_and_its_subscription_goes_on_without_a_gap(
    node_env: dict[str, str],  # noqa: F811
) -> None:
    """The real graphql-ws client (tests/clients/refresh-revoke.mjs): a token expiring in 2-3 s,
    an `events` subscription, an event published every 0.5 s for 10 s, `refreshToken` sent as
    an operation on the same client before the expiry. Its answer names the new exp; every
    event arrives once, in order; the socket never closes (one connection throughout)."""
    node_clients.test_client_library_suite_passes(NODE_SUITE, node_env)


async def test_a_refreshed_connection_outlives_the_old_expiry_on_every_websocket(
    pair: tuple[GatewayServer, GatewayServer], redis_client: redis.Redis, tenant: str
) -> None:
    """graphql-transport-ws, legacy graphql-ws (a `start` with the mutation), /ws and /ws/orders
    (`refresh_token`): the answer carries the new token's exp; the subscription goes on, quiet
    and open until past the old exp, then gets the next event."""
    old_exp = int(time.time()) + 3
    new_exp = old_exp + 600
    specs = [(name, pair[n % 2], make_token(tenant, "alice", exp=old_exp)) for n, name in enumerate(REFRESHABLE)]
    async with AsyncExitStack() as stack:
        clients = await open_all(stack, redis_client, tenant, specs)
        for name, client in zip(REFRESHABLE, clients, strict=True):
            answer = await refresh(client, make_token(tenant, "alice", exp=new_exp))
            assert refreshed_until(client, answer, tenant, "alice") == new_exp, name
        assert time.time() < old_exp, "too slow: the refreshes were answered after the old exp"
        await asyncio.gather(*(quiet_until(client, old_exp + QUIET_AFTER_EXPIRY) for client in clients))
        await all_get_the_next_event(clients, redis_client, tenant)


async def test_a_refresh_with_another_identitys_or_a_bad_token_is_forbidden_and_the_old_expiry_holds(
    pair: tuple[GatewayServer, GatewayServer], redis_client: redis.Redis, tenant: str
) -> None:
    """Another user's token, another tenant's, an expired one and garbage: FORBIDDEN, and
    nothing changes: the subscription goes on and the connection ends at the old exp (not
    before, and within a second) with its transport's "Token expired"."""
    expires = int(time.time()) + 3
    refused = [
        (make_token(tenant, "bob"), OTHER_IDENTITY),
        (make_token(new_tenant(), "alice"), OTHER_IDENTITY),
        (make_token(tenant, "alice", ttl=-60), EXPIRED_TOKEN),
        ("not-a-jwt", MALFORMED_TOKEN),
    ]
    specs = [(name, pair[n % 2], make_token(tenant, "alice", exp=expires)) for n, name in enumerate(REFRESHABLE)]
    async with AsyncExitStack() as stack:
        clients = await open_all(stack, redis_client, tenant, specs)
        for name, client in zip(REFRESHABLE, clients, strict=True):
            for token, message in refused:
                assert await refresh(client, token) == forbidden(client, message), (name, message)
        assert time.time() < expires, "too slow: the refreshes were answered after the exp"
        await all_get_the_next_event(clients, redis_client, tenant)
        endings = await ends(clients)
    for name, (ending, ended_at) in zip(REFRESHABLE, endings, strict=True):
        expected = EXPIRED[name]
        assert ending == Ending([], expected.words, expected.end), name
        assert expires <= ended_at < expires + EXPIRY_TOLERANCE, (name, ended_at - expires)


async def test_refresh_token_over_http_needs_a_websocket(gateway: GatewayServer, tenant: str) -> None:
    token = make_token(tenant, "alice")
    response = await post(gateway, token, REFRESH, {"token": make_token(tenant, "alice", ttl=600)})
    assert response.status_code == 200
    message = "refreshToken needs a WebSocket connection"
    assert response.json() == field_error(REFRESH, "refreshToken", message, "BAD_USER_INPUT")


# -- revoke ------------------------------------------------------------------------------


async def test_revoke_ends_a_users_connections_on_every_transport_and_gateway_and_refuses_the_token(
    pair: tuple[GatewayServer, GatewayServer], redis_client: redis.Redis, tenant: str, caplog: pytest.LogCaptureFixture
) -> None:
    """alice on each of the 8 transports, bob on two, spread over both gateways; an admin's
    `revoke` of alice sent to one: within 2 s each of alice's connections ends in its
    transport's words, and bob's still get events. alice's token is then refused on every
    transport of both gateways (and counted as revoked), also as a refresh, while a token of
    hers issued after the revocation works everywhere. The log says who revoked whom, and why."""
    alice, bob = make_token(tenant, "alice"), make_token(tenant, "bob")
    specs = [(t.name, pair[n % 2], alice) for n, t in enumerate(TRANSPORTS)]
    specs += [("graphql-transport-ws", pair[0], bob), ("ws", pair[1], bob)]
    refusals_before = [await revoked_refusals(gateway) for gateway in pair]
    async with AsyncExitStack() as stack:
        clients = await open_all(stack, redis_client, tenant, specs)
        victims, bystanders = clients[: len(TRANSPORTS)], clients[len(TRANSPORTS) :]
        started = time.monotonic()
        await revoke(pair[0], admin(tenant), tenant, "alice", reason="lost laptop")
        endings = await ends(victims)
        took = time.monotonic() - started
        for transport, (ending, _) in zip(TRANSPORTS, endings, strict=True):
            expected = REVOKED[transport.name]
            assert ending == Ending([], expected.words, expected.end), transport.name
        assert took < REVOKE_WITHIN, f"the revoked connections ended {took:.2f} s after the revoke"
        await all_get_the_next_event(bystanders, redis_client, tenant)

        fresh = make_token(tenant, "alice", iat=time.time())
        for n, transport in enumerate(TRANSPORTS):
            gateway = pair[(n + 1) % 2]  # the other gateway than the one the first connection had
            assert await refusal(transport, gateway, alice) == REFUSED[transport.name], transport.name
            await wait_until_groups(redis_client, tenant, len(bystanders))  # transports.connect counts on it
            async with connect(transport, gateway, redis_client, tenant, fresh) as client:
                if transport.name in REFRESHABLE:
                    assert await refresh(client, alice) == forbidden(client, REVOKED_TOKEN), transport.name
        for gateway in pair:
            assert await stats_status(gateway, alice) == 401
            assert await stats_status(gateway, fresh) == 200
    refused = [await revoked_refusals(gateway) - before for gateway, before in zip(pair, refusals_before, strict=True)]
    assert refused == [4 + 2 + 1] * 2  # on each gateway: 4 transports, 2 refreshes, 1 stats query
    logged = [r for r in caplog.records if r.getMessage().startswith("revocation: ")]
    assert len(logged) == 1 and logged[0].levelname == "WARNING", [r.getMessage() for r in logged]
    assert all(part in logged[0].getMessage() for part in ("root", "alice", tenant, "lost laptop")), logged[0].getMessage()


async def test_a_tenant_wide_revoke_ends_every_user_of_the_tenant_and_no_other_tenant(
    pair: tuple[GatewayServer, GatewayServer], redis_client: redis.Redis
) -> None:
    """`revoke` with userId null: four users of the tenant on four transports end within 2 s;
    two connections of another tenant (same user names) still get events. Then any user's
    token issued before the moment is refused (one without `iat` too, one 1 ms before),
    one issued at it or later works. The tenant's key holds the moment in ms."""
    revoked, other = new_tenant(), new_tenant()
    users = ["alice", "bob", "carol", "dave"]
    victim_transports = ["graphql-transport-ws", "graphql-ws", "stream", "multipart"]
    async with AsyncExitStack() as stack:
        victim_specs = [
            (name, pair[n % 2], make_token(revoked, user))
            for n, (name, user) in enumerate(zip(victim_transports, users, strict=True))
        ]
        victims = await open_all(stack, redis_client, revoked, victim_specs)
        other_specs = [("graphql-transport-ws", pair[0], make_token(other, "alice")), ("ws", pair[1], make_token(other, "bob"))]
        others = await open_all(stack, redis_client, other, other_specs)
        started = time.monotonic()
        revoked_before = await revoke(pair[1], admin(revoked), revoked, None, reason="tenant offboarded")
        endings = await ends(victims)
        took = time.monotonic() - started
        for name, (ending, _) in zip(victim_transports, endings, strict=True):
            expected = REVOKED[name]
            assert ending == Ending([], expected.words, expected.end), name
        assert took < REVOKE_WITHIN, f"the revoked connections ended {took:.2f} s after the revoke"
        await all_get_the_next_event(others, redis_client, other)
    revoked_ms = int(redis_client.get(f"ragline:{{{revoked}}}:revoked") or 0)
    assert revoked_ms == round(revoked_before * 1000)
    at = revoked_ms / 1000  # the moment, as the gateway compares `iat` with it
    transport = BY_NAME["graphql-transport-ws"]
    for token in (make_token(revoked, "erin"), make_token(revoked, "alice", iat=at - 0.001)):
        assert await refusal(transport, pair[0], token) == REFUSED[transport.name]
    await wait_until_groups(redis_client, revoked, 0)
    for n, iat in enumerate((at, time.time())):
        async with connect(transport, pair[n % 2], redis_client, revoked, make_token(revoked, "erin", iat=iat)):
            pass  # accepted, and live
        await wait_until_groups(redis_client, revoked, 0)


async def test_authentications_arriving_together_are_each_judged_by_their_own_users_revocation(
    pair: tuple[GatewayServer, GatewayServer], tenant: str
) -> None:
    """Authentications of one tenant that arrive together share one read of the revocations;
    each is still judged by its own user's: alice's old tokens are refused (401) between
    bob's, carol's and dave's, which are taken, and her token issued after the revoke is taken."""
    old = {user: make_token(tenant, user) for user in ("alice", "bob", "carol", "dave")}
    await revoke(pair[0], admin(tenant), tenant, "alice")
    fresh = make_token(tenant, "alice", iat=time.time())
    order = ["bob", "alice", "carol", "alice", "dave", "fresh", "alice", "bob"]
    for gateway in pair:
        statuses = await asyncio.gather(*(stats_status(gateway, old.get(user, fresh)) for user in order))
        assert dict(zip(range(len(order)), statuses, strict=True)) == {
            n: 401 if user == "alice" else 200 for n, user in enumerate(order)
        }


async def test_a_revoke_without_the_admin_role_or_with_an_invalid_id_changes_nothing(
    pair: tuple[GatewayServer, GatewayServer], redis_client: redis.Redis, tenant: str
) -> None:
    """Refused revokes (FORBIDDEN without the admin role, BAD_USER_INPUT for an invalid id)
    store nothing and end nothing: once a later, valid revoke of a sentinel user has ended
    its connections on both gateways (each reads revocations in order), alice's still get events."""
    alice = make_token(tenant, "alice")
    sentinel_tenant = new_tenant()
    sentinel = make_token(sentinel_tenant, "sentinel")
    no_admin, bad_id = "revoke needs the admin role", "must match [A-Za-z0-9_.-]{1,64}"
    attempts: list[tuple[str, dict[str, str | None], str, str]] = [
        (make_token(tenant, "bob"), {"tenantId": tenant, "userId": "alice"}, no_admin, "FORBIDDEN"),
        (make_token(tenant, "bob", roles=["viewer"]), {"tenantId": tenant, "userId": None}, no_admin, "FORBIDDEN"),
        (alice, {"tenantId": tenant, "userId": "alice"}, no_admin, "FORBIDDEN"),
        (admin(tenant), {"tenantId": f"{tenant}:x", "userId": "alice"}, f"tenantId {bad_id}", "BAD_USER_INPUT"),
        (admin(tenant), {"tenantId": tenant, "userId": "al ice"}, f"userId {bad_id}", "BAD_USER_INPUT"),
    ]
    async with AsyncExitStack() as stack:
        watched = await open_all(stack, redis_client, tenant, [("graphql-transport-ws", pair[0], alice), ("ws", pair[1], alice)])
        sentinel_specs: list[Spec] = [("graphql-transport-ws", gateway, sentinel) for gateway in pair]
        sentinels = await open_all(stack, redis_client, sentinel_tenant, sentinel_specs)
        for token, variables, message, code in attempts:
            response = await post(pair[0], token, REVOKE, {**variables, "reason": "no"})
            assert (response.status_code, response.json()) == (200, field_error(REVOKE, "revoke", message, code)), variables
        await revoke(pair[0], admin(sentinel_tenant), sentinel_tenant, "sentinel")
        assert [ending for ending, _ in await ends(sentinels)] == [Ending([], [], (4403, "Revoked"))] * 2
        await all_get_the_next_event(watched, redis_client, tenant)
    assert [redis_client.get(key) for key in (f"ragline:{{{tenant}}}:revoked", f"ragline:{{{tenant}}}:revoked:alice")] == [None] * 2
    assert await stats_status(pair[1], alice) == 200


async def test_a_revocation_outlives_the_gateway_that_wrote_it(
    make_gateway: Any, redis_client: redis.Redis, tenant: str
) -> None:
    """Revoked through one gateway, which then stops: a gateway started afterwards on the same
    Redis refuses the old token (4403, 401) and takes a fresh one. The user's key holds the
    moment in ms and expires RAGLINE_MAX_TOKEN_LIFETIME after it."""
    old = make_token(tenant, "alice")
    first: GatewayServer = make_gateway(control_interval=CONTROL_INTERVAL)
    revoked_before = await revoke(first, admin(tenant), tenant, "alice")
    first.stop()
    key = f"ragline:{{{tenant}}}:revoked:alice"
    assert int(redis_client.get(key) or 0) == round(revoked_before * 1000)
    assert (LIFETIME - 10) * 1000 < redis_client.pttl(key) <= LIFETIME * 1000
    second: GatewayServer = make_gateway(control_interval=CONTROL_INTERVAL)
    transport = BY_NAME["graphql-transport-ws"]
    assert await refusal(transport, second, old) == REFUSED[transport.name]
    assert await stats_status(second, old) == 401
    async with connect(transport, second, redis_client, tenant, make_token(tenant, "alice", iat=time.time())):
        pass  # accepted, and live


async def test_a_token_living_longer_than_the_maximum_lifetime_is_refused(
    pair: tuple[GatewayServer, GatewayServer], tenant: str
) -> None:
    """exp - iat (exp - now without iat) over RAGLINE_MAX_TOKEN_LIFETIME: a revocation, which
    expires after that long, could otherwise be outlived. Exactly the maximum is taken."""
    now = int(time.time())
    assert await stats_status(pair[0], make_token(tenant, ttl=LIFETIME + 60)) == 401
    assert await stats_status(pair[0], make_token(tenant, iat=now - 60, exp=now - 60 + LIFETIME + 1)) == 401
    assert await stats_status(pair[0], make_token(tenant, iat=now - 60, exp=now - 60 + LIFETIME)) == 200


async def test_ragline_revoke_ends_the_users_connections_and_prints_the_moment(
    pair: tuple[GatewayServer, GatewayServer], redis_client: redis.Redis, redis_url: str, tenant: str, tmp_path: Path
) -> None:
    """`ragline revoke --tenant T --user U --reason R` (RAGLINE_REDIS_URL): prints revokedBefore
    as ISO-8601 (the time of the command), logs who and why, and alice's connection ends
    4403 "Revoked" within 2 s of the command's return."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAGLINE_")}
    env.update(RAGLINE_REDIS_URL=redis_url, RAGLINE_DATA_DIR=str(tmp_path / "data"))
    command = [*RAGLINE, "revoke", "--tenant", tenant, "--user", "alice", "--reason", "left the company"]
    async with AsyncExitStack() as stack:
        alice: Spec = ("graphql-transport-ws", pair[1], make_token(tenant, "alice"))
        [client] = await open_all(stack, redis_client, tenant, [alice])
        before = time.time()
        done = await asyncio.to_thread(
            subprocess.run, command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
        )
        returned = time.monotonic()
        after = time.time()
        [(ending, _)] = await ends([client])
        took = time.monotonic() - returned
    assert done.returncode == 0, done.stderr
    assert before <= moment(done.stdout.strip()) <= after
    assert ending == Ending([], [], (4403, "Revoked"))
    assert took < REVOKE_WITHIN, f"the connection ended {took:.2f} s after the command returned"
    assert "revocation: " in done.stderr and "alice" in done.stderr and "left the company" in done.stderr, done.stderr


async def test_a_revoke_through_one_gateway_process_ends_the_connection_on_another(
    pair: tuple[GatewayServer, GatewayServer], redis_client: redis.Redis, redis_url: str, tenant: str, tmp_path: Path
) -> None:
    """Two OS processes: `ragline serve` (RAGLINE_CONTROL_INTERVAL left at its 0.5 s default)
    holds alice's socket; the revoke goes to a gateway of the test process. The socket ends
    4403 "Revoked" within 2 s, and the serving process then refuses the token."""
    other = GatewayProcess(process_env(redis_url), tmp_path / "other.log").start()
    try:
        async with AsyncExitStack() as stack:
            token = make_token(tenant, "alice")
            [client] = await open_all(stack, redis_client, tenant, [("graphql-transport-ws", other, token)])  # type: ignore[list-item]
            await revoke(pair[0], admin(tenant), tenant, "alice")
            returned = time.monotonic()
            [(ending, _)] = await ends([client])
            took = time.monotonic() - returned
        assert ending == Ending([], [], (4403, "Revoked"))
        assert took < REVOKE_WITHIN, f"the connection ended {took:.2f} s after the revoke"
        transport = BY_NAME["graphql-transport-ws"]
        assert await refusal(transport, other, token) == REFUSED[transport.name]  # type: ignore[arg-type]
    finally:
        other.stop()
