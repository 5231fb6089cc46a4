"""What the seed-compat adapters (`compat_ws`, `compat_sse`) share.

Authentication, error mapping, stats, and the jobs every old-protocol
connection runs (the delivery pump, the heartbeat), raced so that a connection
ends as a whole. What a connection is (limits, expiry, drain, write deadline)
is `gateway.connection`'s, as on every transport.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import aclosing
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from starlette.requests import HTTPConnection

from ..resolvers.context import GatewayContext, Principal
from ..resolvers.events import as_graphql_error
from ..resolvers.filters import ORDER_PREFIX
from ..resolvers.metrics import DeliveryMetrics
from ..resolvers.stats import resolve_stats
from ..schema.errors import ErrorCode
from ..streaming.entries import Entry
from ..streaming.errors import StreamingError
from ..streaming.hub import Accept, Hub
from ..streaming.subscriber import Subscriber
from . import closes
from .auth import AuthError, AuthFailure, token_from_request
from .runtime import Runtime

Message = dict[str, Any]
LAST_EVENT_ID_PARAM = "last_event_id"
COMPAT_KIND = "compat"      # the `kind` of /ws and /stream subscriptions in /metrics


def now() -> str:
    """Server time for a message's `timestamp`, ISO-8601 in UTC."""
    return datetime.now(UTC).isoformat()


def runtime_of(connection: HTTPConnection) -> Runtime:
    runtime: Runtime = connection.app.state.runtime
    return runtime


def hub_of(runtime: Runtime) -> Hub:
    """The started hub; the app's lifespan starts it before any request is served."""
    assert runtime.hub is not None
    return runtime.hub


class MissingToken(AuthError):
    """Neither an `Authorization: Bearer` header nor a `token` query parameter was sent."""

    def __init__(self) -> None:
        super().__init__("no token", AuthFailure.MISSING)


async def authenticate(runtime: Runtime, connection: HTTPConnection) -> Principal:
    """The principal behind the `Authorization: Bearer` header or the `token` query parameter."""
    token = token_from_request(connection.headers, connection.query_params)
    try:
        return await runtime.authenticate(token)
    except AuthError as error:
        if error.failure is AuthFailure.MISSING:
            raise MissingToken() from None
        raise


def is_order_event(entry: Entry) -> bool:
    """What the old order endpoints delivered: `order_*` types, with or without an `order_id`."""
    return entry.event_type.startswith(ORDER_PREFIX)


def last_event_id(connection: HTTPConnection) -> str | None:
    """Where to resume: SSE's `Last-Event-ID` header, else the `last_event_id` query parameter."""
    return connection.headers.get("last-event-id") or connection.query_params.get(LAST_EVENT_ID_PARAM) or None


def describe(error: StreamingError) -> tuple[ErrorCode, str]:
    """The code GraphQL uses for `error`, and its message naming our parameter:
    the core's messages speak of GraphQL's `after`."""
    return as_graphql_error(error).code, str(error).replace("'after'", "last_event_id")


async def stats_json(hub: Hub, principal: Principal) -> Message:
    """The GraphQL `stats` figures, snake_case, for `get_stats` and `/ws/stats`."""
    return asdict(await resolve_stats(GatewayContext(hub=hub, principal=principal)))


class ServerEnding:
    """What the lifecycle calls on a compat adapter (`gateway.connection.Adapter`): the
    token's expiry, a revocation and the drain end the connection's race (`ended_by_server` returns the
    catalogue entry to end with); `drain` returns once the connection `finished`, so its
    subscription was released and SIGTERM loses nothing."""

    token_expired: closes.Close  # the endpoint's words for an expired token
    revoked: closes.Close  # ... and for a revoked one

    def __init__(self) -> None:
        self._ending: asyncio.Future[closes.Close] = asyncio.get_running_loop().create_future()
        self._finished = asyncio.Event()

    async def expire(self) -> None:
        self._end(self.token_expired)

    async def revoke(self) -> None:
        self._end(self.revoked)

    async def drain(self) -> None:
        self._end(closes.SHUTDOWN)
        await self._finished.wait()

    async def ended_by_server(self) -> closes.Close:
        return await asyncio.shield(self._ending)

    def finished(self) -> None:
        self._finished.set()

    def _end(self, why: closes.Close) -> None:
        if not self._ending.done():
            self._ending.set_result(why)


async def pump(
    hub: Hub,
    subscription: Subscriber,
    accept: Accept,
    write: Callable[[Entry], Awaitable[None]],
    metrics: DeliveryMetrics | None = None,
    write_now: Callable[[Entry], bool] | None = None,
) -> None:
    """Write each accepted entry; the hub acknowledges it only when asked for the next one.
    With `write_now`, the shared reader writes the entries itself while this waits
    (`Deliveries.write_directly`: the fan-out writer); `write` takes the rest."""
    if metrics is None:
        metrics = DeliveryMetrics()  # counted nowhere
    metrics.opened(COMPAT_KIND, False)
    latency = metrics.latency
    try:
        async with aclosing(hub.deliveries(subscription, accept)) as entries:
            if write_now is not None:
                entries.write_directly(write_now, latency=latency)
            async for entry in entries:
                await write(entry)
                metrics.latency.observe(entry)
    finally:
        metrics.closed(COMPAT_KIND, False)


async def beat(interval: float, write: Callable[[], Awaitable[None]]) -> None:
    """Call `write` every `interval` seconds until cancelled."""
    while True:
        await asyncio.sleep(interval)
        await write()


async def race(*jobs: Coroutine[Any, Any, object]) -> None:
    """Run a connection's jobs together until the first one ends, then cancel and await the rest.

    A connection ends as a whole: when the client goes, the delivery loop and
    the heartbeat stop with it, and the first failure is re-raised."""
    tasks = [asyncio.create_task(job) for job in jobs]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in tasks:
        if task in done and not task.cancelled() and (error := task.exception()) is not None:
            raise error


def heartbeat_jobs(interval: float, write: Callable[[], Awaitable[None]]) -> list[Coroutine[Any, Any, object]]:
    """The heartbeat job, or none when the interval is 0 (heartbeats off)."""
    return [beat(interval, write)] if interval > 0 else []
