"""Test support: a gateway in a thread, tokens, and protocol clients over real sockets."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import redis
import redis.cluster
import uvicorn
import websockets

from ragline.app import create_app
from ragline.gateway.embedded import free_port
from ragline.gateway.server import DrainingServer
from ragline.gateway.settings import Settings
from ragline.gateway.wsprotocol import websocket_options
from ragline.streaming import keys
from ragline.streaming.connections import AnyRedis, is_cluster_url, open_client, parse_cluster_url

SECRET = "test-secret-" + "x" * 64  # long enough for HS512 too
TRANSPORT_WS = "graphql-transport-ws"
LEGACY_WS = "graphql-ws"
EVENTS_QUERY = "subscription($types: [String!]) { events(types: $types) { id type tenantId eventId occurredAt payload } }"
ORDERS_QUERY = "subscription($orderId: String) { orderEvents(orderId: $orderId) { id type orderId status occurredAt payload } }"
TIMEOUT = 10.0
STARTUP_TIMEOUT = 60.0  # for a wait that includes a process starting (imports and all) on a busy machine
TESTS = Path(__file__).resolve().parent


def sync_redis(url: str) -> redis.Redis:
    """A producer's client for `url`: one server's, or a cluster's (redis+cluster://), which
    has the same commands (typed as one server's for the tests' convenience)."""
    if not is_cluster_url(url):
        return redis.Redis.from_url(url)
    nodes, options = parse_cluster_url(url)
    startup = [redis.cluster.ClusterNode(host, port) for host, port in nodes]  # type: ignore[no-untyped-call]
    return redis.cluster.RedisCluster(startup_nodes=startup, **options)  # type: ignore[return-value]


def async_redis(url: str) -> AnyRedis:
    """An asyncio client for `url`, of the kind the gateway makes."""
    return open_client(url)


def new_tenant() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def make_token(
    tenant: str,
    user: str = "u1",
    *,
    roles: list[str] | None = None,
    ttl: float = 3600,
    secret: str = SECRET,
    algorithm: str = "HS256",
    **extra: Any,
) -> str:
    claims: dict[str, Any] = {"tenant_id": tenant, "user_id": user, "exp": int(time.time() + ttl)}
    if roles:
        claims["roles"] = roles
    claims.update(extra)
    return issued(jwt.encode(claims, secret, algorithm=algorithm))


ISSUED_TOKENS: set[str] = set()  # every token the tests made: none may ever be logged
PROCESS_LOGS: list[Path] = []  # the logs of every GatewayProcess: checked for tokens too


def issued(token: str) -> str:
    """Remember `token` for the session's check that no log line contains it."""
    ISSUED_TOKENS.add(token)
    return token


