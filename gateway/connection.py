"""One client connection's lifecycle, whatever its transport.

The gateway speaks seven transports: graphql-transport-ws and legacy graphql-ws
WebSockets on `/graphql`, GraphQL over SSE and multipart HTTP on `/graphql`, and the
seed's `/ws`, `/ws/orders` and `/stream*`. Each is an adapter that translates its
frames; what a connection *is* lives here, once:

- who it is and until when: the verified `Principal`, and one loop timer that
  calls the adapter's `expire()` when the token's `exp` passes; `refresh` swaps in a new
  token of the same identity and moves the timer; a revocation that covers the token
  calls the adapter's `revoke()` (`revoked`);
- who is online: an opened connection counts its user present (`streaming.presence`)
  until it closes;
- what it counts against: the per-user and per-tenant connection limits of the
  process (`ConnectionRefused` when over one) and its tenant's `connections` figure;
- the write deadline: a write the client does not take within
  RAGLINE_SLOW_CONSUMER_TIMEOUT makes it a slow consumer (counted once per connection);
- the final write (`last_words`), which never waits more than FINAL_WRITE_TIMEOUT;
- the graceful drain: the runtime drains every open connection through its adapter.

How a transport *says* an ending (close code, error frame, HTTP status) is data in
`gateway.closes`; what it says it with is the adapter's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Coroutine, Iterator
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Protocol

from ..resolvers.context import Principal
from ..schema.errors import ErrorCode, GatewayError
from ..streaming.errors import SlowConsumer
from ..streaming.revocations import Revocation
from . import closes
from .auth import AuthError
from .closes import FINAL_WRITE_TIMEOUT, Close
from .limits import ConnectionRefused
from .watchdog import Writer, WriteWatch, stalled

if TYPE_CHECKING:
    from .runtime import Runtime

logger = logging.getLogger(__name__)
# The writer of the current task, while it writes under the deadline (`Connection.writes`).
_WRITER: ContextVar[Writer | None] = ContextVar("ragline_writer", default=None)
_ENDING: set[asyncio.Task[None]] = set()  # expiries and revocations: the loop keeps only weak references


class RefreshRefused(GatewayError):
    """A token refresh was refused: `FORBIDDEN`, with a message safe to show (no token)."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.FORBIDDEN, message)


class Adapter(Protocol):
    """What a transport does for the lifecycle: end the connection in its own words."""

    async def expire(self) -> None:
        """The token expired: end the connection, telling the client as the protocol can."""

    async def revoke(self) -> None:
        """An admin revoked the token: end the connection, telling the client as the protocol can."""

    async def drain(self) -> None:
        """Graceful shutdown: complete the connection's operations (cursors flushed), then end it."""


