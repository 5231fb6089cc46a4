"""Names the harness shares with the gateway contract: keys, groups, messages, tokens.

Kept in one module so the reference servers, the load clients and the
publisher cannot drift apart from each other or from CONTRACT.md.
"""

from __future__ import annotations

import enum
import time
from typing import Any

import jwt

SUBPROTOCOL = "graphql-transport-ws"
GRAPHQL_PATH = "/graphql"
READY_PATH = "/readyz"
JWT_ALGORITHM = "HS256"

# Every subscriber of a tenant sends the very same document: that is what lets
# a gateway share one execution per tenant, so the benchmark must not vary it.
EVENTS_QUERY = "subscription { events { id type tenantId occurredAt payload } }"
OPERATION_ID = "1"
# The storm scenario's clients: a durable cursor each (the name is scoped per user).
STORM_DURABLE = "storm"
STORM_QUERY = f'subscription {{ events(durable: "{STORM_DURABLE}") {{ id type }} }}'
# The filters scenario's document: with `where` in the variables (filtered run) and
# without (unfiltered run), so both runs render the same selection.
FILTER_QUERY = "subscription($where: EventFilter) { events(where: $where) { id type payload } }"
# The payload field the filters scenario's events carry and its subscribers filter on.
STATION_FIELD = "station"

# The harness names its own Redis connections with this prefix so that
# CLIENT LIST can tell them apart from the server's connections.
BENCH_CLIENT_PREFIX = "bench-"

# WebSocket close code for a rejected connection_init (graphql-transport-ws).
CLOSE_FORBIDDEN = 4403


class MessageType(str, enum.Enum):
    """graphql-transport-ws message types the harness sends or expects."""

    CONNECTION_INIT = "connection_init"
    CONNECTION_ACK = "connection_ack"
    SUBSCRIBE = "subscribe"
    NEXT = "next"
    ERROR = "error"
    COMPLETE = "complete"
    PING = "ping"
    PONG = "pong"


def stream_key(tenant: str) -> str:
    """The tenant's event stream (braces literal: one Redis Cluster slot per tenant)."""
    return f"ragline:{{{tenant}}}:events"


def events_group_prefix(tenant: str) -> str:
    """Prefix of every `events` consumer group on a tenant's stream."""
    return f"ragline-ws-{tenant}:"


def tenant_name(index: int) -> str:
    """Tenant ids used by the benchmark (valid per the contract's id pattern)."""
    return f"bench-t{index:03d}"


def make_token(secret: str, tenant: str, user: str, ttl_s: float = 6 * 3600) -> str:
    """Mint the HS256 JWT a client presents in connection_init."""
    claims = {"tenant_id": tenant, "user_id": user, "exp": int(time.time() + ttl_s)}
    return jwt.encode(claims, secret, algorithm=JWT_ALGORITHM)


def verify_token(secret: str, token: str) -> dict[str, Any]:
    """Decode and check a token; raises jwt.PyJWTError when it is not acceptable."""
    return jwt.decode(
        token,
        secret,
        algorithms=[JWT_ALGORITHM],
        options={"require": ["exp", "tenant_id", "user_id"]},
    )


def token_from_init(payload: object) -> str | None:
    """Extract the bearer token from a connection_init payload (any key case)."""
    if not isinstance(payload, dict):
        return None
    for key, value in payload.items():
        if str(key).lower() == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            return token if scheme.lower() == "bearer" and token else None
    bare = payload.get("token")
    return bare if isinstance(bare, str) else None


def init_message(token: str) -> dict[str, Any]:
    """The connection_init a client sends."""
    return {
        "type": MessageType.CONNECTION_INIT.value,
        "payload": {"authorization": f"Bearer {token}"},
    }


def subscribe_message(
    query: str = EVENTS_QUERY, variables: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The subscribe message every benchmark client sends (the storm's sends STORM_QUERY,
    the filters scenario's FILTER_QUERY, with `where` in the variables when filtered)."""
    payload: dict[str, Any] = {"query": query}
    if variables is not None:
        payload["variables"] = variables
    return {"id": OPERATION_ID, "type": MessageType.SUBSCRIBE.value, "payload": payload}


def station_name(index: int) -> str:
    """The filters scenario's station k: its events carry `payload.station = "s<k>"`."""
    return f"s{index}"


def station_filter(station: str) -> dict[str, Any]:
    """The `where` (EventFilter) a filtered subscriber of `station` sends."""
    return {"path": STATION_FIELD, "eq": station}


def complete_message() -> dict[str, Any]:
    """The client's `complete`: it ends the operation, leaving the socket open."""
    return {"id": OPERATION_ID, "type": MessageType.COMPLETE.value}


def entry_millis(entry_id: str) -> int:
    """The publish timestamp (ms) carried in a stream entry id."""
    return int(entry_id.partition("-")[0])
