"""Property-based fuzzing of /graphql: random and mutated frames at a live connection.

Whatever a client sends, the gateway never crashes and never hangs: it answers
with the close code (and reason) the protocol specifies, or with a protocol
message, and a neighbouring connection keeps receiving its events throughout.
Each example opens a fresh connection (limits are per connection); the sockets
are synchronous clients, so hypothesis drives plain functions.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from gateway.protocol import close_reason
from helpers import (
    EVENTS_QUERY,
    LEGACY_WS,
    TRANSPORT_WS,
    GatewayServer,
    make_token,
    new_tenant,
    publish,
)

EXAMPLES = 120
ANSWER_TIMEOUT = 3.0
SPECIFIED_CLOSES = frozenset({4400, 4401, 4403, 4409, 4429})
Frame = tuple[str, "str | bytes"]  # (kind, what is sent)

# -- strategies -------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
QUERIES = [EVENTS_QUERY, "{ stats { connections } }", "subscription { events { nosuch } }", "subscription {", ""]
TRANSPORT_MESSAGES: list[dict[str, Any]] = [
    {"type": "ping"},
    {"type": "ping", "payload": {"a": 1}},
    {"type": "pong"},
    {"type": "connection_init", "payload": {}},
    {"type": "subscribe", "id": "1", "payload": {"query": EVENTS_QUERY, "variables": {"types": ["x"]}}},
    {"type": "subscribe", "id": "2", "payload": {"query": "{ stats { connections } }"}},
    {"type": "complete", "id": "1"},
]
LEGACY_MESSAGES: list[dict[str, Any]] = [
    {"type": "connection_init", "payload": {}},
    {"type": "start", "id": "1", "payload": {"query": EVENTS_QUERY}},
    {"type": "stop", "id": "1"},
    {"type": "connection_terminate"},
]


@st.composite
def mutated(draw: st.DrawFn, messages: list[dict[str, Any]]) -> dict[str, Any]:
    """A protocol message with one part dropped, replaced or added."""
    message = json.loads(json.dumps(draw(st.sampled_from(messages))))
    target = message
    if "payload" in message and isinstance(message["payload"], dict) and draw(st.booleans()):
        target = message["payload"]
    keys = [*target, "query", "id", "variables", "operationName", "extensions", "payload", "type"]
    key = draw(st.sampled_from(keys))
    action = draw(st.sampled_from(["drop", "replace", "query"]))
    if action == "drop":
        target.pop(key, None)
    elif action == "replace":
        target[key] = draw(json_values)
    else:
        target["query"] = draw(st.sampled_from(QUERIES))
    return message


def frames(messages: list[dict[str, Any]]) -> st.SearchStrategy[Frame]:
    return st.one_of(
        st.binary(max_size=40).map(lambda data: ("binary", data)),
        st.text(max_size=40).filter(_not_json).map(lambda text: ("not json", text)),
        json_values.filter(lambda v: not isinstance(v, dict)).map(lambda v: ("not an object", json.dumps(v))),
        st.dictionaries(st.sampled_from(["id", "payload", "kind"]), json_values, max_size=2).map(
            lambda d: ("no type", json.dumps(d))
        ),
        st.text(min_size=1, max_size=30).filter(lambda t: t not in _KNOWN_TYPES).map(
            lambda t: ("unknown type", json.dumps({"type": t}))
        ),
        st.sampled_from(messages).map(lambda m: ("message", json.dumps(m))),
        mutated(messages).map(lambda m: ("mutated", json.dumps(m))),
    )


_KNOWN_TYPES = frozenset(
    {"connection_init", "ping", "pong", "subscribe", "complete", "start", "stop", "connection_terminate"}
)


def _not_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return True
    return False


def expected_close(kind: str, frame: str | bytes) -> tuple[int, str] | None:
    """The exact close a frame of this kind must get, when the protocol fixes it."""
    if kind == "binary":
        return 4400, "WebSocket message type must be text"
    if kind == "not json":
        return 4400, "WebSocket message must be valid JSON"
    if kind == "not an object":
        return 4400, "Message must be a JSON object"
    if kind == "no type":
        return 4400, "Message must have a string 'type'"
    if kind == "unknown type":
        return 4400, close_reason(f"Unknown message type: {json.loads(frame)['type']}")
    return None


# -- the neighbour ----------------------------------------------------------------------


@dataclass
class Neighbour:
    """A well-behaved graphql-transport-ws client of another tenant, reading in a thread."""

    gateway: GatewayServer
    tenant: str = field(default_factory=new_tenant)
    received: list[str] = field(default_factory=list)
    error: BaseException | None = None

    def start(self) -> Neighbour:
        self._sockets = ExitStack()
        self.ws = self._sockets.enter_context(open_socket(self.gateway, TRANSPORT_WS))
        self.ws.send(json.dumps({"type": "connection_init", "payload": {"token": make_token(self.tenant)}}))
        assert json.loads(self.ws.recv(5))["type"] == "connection_ack"
        self.ws.send(json.dumps({"id": "n", "type": "subscribe", "payload": {"query": EVENTS_QUERY}}))
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        return self

    def _read(self) -> None:
        try:
            for raw in self.ws:
                message = json.loads(raw)
                if message["type"] == "ping":
                    self.ws.send(json.dumps({"type": "pong"}))
                elif message["type"] == "next":
                    self.received.append(message["payload"]["data"]["events"]["id"])
                else:
                    raise AssertionError(f"the neighbour got {message}")
        except ConnectionClosed:
            pass
        except BaseException as error:  # noqa: BLE001 (reported by the test)
            self.error = error

    def stop(self) -> None:
        self._sockets.close()
        self.thread.join(5)


@pytest.fixture
def neighbour(gateway: GatewayServer, redis_client: redis.Redis) -> Iterator[Neighbour]:
    client = Neighbour(gateway).start()
    deadline = time.monotonic() + 10
    while gateway.hub.counters.tenant(client.tenant).subscriptions < 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    yield client
    client.stop()


# -- one fuzzed connection --------------------------------------------------------------


def open_socket(gateway: GatewayServer, protocol: str) -> ClientConnection:
    return ws_connect(gateway.ws_url, subprotocols=[protocol], compression=None, close_timeout=1)  # type: ignore[list-item]


def closed_with(ws: ClientConnection) -> tuple[int, str] | None:
    """The server's close, if it closed (or closes within a moment); None if still open."""
    try:
        while True:
            ws.recv(0.05)
    except TimeoutError:
        return None
    except ConnectionClosed as closed:
        assert closed.rcvd is not None, "the server dropped the connection without a close frame"
        return closed.rcvd.code, closed.rcvd.reason


