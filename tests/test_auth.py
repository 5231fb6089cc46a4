"""Authentication: token sources, rejections on every transport, tenant from the token only."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
import websockets

from helpers import (
    LEGACY_WS,
    SECRET,
    STATS_QUERY,
    TRANSPORT_WS,
    GatewayServer,
    ProtocolClient,
    close_of,
    issued,
    make_token,
    unsigned_token,
)

pytestmark = pytest.mark.anyio


def bad_tokens(tenant: str) -> dict[str, str | None]:
    future = int(time.time()) + 3600
    return {
        "no token": None,
        "garbage": "not-a-jwt",
        "wrong signature": make_token(tenant, secret="another-secret-" + "y" * 64),
        "alg none": unsigned_token({"tenant_id": tenant, "user_id": "u1", "exp": future}),
        "expired": make_token(tenant, ttl=-60),
        "missing exp": _token_without_exp(tenant),
        "missing tenant": make_token(tenant, tenant_id=None),
        "tenant with a brace": make_token("acme}:x"),
        "tenant with a colon": make_token("acme:x"),
        "other algorithm": make_token(tenant, algorithm="HS512"),
    }


def _token_without_exp(tenant: str) -> str:
    import jwt

    return issued(jwt.encode({"tenant_id": tenant, "user_id": "u1"}, SECRET, algorithm="HS256"))


CASES = list(bad_tokens("acme"))


async def _open(gateway: GatewayServer, protocol: str, payload: dict[str, Any] | None, **kwargs: Any) -> Any:
    ws = await websockets.connect(gateway.ws_url, subprotocols=[protocol], compression=None, **kwargs)
    client = ProtocolClient(ws, protocol)
    message: dict[str, Any] = {"type": "connection_init"}
    if payload is not None:
        message["payload"] = payload
    await client.send(message)
    return client


@pytest.mark.parametrize("case", CASES)
async def test_graphql_transport_ws_closes_4403_for_a_bad_token(gateway: GatewayServer, tenant: str, case: str) -> None:
    token = bad_tokens(tenant)[case]
    client = await _open(gateway, TRANSPORT_WS, {"authorization": f"Bearer {token}"} if token else {})
    assert await close_of(client) == (4403, "Forbidden")


@pytest.mark.parametrize("case", CASES)
async def test_legacy_graphql_ws_answers_connection_error_for_a_bad_token(gateway: GatewayServer, tenant: str, case: str) -> None:
    token = bad_tokens(tenant)[case]
    client = await _open(gateway, LEGACY_WS, {"authorization": f"Bearer {token}"} if token else {})
    assert await client.recv() == {"type": "connection_error", "payload": {"message": "Forbidden"}}
    await close_of(client)


@pytest.mark.parametrize("case", CASES)
async def test_http_query_gets_401_for_a_bad_token(gateway: GatewayServer, tenant: str, case: str) -> None:
    token = bad_tokens(tenant)[case]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient() as http:
        response = await http.post(gateway.http_url, json={"query": STATS_QUERY}, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


async def _stats_over_ws(client: ProtocolClient) -> dict[str, Any]:
    await client.subscribe("q", STATS_QUERY)
    message = await client.recv()
    assert message["type"] in {"next", "data"}, message
    return dict(message["payload"]["data"]["stats"])


@pytest.mark.parametrize(
    "payload",
    [
        lambda t: {"authorization": f"Bearer {t}"},
        lambda t: {"Authorization": f"Bearer {t}"},
        lambda t: {"AUTHORIZATION": f"bearer {t}"},
        lambda t: {"token": t},
    ],
    ids=["authorization", "Authorization", "AUTHORIZATION lower bearer", "token"],
)
async def test_connection_init_payload_carries_the_token(gateway: GatewayServer, tenant: str, payload: Any) -> None:
    client = await _open(gateway, TRANSPORT_WS, payload(make_token(tenant)))
    assert await client.recv() == {"type": "connection_ack"}
    assert (await _stats_over_ws(client))["tenants"][0]["tenantId"] == tenant
    await client.ws.close()


async def test_the_upgrade_header_and_query_parameter_carry_the_token(gateway: GatewayServer, tenant: str) -> None:
    header = await _open(gateway, TRANSPORT_WS, None, additional_headers={"Authorization": f"Bearer {make_token(tenant)}"})
    assert await header.recv() == {"type": "connection_ack"}
    await header.ws.close()
    ws = await websockets.connect(f"{gateway.ws_url}?token={make_token(tenant)}", subprotocols=[TRANSPORT_WS])
    query = ProtocolClient(ws, TRANSPORT_WS)
    assert await query.init({}) == {"type": "connection_ack"}
    assert (await _stats_over_ws(query))["tenants"][0]["tenantId"] == tenant
    await ws.close()
    ws = await websockets.connect(f"{gateway.ws_url}?token={make_token(tenant)}", subprotocols=[LEGACY_WS])
    assert await ProtocolClient(ws, LEGACY_WS).init({}) == {"type": "connection_ack"}
    await ws.close()


async def test_connection_init_token_wins_over_the_header(gateway: GatewayServer, tenant: str) -> None:
    client = await _open(
        gateway,
        TRANSPORT_WS,
        {"authorization": f"Bearer {make_token(tenant)}"},
        additional_headers={"Authorization": f"Bearer {make_token('someone-else')}"},
    )
    assert await client.recv() == {"type": "connection_ack"}
    assert (await _stats_over_ws(client))["tenants"][0]["tenantId"] == tenant
    await client.ws.close()


async def test_http_accepts_the_bearer_header_and_the_token_query_parameter(gateway: GatewayServer, tenant: str) -> None:
    token = make_token(tenant)
    async with httpx.AsyncClient() as http:
        posted = await http.post(gateway.http_url, json={"query": STATS_QUERY}, headers={"Authorization": f"Bearer {token}"})
        got = await http.get(gateway.http_url, params={"query": STATS_QUERY, "token": token})
    assert posted.status_code == got.status_code == 200
    assert posted.json()["data"]["stats"]["tenants"][0]["tenantId"] == tenant
    assert got.json()["data"]["stats"]["tenants"][0]["tenantId"] == tenant


async def test_graphiql_page_needs_no_token(gateway: GatewayServer) -> None:
    async with httpx.AsyncClient() as http:
        page = await http.get(gateway.http_url, headers={"Accept": "text/html"})
    assert page.status_code == 200
    assert "graphiql" in page.text.lower()


async def test_subscribe_before_connection_init_closes_4401(gateway: GatewayServer) -> None:
    ws = await websockets.connect(gateway.ws_url, subprotocols=[TRANSPORT_WS])
    client = ProtocolClient(ws, TRANSPORT_WS)
    await client.subscribe("1", "subscription { events { id } }")
    assert await close_of(client) == (4401, "Unauthorized")


async def test_a_token_whose_exp_passes_closes_the_socket_with_4403(gateway: GatewayServer, tenant: str) -> None:
    client = await _open(gateway, TRANSPORT_WS, {"token": make_token(tenant, ttl=1.5)})
    assert await client.recv() == {"type": "connection_ack"}
    await client.subscribe("1", "subscription { events { id } }")
    started = time.monotonic()
    assert await close_of(client) == (4403, "Token expired")
    assert time.monotonic() - started < 4