class GatewayServer:
    """The real app under uvicorn on a free port, in a thread with its own event loop."""

    def __init__(self, settings: Settings) -> None:
        self.port = free_port()
        self.settings = settings.with_overrides(port=self.port)
        self.app = create_app(self.settings)
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_config=None, **websocket_options(),
            ws_max_size=self.settings.max_frame_bytes,  # as `ragline serve` sets it
            loop="asyncio",  # uvloop cannot close cleanly in a non-main thread; the CLI tests run it
        )
        self.server = DrainingServer(config, self.app.state.runtime)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/graphql"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/graphql"

    @property
    def hub(self) -> Any:
        return self.app.state.runtime.hub

    def start(self) -> GatewayServer:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("gateway did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def publish(client: redis.Redis, tenant: str, event_type: str, payload: dict[str, Any] | None = None, **fields: str) -> str:
    """XADD a valid event the way a producer does; returns the entry id."""
    entry = {"event_type": event_type, "tenant_id": tenant, "payload": json.dumps(payload or {}), **fields}
    return client.xadd(keys.events_key(tenant), entry).decode()


def xadd_raw(client: redis.Redis, tenant: str, fields: dict[str, str]) -> str:
    return client.xadd(keys.events_key(tenant), fields).decode()


@dataclass
class Frame:
    raw: dict[str, Any]

    @property
    def type(self) -> str:
        return str(self.raw.get("type"))


class ProtocolClient:
    """A graphql-transport-ws or legacy graphql-ws client speaking raw frames."""

    def __init__(self, ws: Any, protocol: str) -> None:
        self.ws = ws
        self.protocol = protocol

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(message))

    async def recv(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The next message that is not a keep-alive; pings are answered, as clients must."""
        while True:
            message = json.loads(await _recv(self.ws, timeout))
            if message.get("type") == "ping" and self.protocol == TRANSPORT_WS:
                await self.send({"type": "pong"})
            elif message.get("type") not in {"ka", "pong"}:
                return dict(message)

    async def init(self, payload: dict[str, Any] | None) -> dict[str, Any]:
        message: dict[str, Any] = {"type": "connection_init"}
        if payload is not None:
            message["payload"] = payload
        await self.send(message)
        return await self.recv()

    async def subscribe(self, op_id: str, query: str, variables: dict[str, Any] | None = None) -> None:
        kind = "subscribe" if self.protocol == TRANSPORT_WS else "start"
        await self.send({"id": op_id, "type": kind, "payload": {"query": query, "variables": variables or {}}})

    async def complete(self, op_id: str) -> None:
        await self.send({"id": op_id, "type": "complete" if self.protocol == TRANSPORT_WS else "stop"})

    async def next_data(self, op_id: str, field: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        message = await self.recv(timeout)
        expected = "next" if self.protocol == TRANSPORT_WS else "data"
        assert message.get("type") == expected and message.get("id") == op_id, message
        assert "errors" not in message["payload"], message
        return dict(message["payload"]["data"][field])

    async def collect(self, op_id: str, field: str, count: int, timeout: float = TIMEOUT) -> list[dict[str, Any]]:
        return [await self.next_data(op_id, field, timeout) for _ in range(count)]

    async def collect_by_id(self, counts: dict[str, int], timeout: float = TIMEOUT) -> dict[str, list[dict[str, Any]]]:
        """Data of interleaved operations, by operation id, until each has its count."""
        received: dict[str, list[dict[str, Any]]] = {op_id: [] for op_id in counts}
        while any(len(received[op_id]) < n for op_id, n in counts.items()):
            message = await self.recv(timeout)
            assert message.get("type") in {"next", "data"} and message.get("id") in counts, message
            received[message["id"]].append(next(iter(message["payload"]["data"].values())))
        return received

    async def expect_silence(self, seconds: float = 0.5) -> None:
        try:
            message = await _recv(self.ws, seconds)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected message {message}")


@asynccontextmanager
async def connect(url: str, protocol: str = TRANSPORT_WS, *, token: str | None = None, **kwargs: Any) -> Any:
    """An initialised client; `token` is sent in connection_init as a bearer."""
    async with websockets.connect(url, subprotocols=[protocol], compression=None, **kwargs) as ws:
        client = ProtocolClient(ws, protocol)
        if token is not None:
            ack = await client.init({"authorization": f"Bearer {token}"})
            assert ack["type"] == "connection_ack", ack
        yield client


async def wait_until(
    predicate: Any, timeout: float = TIMEOUT, interval: float = 0.02, failure: Callable[[], str] | None = None
) -> None:
    """Poll `predicate` until it holds; AssertionError (with `failure()`, if given) when it never does."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time" if failure is None else failure())
        await asyncio.sleep(interval)


def groups(client: redis.Redis, tenant: str) -> list[dict[str, Any]]:
    try:
        infos = client.xinfo_groups(keys.events_key(tenant))
    except redis.ResponseError:
        return []
    return [{k: (v.decode() if isinstance(v, bytes) else v) for k, v in info.items()} for info in infos]


async def _recv(ws: Any, timeout: float) -> Any:
    """`ws.recv()` within `timeout` (TimeoutError). Not `asyncio.wait_for`: on Python 3.11 it
    can swallow a cancellation that lands as the message arrives, and a test then waits
    forever on a task it cancelled (seen with a Follower stopped while events flowed)."""
    async with asyncio.timeout(timeout):
        return await ws.recv()


