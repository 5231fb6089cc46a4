"""The `events` and `orderEvents` subscriptions: entries in, schema objects out.

Each call opens its own consumer group through the hub, yields the matching
entries in stream order and acknowledges each entry only after the yield
returned, that is after Strawberry wrote the `next` message; entries a filter
skips are acknowledged at once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

from ..schema.errors import ErrorCode, GatewayError
from ..schema.types import Event, OrderEvent
from ..streaming import keys
from ..streaming.entries import Entry
from ..streaming.errors import (
    CursorExpired,
    DurableTakenOver,
    InvalidCursor,
    SlowConsumer,
    StreamingError,
    Unavailable,
)
from ..streaming.hub import Accept, Cursor, Deliveries, Durable
from ..streaming.subscriber import Sift
from .context import GatewayContext, Principal
from .filters import order_filter, type_filter, with_where
from .metrics import LatencyHistogram

T = TypeVar("T")
U = TypeVar("U")

_CODES: dict[type[StreamingError], ErrorCode] = {
    InvalidCursor: ErrorCode.BAD_USER_INPUT,
    CursorExpired: ErrorCode.CURSOR_EXPIRED,
    DurableTakenOver: ErrorCode.DURABLE_TAKEN_OVER,
    Unavailable: ErrorCode.UNAVAILABLE,
    SlowConsumer: ErrorCode.SLOW_CONSUMER,
}


def to_event(entry: Entry) -> Event:
    return Event(
        id=entry.id,  # type: ignore[arg-type]
        type=entry.event_type,
        tenant_id=entry.tenant_id,
        event_id=entry.event_id,
        occurred_at=entry.occurred_at,
        payload=entry.payload,  # type: ignore[arg-type]  # Strawberry's JSON is a NewType of object
    )


def to_order_event(entry: Entry) -> OrderEvent:
    return OrderEvent(
        id=entry.id,  # type: ignore[arg-type]
        type=entry.event_type,
        order_id=order_id(entry),
        status=order_status(entry),
        occurred_at=entry.occurred_at,
        payload=entry.payload,  # type: ignore[arg-type]
    )


def order_id(entry: Entry) -> str:
    """`orderId` of an entry the order filter let through (so it carries one)."""
    return str(entry.payload["order_id"])


def order_status(entry: Entry) -> str | None:
    """`status` of an order event: the payload's, as text, if it has one."""
    status = entry.payload.get("status")
    return None if status is None else str(status)


async def open_events(
    context: GatewayContext,
    types: list[str] | None,
    where: dict[str, Any] | None,
    after: str | None,
    durable: str | None,
) -> AsyncIterator[Event]:
    accept = with_where(type_filter(types), where, context.delivery)
    entries = await open_entries(context, keys.EVENTS_KIND, accept, after, durable)
    return entries.map(to_event)


async def open_order_events(
    context: GatewayContext,
    order_id: str | None,
    where: dict[str, Any] | None,
    after: str | None,
    durable: str | None,
) -> AsyncIterator[OrderEvent]:
    accept = with_where(order_filter(order_id), where, context.delivery)
    entries = await open_entries(context, keys.ORDERS_KIND, accept, after, durable)
    return entries.map(to_order_event)


def require_principal(context: GatewayContext) -> Principal:
    if context.principal is None:
        raise GatewayError(ErrorCode.UNAUTHENTICATED, "Authentication required")
    return context.principal


async def open_entries(
    context: GatewayContext, kind: str, accept: Accept, after: str | None, durable: str | None
) -> DeliveryStream[Entry]:
    """The caller's accepted entries, through its own consumer group.

    Raises a coded GatewayError before anything is left behind in Redis."""
    principal = require_principal(context)
    hub = context.hub
    assert hub is not None
    cursor = Cursor(after=after, durable=_durable(principal, durable))
    opened = hub.subscribe(principal.tenant_id, kind, cursor)
    try:
        subscriber = await opened.__aenter__()
    except StreamingError as error:
        raise as_graphql_error(error) from None
    cleanup = Cleanup(opened)
    metrics = context.delivery
    if metrics is not None:
        metrics.opened(kind, cursor.durable is not None)
        cleanup.callback(metrics.closed, kind, cursor.durable is not None)
    latency = None if metrics is None else metrics.latency
    return DeliveryStream(cleanup, hub.deliveries(subscriber, accept), latency=latency)


