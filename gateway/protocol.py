"""The shape of the two GraphQL WebSocket protocols' client messages.

graphql-transport-ws (https://github.com/enisdenjo/graphql-ws/blob/master/PROTOCOL.md)
names a close code for each violation; Strawberry implements most of them,
but trusts the shape of what it parses (a list where it expects an object,
a number for an id, a string for a payload would raise inside its handler).
`transport_ws_violation` and `legacy_ws_violation` check a parsed message
before Strawberry sees it, so that every malformed message gets the same
answer: close 4400 with a reason saying what was wrong (legacy graphql-ws:
`connection_error` first, as subscriptions-transport-ws does, then the close).
"""

from __future__ import annotations

from typing import Any

TRANSPORT_WS_MESSAGES = frozenset({"connection_init", "ping", "pong", "subscribe", "complete"})
LEGACY_WS_MESSAGES = frozenset({"connection_init", "connection_terminate", "start", "stop"})


def transport_ws_violation(message: Any) -> str | None:
    """What is wrong with a graphql-transport-ws client message, or None."""
    problem = _kind_violation(message, TRANSPORT_WS_MESSAGES)
    if problem is not None:
        return problem
    kind = message["type"]
    if kind in {"connection_init", "ping", "pong"}:
        return _optional(message, "payload", dict, f"'{kind}' payload must be an object or null")
    if kind == "complete":
        return _id_violation(message)
    return _id_violation(message) or _operation_violation(message.get("payload"), "subscribe")


def legacy_ws_violation(message: Any) -> str | None:
    """What is wrong with a legacy graphql-ws (subscriptions-transport-ws) client message, or None."""
    problem = _kind_violation(message, LEGACY_WS_MESSAGES)
    if problem is not None:
        return problem
    kind = message["type"]
    if kind == "connection_init":
        return _optional(message, "payload", dict, "'connection_init' payload must be an object or null")
    if kind == "stop":
        return _id_violation(message)
    if kind == "start":
        return _id_violation(message) or _operation_violation(message.get("payload"), "start")
    return None


def _kind_violation(message: Any, known: frozenset[str]) -> str | None:
    if not isinstance(message, dict):
        return "Message must be a JSON object"
    kind = message.get("type")
    if not isinstance(kind, str):
        return "Message must have a string 'type'"
    if kind not in known:
        return f"Unknown message type: {kind}"
    return None


def _id_violation(message: dict[str, Any]) -> str | None:
    operation_id = message.get("id")
    if not isinstance(operation_id, str) or not operation_id:
        return f"'{message['type']}' must have a non-empty string 'id'"
    return None


def _operation_violation(payload: Any, kind: str) -> str | None:
    if not isinstance(payload, dict) or not isinstance(payload.get("query"), str):
        return f"'{kind}' payload must be an object with a string 'query'"
    return (
        _optional(payload, "variables", dict, f"'{kind}' variables must be an object or null")
        or _optional(payload, "operationName", str, f"'{kind}' operationName must be a string or null")
        or _optional(payload, "extensions", dict, f"'{kind}' extensions must be an object or null")
    )


def _optional(container: dict[str, Any], key: str, kind: type, problem: str) -> str | None:
    value = container.get(key)
    return None if value is None or isinstance(value, kind) else problem
