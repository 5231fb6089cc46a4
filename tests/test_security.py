"""Security: browser origins, forged and foreign tokens, RS256/ES256 keys and a JWKS URL,
refusals at start-up, internal errors never shown to clients, tokens never logged."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

import httpx
import jwt
import pytest
import redis
import websockets
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from helpers import (
    EVENTS_QUERY,
    LEGACY_WS,
    STATS_QUERY,
    TRANSPORT_WS,
    GatewayServer,
    ProtocolClient,
    close_of,
    connect,
    groups,
    issued,
    make_token,
    publish,
    unsigned_token,
    wait_until,
)
from ragline.gateway.settings import SettingsError, load_settings

pytestmark = pytest.mark.anyio
AUDIENCE = "ragline"
ISSUER = "https://id.example"


# -- keys -------------------------------------------------------------------------------


def _pem(public_key: Any) -> bytes:
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def signed(key: Any, algorithm: str, tenant: str, headers: dict[str, Any] | None = None, **claims: Any) -> str:
    """A token with valid `aud`, `iss` and `exp` unless `claims` say otherwise (None drops one)."""
    body: dict[str, Any] = {"tenant_id": tenant, "user_id": "u1", "aud": AUDIENCE, "iss": ISSUER, "exp": int(time.time()) + 600}
    body.update(claims)
    return issued(jwt.encode({k: v for k, v in body.items() if v is not None}, key, algorithm=algorithm, headers=headers))


def hs256_with_key_bytes(key: bytes, claims: dict[str, Any]) -> str:
    """HS256 signed with `key` as the HMAC secret: the algorithm-confusion forgery
    (PyJWT refuses to make one, so it is made by hand)."""
    def part(data: dict[str, Any]) -> bytes:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=")

    signing_input = part({"alg": "HS256", "typ": "JWT"}) + b"." + part(claims)
    signature = base64.urlsafe_b64encode(hmac.new(key, signing_input, hashlib.sha256).digest()).rstrip(b"=")
    return issued((signing_input + b"." + signature).decode())


@pytest.fixture(scope="module")
def rsa_gateway(base_settings: Any, rsa_key: rsa.RSAPrivateKey, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    """HS256 and RS256 allowed, RS256 checked with a public key file; `aud` and `iss` required."""
    key_file = tmp_path_factory.mktemp("keys") / "rsa.pem"
    key_file.write_bytes(_pem(rsa_key.public_key()))
    server = GatewayServer(
        base_settings.with_overrides(
            jwt_algorithms=("HS256", "RS256"), jwt_public_key_file=key_file, jwt_audience=AUDIENCE, jwt_issuer=ISSUER
        )
    ).start()
    yield server
    server.stop()


# -- origins ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser_gateway(base_settings: Any) -> Iterator[GatewayServer]:
    server = GatewayServer(base_settings.with_overrides(allowed_origins=("https://app.example",))).start()
    yield server
    server.stop()


@pytest.mark.parametrize("path", ["/graphql", "/ws"])
async def test_a_foreign_origin_is_refused_at_the_handshake_before_any_message(
    browser_gateway: GatewayServer, path: str
) -> None:
    url = f"ws://127.0.0.1:{browser_gateway.port}{path}"
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(url, subprotocols=[TRANSPORT_WS], origin="https://evil.example")  # type: ignore[arg-type]
    assert refused.value.response.status_code == 403


@pytest.mark.parametrize(
    "origin", [None, "https://app.example", "same"], ids=["no origin (not a browser)", "allowed", "same origin"]
)
async def test_allowed_origins_and_non_browser_clients_get_in(browser_gateway: GatewayServer, tenant: str, origin: str | None) -> None:
    if origin == "same":
        origin = f"http://127.0.0.1:{browser_gateway.port}"
    async with connect(browser_gateway.ws_url, token=make_token(tenant), origin=origin) as client:
        await client.subscribe("1", STATS_QUERY)
        assert (await client.recv())["type"] == "next"


# -- forged tokens ----------------------------------------------------------------------


def forged_tokens(rsa_key: rsa.RSAPrivateKey, tenant: str) -> dict[str, str]:
    other_rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = _pem(rsa_key.public_key())
    valid: dict[str, Any] = {"tenant_id": tenant, "user_id": "u1", "aud": AUDIENCE, "iss": ISSUER, "exp": int(time.time()) + 600}
    return {
        "bad HS256 signature": signed("another-secret-" + "y" * 40, "HS256", tenant),
        "bad RS256 signature": signed(other_rsa, "RS256", tenant),
        "alg none": unsigned_token(valid),
        "HS256 signed with the RSA public key": hs256_with_key_bytes(public_pem, valid),
        "wrong aud": signed(rsa_key, "RS256", tenant, aud="someone-else"),
        "wrong iss": signed(rsa_key, "RS256", tenant, iss="https://evil.example"),
        "no aud": signed(rsa_key, "RS256", tenant, aud=None),
        "missing exp": signed(rsa_key, "RS256", tenant, exp=None),
        "expired": signed(rsa_key, "RS256", tenant, exp=int(time.time()) - 60),
        "future nbf": signed(rsa_key, "RS256", tenant, nbf=int(time.time()) + 600),
        "tenant with a }": signed(rsa_key, "RS256", tenant + "}x"),
        "tenant with a :": signed(rsa_key, "RS256", tenant + ":x"),
        "algorithm not allowed": signed("z" * 64, "HS512", tenant),
    }


class Monitor:
    """Redis's MONITOR in a thread: every command any client sends, until stopped."""

    def __init__(self, client: redis.Redis) -> None:
        self.commands: list[str] = []
        self._client = client
        self._marker = f"stop-{uuid.uuid4().hex}"
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._ready = threading.Event()

    def _run(self) -> None:
        with self._client.monitor() as monitor:
            self._ready.set()
            for command in monitor.listen():
                self.commands.append(str(command["command"]))
                if self._marker in command["command"]:
                    return

    def __enter__(self) -> Self:
        self._thread.start()
        self._ready.wait(5)
        time.sleep(0.1)
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.echo(self._marker)
        self._thread.join(5)


