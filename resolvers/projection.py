"""Rendering plain selections without an execution.

Most subscriptions select a few scalar fields of `Event` or `OrderEvent`
(`{ id type payload }`, maybe with aliases). For those, running graphql-core
per event costs far more than copying the fields, so the planner compiles
such a selection into a list of (response key, getter) and renders the same
`{"data": ...}` graphql-core would. Anything else (fragments, directives,
arguments, unknown fields) is left to graphql-core.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from graphql import FieldNode

from ..streaming.entries import Entry
from .events import order_id, order_status

Getter = Callable[[Entry], Any]
Projector = Callable[[Entry], dict[str, Any]]

_COMMON: dict[str, Getter] = {
    "id": lambda e: e.id,
    "type": lambda e: e.event_type,
    "occurredAt": lambda e: e.occurred_at.isoformat(),  # Strawberry's DateTime serialization
    "payload": lambda e: e.payload,
}
_GETTERS: dict[str, dict[str, Getter]] = {
    "events": {
        **_COMMON,
        "tenantId": lambda e: e.tenant_id,
        "eventId": lambda e: e.event_id,
        "__typename": lambda e: "Event",
    },
    "orderEvents": {
        **_COMMON,
        "orderId": order_id,
        "status": order_status,
        "__typename": lambda e: "OrderEvent",
    },
}


def compile_projection(root: FieldNode) -> Projector | None:
    """A renderer for `root`'s selection, or None when it needs a real execution."""
    getters = _GETTERS.get(root.name.value)
    if getters is None or root.selection_set is None:
        return None
    fields: list[tuple[str, Getter]] = []
    for node in root.selection_set.selections:
        if not isinstance(node, FieldNode) or node.directives or node.arguments or node.selection_set:
            return None
        getter = getters.get(node.name.value)
        if getter is None:
            return None
        fields.append(((node.alias or node.name).value, getter))
    key = (root.alias or root.name).value

    def project(entry: Entry) -> dict[str, Any]:
        return {"data": {key: {name: get(entry) for name, get in fields}}}

    return project
