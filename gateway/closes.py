"""Every way the gateway ends a connection, in one catalogue: code, reason, what a client does next.

A WebSocket on `/graphql` (both subprotocols) closes with graphql-ws's codes; the seed's
`/ws` and `/ws/orders` keep the codes their clients know. An HTTP stream (SSE, multipart,
`/stream`) cannot close with a code: it ends with the matching error, then `complete`.
`docs/errors.md` lists this catalogue; tests/test_docs.py holds the page to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, StrEnum

MAX_REASON_BYTES = 123      # what a close frame's reason can carry
FINAL_WRITE_TIMEOUT = 1.0   # seconds for the last words to a client that may have stopped reading


class CloseCode(IntEnum):
    """The WebSocket close codes the gateway sends."""

    NORMAL = 1000
    GOING_AWAY = 1001
    POLICY_VIOLATION = 1008     # /ws: missing, invalid or expired token
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013
    BAD_REQUEST = 4400
    UNAUTHORIZED = 4401
    FORBIDDEN = 4403
    SUBPROTOCOL_NOT_ACCEPTABLE = 4406
    TIMEOUT = 4408
    CONFLICT = 4409             # /graphql: an operation id in use; /ws: an expired cursor
    TOO_MANY_REQUESTS = 4429


class Retry(StrEnum):
    """What a client should do after a close."""

    RECONNECT = "reconnect (with backoff) and resume"
    NEW_TOKEN = "reconnect with a fresh token"
    RESUME = "resubscribe from the last event received"
    LATER = "retry later, with backoff"
    NEVER = "do not retry the same request"


@dataclass(frozen=True)
class Close:
    """One way a connection ends."""

    code: CloseCode
    reason: str
    retry: Retry


# -- /graphql (graphql-transport-ws and legacy graphql-ws) -------------------------------
SHUTDOWN = Close(CloseCode.GOING_AWAY, "Server shutting down", Retry.RECONNECT)
TOKEN_EXPIRED = Close(CloseCode.FORBIDDEN, "Token expired", Retry.NEW_TOKEN)
REVOKED = Close(CloseCode.FORBIDDEN, "Revoked", Retry.NEW_TOKEN)  # an admin's `revoke` (legacy: connection_error first)
FORBIDDEN = Close(CloseCode.FORBIDDEN, "Forbidden", Retry.NEW_TOKEN)
UNAUTHORIZED = Close(CloseCode.UNAUTHORIZED, "Unauthorized", Retry.NEVER)
INIT_TIMEOUT = Close(CloseCode.TIMEOUT, "Connection initialisation timeout", Retry.RECONNECT)
PING_TIMEOUT = Close(CloseCode.TIMEOUT, "Ping timeout", Retry.RECONNECT)
TOO_MANY_INITS = Close(CloseCode.TOO_MANY_REQUESTS, "Too many initialisation requests", Retry.NEVER)
SLOW = "Slow consumer: the client did not read its events in time; "
SLOW_CONSUMER = Close(CloseCode.TRY_AGAIN_LATER, SLOW + "resubscribe with 'after'", Retry.RESUME)
NOT_TEXT = Close(CloseCode.BAD_REQUEST, "WebSocket message type must be text", Retry.NEVER)
NOT_JSON = Close(CloseCode.BAD_REQUEST, "WebSocket message must be valid JSON", Retry.NEVER)
NO_SUBPROTOCOL = Close(CloseCode.SUBPROTOCOL_NOT_ACCEPTABLE, "Subprotocol not acceptable", Retry.NEVER)
TERMINATED = Close(CloseCode.NORMAL, "", Retry.NEVER)  # legacy graphql-ws: the client's `connection_terminate`


def duplicate_operation(operation_id: str) -> Close:
    """`subscribe` with the id of an active operation (graphql-transport-ws)."""
    return Close(CloseCode.CONFLICT, f"Subscriber for {operation_id} already exists", Retry.NEVER)


# -- /ws and /ws/orders (a graceful shutdown is SHUTDOWN there too) ----------------------
WS_TOKEN_EXPIRED = Close(CloseCode.POLICY_VIOLATION, "Token expired", Retry.NEW_TOKEN)
WS_REVOKED = Close(CloseCode.POLICY_VIOLATION, "Revoked", Retry.NEW_TOKEN)
WS_STREAM_ENDED = Close(CloseCode.GOING_AWAY, "Stream ended", Retry.RECONNECT)
WS_SLOW_CONSUMER = Close(CloseCode.TRY_AGAIN_LATER, SLOW + "reconnect with last_event_id", Retry.RESUME)



# -- closes whose reason says what was wrong -----------------------------------------------
def bad_request(reason: str) -> Close:
    """/graphql: a malformed message, or a document that cannot be parsed."""
    return Close(CloseCode.BAD_REQUEST, reason, Retry.NEVER)


def too_many_connections(reason: str) -> Close:
    """Any WebSocket endpoint: over a per-user or per-tenant connection limit (the reason names it)."""
    return Close(CloseCode.TOO_MANY_REQUESTS, reason, Retry.LATER)


def close_reason(text: str) -> str:
    """`text` cut to what a close frame can carry (123 bytes of UTF-8), marked with '...'."""
    data = text.encode()
    if len(data) <= MAX_REASON_BYTES:
        return text
    return data[: MAX_REASON_BYTES - 3].decode(errors="ignore") + "..."


CATALOGUE: dict[str, tuple[Close, ...]] = {
    "/graphql": (SHUTDOWN, TOKEN_EXPIRED, REVOKED, FORBIDDEN, UNAUTHORIZED, INIT_TIMEOUT, PING_TIMEOUT,
                 TOO_MANY_INITS, SLOW_CONSUMER, NOT_TEXT, NOT_JSON, NO_SUBPROTOCOL),
    "/ws": (SHUTDOWN, WS_TOKEN_EXPIRED, WS_REVOKED, WS_STREAM_ENDED, WS_SLOW_CONSUMER),
}