def _durable(principal: Principal, name: str | None) -> Durable | None:
    if name is None:
        return None
    if not keys.is_valid_id(name):
        raise GatewayError(ErrorCode.BAD_USER_INPUT, "'durable' must match [A-Za-z0-9_.-]{1,64}")
    return Durable(principal.user_id, name)


def as_graphql_error(error: StreamingError) -> GatewayError:
    return GatewayError(_CODES[type(error)], str(error))


class Cleanup:
    """What closing a subscription undoes: callbacks (last added first), then the hub's
    `subscribe` context. An AsyncExitStack would do, but it is far larger, and there is one per subscription."""

    __slots__ = ("_callbacks", "_opened")

    def __init__(self, opened: AbstractAsyncContextManager[object]) -> None:
        self._opened: AbstractAsyncContextManager[object] | None = opened
        self._callbacks: list[tuple[Callable[..., object], tuple[Any, ...]]] = []

    def callback(self, callback: Callable[..., object], *args: Any) -> None:
        self._callbacks.append((callback, args))

    async def aclose(self) -> None:
        opened, self._opened = self._opened, None
        try:
            while self._callbacks:
                callback, args = self._callbacks.pop()
                callback(*args)
        finally:
            if opened is not None:
                await opened.__aexit__(None, None, None)


class DeliveryStream(AsyncIterator[T]):
    """The subscription's event source: streaming errors come out as coded GraphQL
    errors, each entry's latency is observed once it was written (when the next
    is asked for, as the hub acknowledges it), and closing the stream releases
    the group even when it was never iterated.

    One object, not a stack of async generators: this runs once per event per
    subscriber."""

    def __init__(
        self,
        cleanup: Cleanup,
        source: Deliveries,
        convert: Callable[[Entry], T] | None = None,
        latency: LatencyHistogram | None = None,
    ) -> None:
        self._cleanup = cleanup
        self._source = source
        self._convert = convert
        self._latency = latency
        self._written: Entry | None = None  # handed out last; written once the next is asked for
        self.sift: Sift | None = None  # the cohort's shared decisions, for the fan-out writer

    def __aiter__(self) -> DeliveryStream[T]:
        return self

    async def __anext__(self) -> T:
        self._settle()
        try:
            entry = await self._source.__anext__()
        except StreamingError as error:
            raise as_graphql_error(error) from None
        self._written = entry
        return entry if self._convert is None else self._convert(entry)  # type: ignore[return-value]

    def idle(self) -> Awaitable[None] | None:
        """None when `__anext__` would return at once; else what it would wait on, for a
        consumer that waits on it itself (`Deliveries.idle`): the item handed out last
        counts as written."""
        waiter = self._source.idle()
        if waiter is not None:
            self._settle()
        return waiter

    def _settle(self) -> None:
        """The item handed out last was written: its latency is observed (once)."""
        written, self._written = self._written, None
        if written is not None and self._latency is not None:
            self._latency.observe(written)

    async def aclose(self) -> None:
        try:
            await self._source.aclose()
        finally:
            await self._cleanup.aclose()

    def write_directly(self, write: Callable[[T], bool], flush: Callable[[], None] | None = None) -> None:
        """Items go straight to `write` from the shared reader while the consumer waits
        (`Deliveries.write_directly`); `write` returns False for one it cannot write now;
        `flush()` ends each of the reader's passes that wrote."""
        self._source.write_directly(write, self.sift, flush, self._convert, self._latency)

    def on_close(self, callback: Callable[..., object], *args: Any) -> None:
        """Run `callback(*args)` when the stream is closed."""
        self._cleanup.callback(callback, *args)

    def map(self, convert: Callable[[T], U]) -> DeliveryStream[U]:
        """The same stream (and cleanup) with each item converted."""
        inner = self._convert
        outer: Callable[[Entry], U] = (
            convert if inner is None else lambda entry: convert(inner(entry))  # type: ignore[assignment]
        )
        return DeliveryStream(self._cleanup, self._source, outer, self._latency)

    def __repr__(self) -> str:
        return f"<DeliveryStream {self._source!r}>"


__all__: list[Any] = ["open_entries", "open_events", "open_order_events", "to_event", "to_order_event"]