def _monitorable(client: redis.Redis) -> bool:
    return isinstance(client, redis.Redis) and not isinstance(client, redis.cluster.RedisCluster)


async def test_forged_tokens_are_refused_and_none_reaches_redis(
    rsa_gateway: GatewayServer, rsa_key: rsa.RSAPrivateKey, redis_client: redis.Redis, redis_url: str
) -> None:
    tenant = f"forged-{uuid.uuid4().hex[:8]}"
    tokens = forged_tokens(rsa_key, tenant)
    failures_before = dict(rsa_gateway.app.state.runtime.authenticator.failures)
    if not _monitorable(redis_client):
        pytest.skip("MONITOR needs a single Redis server")
    with Monitor(redis.Redis.from_url(redis_url)) as monitor:
        for case, token in tokens.items():
            ws = await websockets.connect(rsa_gateway.ws_url, subprotocols=[TRANSPORT_WS])
            client = ProtocolClient(ws, TRANSPORT_WS)
            await client.send({"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}})
            assert await close_of(client) == (4403, "Forbidden"), case
            async with httpx.AsyncClient() as http:
                response = await http.post(rsa_gateway.http_url, json={"query": STATS_QUERY}, headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == 401, case
        # the control: a genuine token of the same tenant does reach Redis, and MONITOR sees it
        marker = f"control-{uuid.uuid4().hex}"
        redis_client.echo(marker)
        async with connect(rsa_gateway.ws_url, token=signed(rsa_key, "RS256", tenant)) as client:
            await client.subscribe("1", EVENTS_QUERY)
            await wait_until(lambda: rsa_gateway.hub.counters.tenant(tenant).subscriptions == 1)
    control = next(i for i, command in enumerate(monitor.commands) if marker in command)
    assert not [command for command in monitor.commands[:control] if tenant in command]  # no forged one got there
    assert [command for command in monitor.commands[control:] if tenant in command]  # the genuine one did
    refused = {k: v - failures_before.get(k, 0) for k, v in rsa_gateway.app.state.runtime.authenticator.failures.items()}
    assert refused == {
        "signature": 6,  # bad HS256 and RS256 signatures, the HMAC-with-public-key forgery, each twice
        "algorithm": 4,  # alg none, HS512
        "claims": 12,  # wrong aud, wrong iss, no aud, missing exp, tenant with } and with :
        "expired": 2,
        "not_yet_valid": 2,
    } | {k: v for k, v in refused.items() if v == 0}


async def test_rs256_from_a_public_key_file_is_accepted(rsa_gateway: GatewayServer, rsa_key: rsa.RSAPrivateKey, tenant: str) -> None:
    async with connect(rsa_gateway.ws_url, token=signed(rsa_key, "RS256", tenant)) as client:
        await client.subscribe("1", STATS_QUERY)
        assert (await client.recv())["payload"]["data"]["stats"]["tenants"][0]["tenantId"] == tenant


async def test_es256_from_a_public_key_file(
    make_gateway: Callable[..., GatewayServer], ec_key: ec.EllipticCurvePrivateKey, tmp_path: Path, tenant: str
) -> None:
    key_file = tmp_path / "ec.pem"
    key_file.write_bytes(_pem(ec_key.public_key()))
    gateway = make_gateway(jwt_algorithms=("ES256",), jwt_public_key_file=key_file)
    async with connect(gateway.ws_url, token=signed(ec_key, "ES256", tenant, aud=None, iss=None)):
        pass
    stranger = ec.generate_private_key(ec.SECP256R1())
    ws = await websockets.connect(gateway.ws_url, subprotocols=[TRANSPORT_WS])
    client = ProtocolClient(ws, TRANSPORT_WS)
    await client.send({"type": "connection_init", "payload": {"token": signed(stranger, "ES256", tenant, aud=None, iss=None)}})
    assert await close_of(client) == (4403, "Forbidden")


# -- JWKS -------------------------------------------------------------------------------


class Jwks:
    """A JWKS endpoint on a free port, counting its requests; `delay` slows each answer."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.requests = 0
        self.delay = 0.0
        jwks = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                jwks.requests += 1
                time.sleep(jwks.delay)
                body = json.dumps({"keys": jwks.keys}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/.well-known/jwks.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def publish(self, key: rsa.RSAPrivateKey, kid: str) -> None:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
        self.keys.append({**jwk, "kid": kid, "alg": "RS256", "use": "sig"})

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def jwks() -> Iterator[Jwks]:
    endpoint = Jwks()
    yield endpoint
    endpoint.stop()


async def _accepted(gateway: GatewayServer, token: str) -> bool:
    ws = await websockets.connect(gateway.ws_url, subprotocols=[TRANSPORT_WS])
    try:
        return await ProtocolClient(ws, TRANSPORT_WS).init({"token": token}) == {"type": "connection_ack"}
    except websockets.ConnectionClosed as closed:
        assert closed.rcvd is not None and (closed.rcvd.code, closed.rcvd.reason) == (4403, "Forbidden")
        return False
    finally:
        await ws.close()


async def test_jwks_keys_are_fetched_cached_and_refetched_at_most_once_per_interval_for_unknown_kids(
    make_gateway: Callable[..., GatewayServer], jwks: Jwks, rsa_key: rsa.RSAPrivateKey, tenant: str
) -> None:
    jwks.publish(rsa_key, "k1")
    gateway = make_gateway(jwt_algorithms=("RS256",), jwt_jwks_url=jwks.url, jwt_jwks_min_refresh=1.0)
    assert await _accepted(gateway, signed(rsa_key, "RS256", tenant, headers={"kid": "k1"}, aud=None, iss=None))
    assert await _accepted(gateway, signed(rsa_key, "RS256", tenant, headers={"kid": "k1"}, aud=None, iss=None))
    assert jwks.requests == 1  # cached
    for n in range(20):  # made-up kids: one refetch per interval at most, not one per token
        forged = signed(rsa_key, "RS256", tenant, headers={"kid": f"invented-{n}"}, aud=None, iss=None)
        assert not await _accepted(gateway, forged)
    assert jwks.requests <= 2
    rotated = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks.publish(rotated, "k2")
    await asyncio.sleep(1.0)  # the interval passes: the next unknown kid may refetch
    assert await _accepted(gateway, signed(rotated, "RS256", tenant, headers={"kid": "k2"}, aud=None, iss=None))
    assert gateway.app.state.runtime.authenticator.failures["unknown_key"] == 20


async def test_a_slow_jwks_fetch_does_not_block_the_event_loop(
    make_gateway: Callable[..., GatewayServer], jwks: Jwks, rsa_key: rsa.RSAPrivateKey, tenant: str
) -> None:
    jwks.publish(rsa_key, "k1")
    jwks.delay = 1.5
    gateway = make_gateway(jwt_algorithms=("RS256", "HS256"), jwt_jwks_url=jwks.url)
    token = signed(rsa_key, "RS256", tenant, headers={"kid": "k1"}, aud=None, iss=None)
    ws = await websockets.connect(gateway.ws_url, subprotocols=[TRANSPORT_WS])
    waiting = ProtocolClient(ws, TRANSPORT_WS)
    await waiting.send({"type": "connection_init", "payload": {"token": token}})  # its fetch takes 1.5 s
    await asyncio.sleep(0.2)
    started = time.monotonic()
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"http://127.0.0.1:{gateway.port}/healthz")).status_code == 200
        assert (await http.post(gateway.http_url, json={"query": STATS_QUERY},
                                headers={"Authorization": f"Bearer {make_token(tenant)}"})).status_code == 200
    assert time.monotonic() - started < 0.5  # served while the fetch was under way
    assert await waiting.recv(5) == {"type": "connection_ack"}
    await ws.close()


# -- start-up refusals ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"RAGLINE_JWT_SECRET": "short"}, "RAGLINE_JWT_SECRET must be at least 32 bytes"),
        ({"RAGLINE_JWT_ALGORITHMS": "HS256,none"}, "RAGLINE_JWT_ALGORITHMS must not allow 'none'"),
        ({"RAGLINE_JWT_ALGORITHMS": "RS256"}, "RAGLINE_JWT_ALGORITHMS allows RS256: set RAGLINE_JWT_PUBLIC_KEY_FILE or RAGLINE_JWT_JWKS_URL"),
        ({"RAGLINE_JWT_ALGORITHMS": "RS256", "RAGLINE_JWT_PUBLIC_KEY_FILE": "/k.pem", "RAGLINE_JWT_JWKS_URL": "https://x/jwks"},
         "set RAGLINE_JWT_PUBLIC_KEY_FILE or RAGLINE_JWT_JWKS_URL, not both"),
        ({"RAGLINE_MAX_FRAME_BYTES": "10"}, "RAGLINE_MAX_FRAME_BYTES must be at least 1024"),
        ({"RAGLINE_LOG_FORMAT": "xml"}, "RAGLINE_LOG_FORMAT must be 'plain' or 'json'"),
    ],
)
def test_unsafe_settings_are_refused_at_start_up(environ: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings(environ)
    assert str(refused.value) == message


def test_a_public_key_file_that_is_not_a_pem_public_key_is_refused_at_start_up(base_settings: Any, tmp_path: Path) -> None:
    from ragline.app import create_app

    bad = tmp_path / "key.pem"
    bad.write_text("not a key")
    with pytest.raises(SettingsError, match="RAGLINE_JWT_PUBLIC_KEY_FILE is not a readable PEM public key"):
        create_app(base_settings.with_overrides(jwt_algorithms=("RS256",), jwt_public_key_file=bad))


# -- internal errors --------------------------------------------------------------------

SECRET_DETAIL = "connection to 10.0.0.7 refused at /srv/ragline/secret.py"


@pytest.mark.log_errors(r"connection to 10\.0\.0\.7 refused")  # the internal error, logged whole for operators
@pytest.mark.parametrize(
    ("protocol", "query"),
    [(TRANSPORT_WS, EVENTS_QUERY), (TRANSPORT_WS, "subscription { ...R } fragment R on Subscription { events { id } }"),
     (LEGACY_WS, EVENTS_QUERY)],
    ids=["shared fast path", "strawberry path", "legacy"],
)
async def test_an_internal_error_reaches_the_client_masked(
    gateway: GatewayServer, tenant: str, monkeypatch: pytest.MonkeyPatch, protocol: str, query: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(SECRET_DETAIL)

    monkeypatch.setattr("ragline.resolvers.events.open_entries", broken)
    monkeypatch.setattr("ragline.resolvers.shared.open_entries", broken)
    async with connect(gateway.ws_url, protocol, token=make_token(tenant)) as client:
        await client.subscribe("1", query)
        message = await client.recv()
        rest = [] if protocol == LEGACY_WS else await _until_complete(client, message)
    text = json.dumps([message, *rest])
    assert SECRET_DETAIL not in text and "RuntimeError" not in text
    assert "Unexpected error." in text
    assert SECRET_DETAIL in caplog.text  # the operator still sees it


async def _until_complete(client: ProtocolClient, first: dict[str, Any]) -> list[dict[str, Any]]:
    if first["type"] in {"error", "complete"}:
        return []
    return [await client.recv()]


@pytest.mark.log_errors(r"connection to 10\.0\.0\.7 refused")  # the internal error, logged whole for operators
async def test_an_internal_error_in_a_query_is_masked_and_coded_errors_keep_their_words(
    gateway: GatewayServer, tenant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: Any) -> Any:
        raise RuntimeError(SECRET_DETAIL)

    monkeypatch.setattr("ragline.resolvers.root.resolve_stats", broken)
    async with httpx.AsyncClient() as http:
        response = await http.post(gateway.http_url, json={"query": STATS_QUERY}, headers={"Authorization": f"Bearer {make_token(tenant)}"})
    assert response.json()["errors"][0]["message"] == "Unexpected error."
    assert SECRET_DETAIL not in response.text
    async with connect(gateway.ws_url, token=make_token(tenant)) as client:
        await client.subscribe("1", "subscription { events(after: \"nope\") { id } }")
        message = await client.recv()
    error = message["payload"][0]
    assert (error["message"], error["extensions"]) == ("'after' is not a stream entry id: 'nope'", {"code": "BAD_USER_INPUT"})


# -- logs -------------------------------------------------------------------------------


async def test_tokens_sent_every_way_never_reach_the_log(
    gateway: GatewayServer, redis_client: redis.Redis, tenant: str, session_log: Path
) -> None:
    tokens = [make_token(tenant) for _ in range(4)]
    bad = make_token(tenant, secret="wrong-" + "w" * 40)
    async with httpx.AsyncClient() as http:
        await http.get(gateway.http_url, params={"query": STATS_QUERY, "token": tokens[0]})
        await http.post(gateway.http_url, json={"query": STATS_QUERY}, headers={"Authorization": f"Bearer {bad}"})
    ws = await websockets.connect(f"{gateway.ws_url}?token={tokens[1]}", subprotocols=[LEGACY_WS])
    await ProtocolClient(ws, LEGACY_WS).init({})
    await ws.close()
    async with connect(gateway.ws_url, token=tokens[2]) as client:
        await client.subscribe("1", EVENTS_QUERY)
        await wait_until(lambda: len(groups(redis_client, tenant)) == 1)
        publish(redis_client, tenant, "order_created", {"card": "4111111111111111"})
        await client.next_data("1", "events")
    async with connect(gateway.ws_url, additional_headers={"Authorization": f"Bearer {tokens[3]}"}) as client:
        assert (await client.init({}))["type"] == "connection_ack"
    ws = await websockets.connect(f"ws://127.0.0.1:{gateway.port}/ws?token={bad}")
    await ws.wait_closed()
    for handler in __import__("logging").getLogger().handlers:
        handler.flush()
    log = session_log.read_text(encoding="utf-8")
    assert "[redacted]" in log  # the query-string tokens were in uvicorn's access lines
    assert not [t for t in [*tokens, bad] if t in log]
    assert "4111111111111111" not in log  # nor any payload (a marker no port number can contain)