async def close_of(client: ProtocolClient, timeout: float = TIMEOUT) -> tuple[int, str]:
    """Wait for the server to close the socket; its (code, reason)."""
    try:
        while True:
            await _recv(client.ws, timeout)
    except websockets.ConnectionClosed as closed:
        assert closed.rcvd is not None, "the server closed without a close frame"
        return closed.rcvd.code, closed.rcvd.reason
    raise AssertionError("unreachable")


def unsigned_token(claims: dict[str, Any]) -> str:
    """An `alg: none` token, which must never be accepted."""
    import base64

    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return issued(f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}.")


STATS_QUERY = "{ stats { connections subscriptions eventsDelivered pending deadLettered redisAvailable tenants { tenantId connections subscriptions eventsDelivered pending deadLettered } } }"


async def error_code(client: ProtocolClient, op_id: str, timeout: float = TIMEOUT) -> str:
    """The code of the error that ended `op_id`: an `error` message before the
    stream started, or a `next` carrying errors (then `complete`) during it."""
    message = await client.recv(timeout)
    assert message.get("id") == op_id, message
    if message["type"] == "error":
        errors = message["payload"] if isinstance(message["payload"], list) else [message["payload"]]
    else:
        assert message["type"] in {"next", "data"} and message["payload"].get("errors"), message
        errors = message["payload"]["errors"]
        assert (await client.recv(timeout)) == {"id": op_id, "type": "complete"}
    return str(errors[0]["extensions"]["code"])


def ready(port: int, process: Any, timeout: float = STARTUP_TIMEOUT) -> bool:
    """Whether the gateway `process` serves on `port` (GET /readyz is 200) before it ends
    or `timeout` passes."""
    import httpx

    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return False


class GatewayProcess:
    """`ragline serve` as a subprocess, for tests that kill or signal it."""

    def __init__(self, env: dict[str, str], log_path: Any, *args: str, fault: str | None = None) -> None:
        import os

        self.args = args
        self.fault = fault  # a call into tests/faults.py, made in the process before it serves
        self.port = free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RAGLINE_")}
        self.env.update(env, RAGLINE_PORT=str(self.port))
        self.log_path = log_path
        PROCESS_LOGS.append(Path(log_path))
        self.process: Any = None

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/graphql"

    def start(self) -> GatewayProcess:
        import os
        import subprocess
        import sys

        code = "from ragline.gateway.cli import main; raise SystemExit(main())"
        env = self.env
        if self.fault is not None:
            code = f"import faults; faults.{self.fault}; {code}"
            env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))}
        with open(self.log_path, "a") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-c", code, "serve", *self.args], env=env, stdout=out, stderr=subprocess.STDOUT,
            )
        if not ready(self.port, self.process):
            self.kill()  # a process that did not come up is not left behind
            raise RuntimeError(Path(self.log_path).read_text())
        return self

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()
        relay_errors(self.log_path)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)
        relay_errors(self.log_path)


_ERROR_LINE = re.compile(r"^\S+ \S+ (?:ERROR|CRITICAL) (\S+): (.*)$")  # the plain log format's
_RELAYED: dict[Path, int] = {}  # how far each process log was read


def relay_errors(log_path: Any) -> None:
    """Log again here each ERROR line that a gateway process wrote since the last look, so that
    the session's check (tests/session_logs.py) sees it as it sees the in-process gateways'."""
    path = Path(log_path)
    if not path.exists():
        return
    with open(path, encoding="utf-8", errors="replace") as log:
        log.seek(_RELAYED.get(path, 0))
        text = log.read()
        _RELAYED[path] = log.tell()
    for line in text.splitlines():
        if match := _ERROR_LINE.match(line):
            logging.getLogger(f"process.{match[1]}").error("%s", match[2])


async def metric(port: int, name: str, **labels: str) -> float:
    """One sample of the gateway's `GET /metrics`, parsed as Prometheus parses it
    (AssertionError when the sample is not there)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    async with httpx.AsyncClient() as http:
        response = await http.get(f"http://127.0.0.1:{port}/metrics")
    assert response.status_code == 200, response.text
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    raise AssertionError(f"no sample {name}{labels} in /metrics")
