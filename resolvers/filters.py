"""Which entries a subscription delivers: type patterns, order filters and payload filters."""

from __future__ import annotations

import re
from typing import Any

from ..schema.errors import ErrorCode, GatewayError
from ..streaming.entries import Entry
from ..streaming.hub import Accept
from .metrics import DeliveryMetrics
from .where import FilterError, compile_filter

MAX_TYPE_PATTERNS = 50
ORDER_PREFIX = "order_"
_PATTERN = re.compile(r"(?:[a-z][a-z0-9_.:-]{0,63})?\*?")


def type_filter(types: list[str] | None) -> Accept:
    """Exact names and `prefix*` patterns; None accepts every type."""
    if types is None:
        return _accept_all
    if not types:
        raise GatewayError(ErrorCode.BAD_USER_INPUT, "'types' must not be empty; omit it for all types")
    if len(types) > MAX_TYPE_PATTERNS:
        raise GatewayError(ErrorCode.BAD_USER_INPUT, f"'types' takes at most {MAX_TYPE_PATTERNS} patterns")
    for pattern in types:
        if not pattern or _PATTERN.fullmatch(pattern) is None:
            raise GatewayError(ErrorCode.BAD_USER_INPUT, f"Invalid event type pattern {pattern!r}")
    exact = frozenset(t for t in types if not t.endswith("*"))
    prefixes = tuple(t[:-1] for t in types if t.endswith("*"))
    if "" in prefixes:
        return _accept_all
    return lambda entry: entry.event_type in exact or entry.event_type.startswith(prefixes)


def order_filter(order_id: str | None) -> Accept:
    """`order_*` events carrying an order id; only `order_id`'s when given."""
    if order_id is not None and not order_id:
        raise GatewayError(ErrorCode.BAD_USER_INPUT, "'orderId' must not be empty")

    def accept(entry: Entry) -> bool:
        if not entry.event_type.startswith(ORDER_PREFIX):
            return False
        found = entry.payload.get("order_id")
        if not isinstance(found, str | int) or isinstance(found, bool):
            return False
        return order_id is None or str(found) == order_id

    return accept


def with_where(accept: Accept, where: dict[str, Any] | None, metrics: DeliveryMetrics | None) -> Accept:
    """`accept`, then the payload filter `where` (compiled now; a bad one is BAD_USER_INPUT),
    each evaluation counted in `metrics`."""
    try:
        matches = compile_filter(where)
    except FilterError as error:
        raise GatewayError(ErrorCode.BAD_USER_INPUT, str(error)) from None
    if matches is None:
        return accept
    counts = metrics if metrics is not None else DeliveryMetrics()

    def accept_where(entry: Entry) -> bool:
        if not accept(entry):
            return False
        counts.filter_evaluations += 1
        return matches(entry.payload)

    return accept_where


def _accept_all(entry: Entry) -> bool:
    return True