class Connection:
    """One client connection, from accept to close. Registered for the drain from creation;
    `open` it with the verified principal; `close` it exactly once, whatever happened."""

    __slots__ = ("_expiry", "adapter", "principal", "runtime", "slow", "slow_consumer")

    def __init__(self, runtime: Runtime, adapter: Adapter, slow_consumer: Close = closes.SLOW_CONSUMER) -> None:
        self.runtime = runtime
        self.adapter: Adapter | None = adapter  # until closed: the adapter refers to its connection
        self.slow_consumer = slow_consumer  # its words for a slow consumer (the endpoint's catalogue entry)
        self.principal: Principal | None = None
        self.slow = False  # ended as a slow consumer (counted once)
        self._expiry: asyncio.TimerHandle | None = None
        runtime.connections.add(self)

    def open(self, principal: Principal) -> None:
        """Count the authenticated connection in and arm its expiry. Over a limit: the refusal
        is counted and logged, the connection closed, and ConnectionRefused raised for the
        adapter to tell the client."""
        try:
            self.runtime.limits.acquire(principal)
        except ConnectionRefused as refused:
            self.close()
            self.runtime.metrics.refused(refused.limit)
            logger.info("connection refused: %s", refused.reason)
            raise
        self.principal = principal
        hub = self.runtime.hub
        if hub is not None:
            hub.counters.tenant(principal.tenant_id).connections += 1
        live = self.runtime.live
        if live is not None:
            live.presence.opened(principal.tenant_id, principal.user_id)
        self._arm(principal)

    async def refresh(self, token: str) -> Principal:
        """Go on under `token`: verified like any token (revocations included), of the same
        tenant and user; its expiry replaces the old one. RefreshRefused, with nothing
        changed (the old expiry still applies), when it is not acceptable."""
        current = self.principal
        if current is None:
            raise RefreshRefused("the connection is not authenticated")
        try:
            principal = await self.runtime.authenticate(token)
        except AuthError as error:
            raise RefreshRefused(f"Token refused: {error.reason}") from None
        if (principal.tenant_id, principal.user_id) != (current.tenant_id, current.user_id):
            raise RefreshRefused("The token names another tenant or user")
        if self.principal is not current:  # closed, or refreshed meanwhile
            raise RefreshRefused("the connection is not authenticated")
        self.principal = principal
        self._arm(principal)
        logger.info("connection of tenant %s, user %s: token refreshed", principal.tenant_id, principal.user_id)
        return principal

    def revoked(self, revocation: Revocation) -> bool:
        """End the connection if `revocation` covers its token; True if it did."""
        principal, adapter = self.principal, self.adapter
        if principal is None or adapter is None:
            return False
        if not revocation.covers(principal.tenant_id, principal.user_id, principal.issued_at):
            return False
        logger.info("ending a connection of tenant %s, user %s: revoked", principal.tenant_id, principal.user_id)
        self._spawn(adapter.revoke())
        return True

    def _arm(self, principal: Principal) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if principal.expires_at is not None:  # a timer, not a task asleep for hours per connection
            delay = max(0.0, principal.expires_at - time.time())
            self._expiry = asyncio.get_running_loop().call_later(delay, self._expired)

    def close(self) -> None:
        """Count the connection out; idempotent. The adapter is let go (nothing is asked of
        it once closed), so the two do not keep each other alive."""
        self.runtime.connections.discard(self)
        self.adapter = None
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        principal, self.principal = self.principal, None
        if principal is None:
            return
        self.runtime.limits.release(principal)
        hub = self.runtime.hub
        if hub is not None:
            hub.counters.tenant(principal.tenant_id).connections -= 1
        live = self.runtime.live
        if live is not None:
            live.presence.closed(principal.tenant_id, principal.user_id)

    async def drain(self) -> None:
        adapter = self.adapter
        if adapter is not None:  # closed since the drain began: nothing left to drain
            await adapter.drain()

    def _expired(self) -> None:
        self._expiry = None
        adapter = self.adapter
        if adapter is None:  # closed (which cancels this timer): nobody to tell
            return
        if self.principal is not None:
            logger.info("ending a connection of tenant %s: token expired", self.principal.tenant_id)
        self._spawn(adapter.expire())

    @staticmethod
    def _spawn(ending: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(ending)
        _ENDING.add(task)
        task.add_done_callback(_ENDING.discard)

    # -- the write deadline ---------------------------------------------------

    def writes(self) -> Writes:
        """The current task writes under the deadline until the block ends: set
        `writer.since` when a write begins and back to 0.0 when it returned; a write
        pending too long is cancelled (`watchdog.stalled` tells that cancellation apart)."""
        return Writes(self.runtime.writes)

    @asynccontextmanager
    async def deadline(self) -> AsyncIterator[None]:
        """One write (waiting for a lock included) under the deadline: SlowConsumer if it
        missed it. The current task's writer if it has one, else one for this write."""
        writer = _WRITER.get()
        with self.writes() if writer is None else _same(writer) as writer:
            writer.since = asyncio.get_running_loop().time()
            try:
                yield
            except asyncio.CancelledError:
                if not stalled(writer):
                    raise
                self.ended_slow()
                raise SlowConsumer(self.slow_consumer.reason) from None
            finally:
                writer.since = 0.0

    @staticmethod
    def unwatched() -> None:
        """The current task, made by one that writes under the deadline, writes without it."""
        _WRITER.set(None)

    def ended_slow(self) -> bool:
        """The client did not read in time; True the first time (counted then)."""
        if self.slow:
            return False
        self.slow = True
        self.runtime.metrics.delivery.slow_consumers += 1
        logger.info("ending the operations of a client that did not read in time")
        return True

    # -- the last write -------------------------------------------------------

    async def last_words(self, words: Awaitable[None], gone: tuple[type[BaseException], ...] = ()) -> bool:
        """Write `words` within FINAL_WRITE_TIMEOUT. False when the client did not take them:
        it stopped reading, and the adapter gives the connection up without them. A client
        already `gone` (the adapter's socket errors) is no failure: there is nobody to tell."""
        try:
            async with asyncio.timeout(FINAL_WRITE_TIMEOUT):
                await words
        except TimeoutError:
            return False
        except gone:
            pass
        return True


class Writes:
    """`Connection.writes`: a class, not a generator, as an operation's task holds it for
    the operation's whole life (a generator and its context manager weigh ~0.8 KB)."""

    __slots__ = ("_token", "_watch", "_writer")

    def __init__(self, watch: WriteWatch) -> None:
        self._watch = watch

    def __enter__(self) -> Writer:
        self._writer = self._watch.watch()
        self._token = _WRITER.set(self._writer)
        return self._writer

    def __exit__(self, *exc_info: object) -> None:
        _WRITER.reset(self._token)
        self._watch.forget(self._writer)


def current_writer() -> Writer | None:
    """The writer of the current task, when it writes under a connection's deadline."""
    return _WRITER.get()


@contextmanager
def _same(writer: Writer) -> Iterator[Writer]:
    yield writer


__all__ = ["Adapter", "Connection", "RefreshRefused", "current_writer"]