def still_answers(ws: ClientConnection, protocol: str) -> None:
    """An open connection must still answer: a ping (graphql-transport-ws) or a query (legacy)."""
    if protocol == TRANSPORT_WS:
        ws.send(json.dumps({"type": "ping"}))
        wanted = {"pong"}
    else:
        ws.send(json.dumps({"type": "start", "id": "probe", "payload": {"query": "{ stats { connections } }"}}))
        wanted = {"data", "error"}
    deadline = time.monotonic() + ANSWER_TIMEOUT
    while True:
        message = json.loads(ws.recv(max(0.01, deadline - time.monotonic())))
        if message.get("type") in wanted and (protocol == TRANSPORT_WS or message.get("id") == "probe"):
            return


def fuzz_connection(gateway: GatewayServer, protocol: str, tenant: str, initialise: bool, sent: list[Frame]) -> None:
    with open_socket(gateway, protocol) as ws:
        _fuzz(ws, protocol, tenant, initialise, sent)


def _fuzz(ws: ClientConnection, protocol: str, tenant: str, initialise: bool, sent: list[Frame]) -> None:
    try:
        if initialise:
            ws.send(json.dumps({"type": "connection_init", "payload": {"token": make_token(tenant)}}))
            assert json.loads(ws.recv(ANSWER_TIMEOUT))["type"] == "connection_ack"
        for kind, frame in sent:
            try:
                ws.send(frame)
            except ConnectionClosed:
                break
            close = closed_with(ws)
            if close is not None:
                if protocol == LEGACY_WS and close == (1000, "") and _terminates(kind, frame):
                    return
                assert close[0] in SPECIFIED_CLOSES and close[1], f"{kind} {frame!r} -> {close}"
                expected = expected_close(kind, frame)
                assert expected is None or close == expected, f"{kind} {frame!r} -> {close}, not {expected}"
                return
            assert expected_close(kind, frame) is None, f"{kind} {frame!r} left the connection open"
        if initialise:
            still_answers(ws, protocol)
    except ConnectionClosed as closed:
        # a close after a frame that needs an answer first (e.g. a legacy connection_error)
        assert closed.rcvd is not None and closed.rcvd.code in SPECIFIED_CLOSES | {1000}, closed


def _terminates(kind: str, frame: str | bytes) -> bool:
    """A legacy `connection_terminate` (whatever else it carries): closed 1000, as asked."""
    return kind in {"message", "mutated"} and json.loads(frame).get("type") == "connection_terminate"


def check_healthy(gateway: GatewayServer, neighbour: Neighbour, published: list[str], caplog: Any) -> None:
    assert gateway.thread.is_alive()
    deadline = time.monotonic() + 10
    while neighbour.received != published:
        assert neighbour.error is None, neighbour.error
        assert time.monotonic() < deadline, f"the neighbour got {len(neighbour.received)} of {len(published)}"
        time.sleep(0.02)
    crashes = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith(("uvicorn", "strawberry", "gateway"))]
    assert not crashes, [r.getMessage() for r in crashes]


def run_fuzz(
    gateway: GatewayServer, redis_client: redis.Redis, neighbour: Neighbour, protocol: str,
    messages: list[dict[str, Any]], examples: int,
) -> list[str]:
    """Run the examples, publishing one event for the neighbour in each; the ids published."""
    tenant = new_tenant()
    published: list[str] = []

    @settings(
        max_examples=examples, deadline=None, database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(initialise=st.booleans() | st.just(True), sent=st.lists(frames(messages), min_size=1, max_size=4))
    def example(initialise: bool, sent: list[Frame]) -> None:
        published.append(publish(redis_client, neighbour.tenant, "fuzz"))
        fuzz_connection(gateway, protocol, tenant, initialise, sent)

    example()
    return published


Runner = Callable[..., None]


def test_random_and_mutated_graphql_transport_ws_frames_get_their_specified_answer(
    gateway: GatewayServer, redis_client: redis.Redis, neighbour: Neighbour, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    published = run_fuzz(gateway, redis_client, neighbour, TRANSPORT_WS, TRANSPORT_MESSAGES, EXAMPLES)
    check_healthy(gateway, neighbour, published, caplog)


def test_random_and_mutated_legacy_graphql_ws_frames_get_their_specified_answer(
    gateway: GatewayServer, redis_client: redis.Redis, neighbour: Neighbour, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    published = run_fuzz(gateway, redis_client, neighbour, LEGACY_WS, LEGACY_MESSAGES, EXAMPLES // 2)
    check_healthy(gateway, neighbour, published, caplog)
