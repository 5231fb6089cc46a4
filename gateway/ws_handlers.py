"""The /graphql WebSocket handlers: Strawberry's, held to the protocols and our limits.

Both handlers add, around Strawberry's: connection accounting and the graceful
drain; a check of every client message's shape (`gateway.protocol`) before
Strawberry reads it; the subscribe/complete rate and the subscription limit,
answered with coded errors; the socket's ids in the logs. graphql-transport-ws
also gets server pings (`gateway.heartbeat`) and the shared-execution fast
path (`resolvers.shared`); legacy graphql-ws gets the init timeout and the
refusal of a second `connection_init` that Strawberry only applies to the
newer protocol, and its `ka` keep-alive.

Every frame an operation writes, on either subprotocol and either path (ours or
Strawberry's), is written under the slow-consumer deadline of the process's
`WriteWatch`; one that misses it ends all the connection's operations the same
way (`_ConnectionHooks.slow_consumer`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import orjson
from graphql import GraphQLError
from starlette.types import Message
from starlette.websockets import WebSocket, WebSocketDisconnect
from strawberry.asgi import ASGIWebSocketAdapter
from strawberry.exceptions import ConnectionRejectionError
from strawberry.http.exceptions import (
    NonJsonMessageReceived,
    NonTextMessageReceived,
    WebSocketDisconnected,
)
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
    Operation,
)
from strawberry.subscriptions.protocols.graphql_transport_ws.types import (
    CompleteMessage,
    ConnectionInitMessage,
    NextMessage,
    PongMessage,
    SubscribeMessage,
)
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler
from strawberry.subscriptions.protocols.graphql_ws.types import (
    ConnectionInitMessage as LegacyInitMessage,
)
from strawberry.subscriptions.protocols.graphql_ws.types import (
    StartMessage,
    StopMessage,
)

from ..resolvers.context import GatewayContext
from ..resolvers.shared import SharedPlan, open_shared
from ..schema.errors import MASKED_MESSAGE, ErrorCode, GatewayError
from . import closes
from .closes import FINAL_WRITE_TIMEOUT, Close, CloseCode, close_reason
from .heartbeat import Heartbeat
from .limits import ConnectionRefused, Limit, TokenBucket, rate_limited, too_many_subscriptions
from .logs import OPERATION_ID, new_connection_id
from .protocol import legacy_ws_violation, transport_ws_violation
from .watchdog import Writer, stalled

if TYPE_CHECKING:
    from .transport import GatewayRouter

logger = logging.getLogger(__name__)
SOCKET_GONE = (RuntimeError, OSError, WebSocketDisconnect, WebSocketDisconnected)
RESULTS = frozenset({"next", "data"})  # the message types that carry an operation's results
# The writes of the current task, if it runs an operation; None in the connection's own
# tasks (its messages, acks, pongs and refusals, are not results and take no deadline).
_WRITER: ContextVar[Writer | None] = ContextVar("ragline_ws_writer", default=None)


def slow_consumer_error() -> GatewayError:
    return GatewayError(ErrorCode.SLOW_CONSUMER, closes.SLOW_CONSUMER.reason)


def error_next(operation_id: str, error: GraphQLError) -> NextMessage:
    """graphql-transport-ws's way to end an operation with an error it can resume from."""
    return {"id": operation_id, "type": "next", "payload": {"data": None, "errors": [error.formatted]}}


def asgi_send(websocket: WebSocket) -> Callable[[Message], Awaitable[None]]:
    """The connection's ASGI `send`, for the per-event writes of the fast path.

    Starlette's `send_text` checks the socket's state machine and maps OSError to
    WebSocketDisconnect on every call, about a tenth of a delivery's cost; once the
    socket is accepted neither is needed there (SOCKET_GONE covers OSError, and a
    write after close fails in the server). Falls back to Starlette's own `send`
    if a future Starlette no longer keeps the callable as `_send`."""
    raw = getattr(websocket, "_send", None)
    return raw if callable(raw) else websocket.send


class GatewayWebSocketAdapter(ASGIWebSocketAdapter):
    """Strawberry's adapter; close reasons are cut to what a close frame carries
    (Strawberry puts client-chosen ids and types in some of them)."""

    async def close(self, code: int, reason: str) -> None:
        await super().close(code, close_reason(reason))


class _ConnectionHooks:
    """What both handlers add: accounting, drain, rate limit, the write deadline, and giving up on a peer."""

    view: GatewayRouter
    context: GatewayContext
    websocket: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = self.view.runtime.settings
        self.bucket = TokenBucket(settings.subscribe_rate, settings.subscribe_burst)
        self._abandoned = False
        self._serving = False
        self._task: asyncio.Task[Any] | None = None
        self._ending: asyncio.Task[None] | None = None  # the slow-consumer ending, while it runs
        self._unfinished: list[str] = []  # operations whose own last message missed the deadline

    async def handle(self) -> None:
        new_connection_id()
        self._task = asyncio.current_task()
        connections = self.view.runtime.connections
        connections.add(self)
        try:
            self._serving = True
            await self.serve()
        except asyncio.CancelledError:
            # `_drop` cancelled us to stop waiting on a peer that takes nothing: that ends
            # the connection normally; any other cancellation goes on.
            if not self._abandoned or self._task is None or self._task.uncancel() > 0:
                raise
        finally:
            self._serving = False
            if self._ending is not None:
                await self._ending
            connections.discard(self)
            self.view.on_ws_disconnect(self.context)

    async def serve(self) -> None:
        raise NotImplementedError

    async def close(self, ending: Close) -> None:
        """Close the socket as the catalogue says (gateway.closes)."""
        await self.websocket.close(ending.code, ending.reason)

    async def drain(self) -> None:
        """Complete every operation (their cursors flushed), then close with 1001."""
        await self.complete_all()
        with suppress(*SOCKET_GONE):
            await self.close(closes.SHUTDOWN)

    async def complete_all(self) -> None:
        raise NotImplementedError

    async def cancel_all(self) -> list[str]:
        """End every operation without a word to the client (their groups are released);
        the ids of those that were running."""
        raise NotImplementedError

    async def say_slow_consumer(self, operation_ids: list[str]) -> None:
        """Tell the client that these operations ended as a slow consumer, as its protocol can."""
        raise NotImplementedError

    def refusal(self, active: int) -> GatewayError | None:
        """Why a new operation may not start: the connection being ended, the rate, then the limit."""
        metrics, settings = self.view.runtime.metrics, self.view.runtime.settings
        if self._ending is not None:
            return slow_consumer_error()
        if not self.bucket.take():
            metrics.refused(Limit.SUBSCRIBE_RATE)
            return rate_limited(settings)
        if active >= settings.max_subscriptions_per_connection:
            metrics.refused(Limit.SUBSCRIPTIONS)
            return too_many_subscriptions(settings)
        return None

    async def refuse_connection(self, refused: ConnectionRefused) -> None:
        self.view.runtime.metrics.refused(refused.limit)
        logger.info("connection refused: %s", refused.reason)
        await self.websocket.close(refused.code, refused.reason)

    async def send_message(self, message: Any) -> None:
        """Every message the handlers write (Strawberry's included). An operation's are written
        under the slow-consumer deadline, without a timer per write: the process's `WriteWatch`
        cancels a write pending too long, which ends the connection's operations (`slow_consumer`)."""
        writer = _WRITER.get()
        if writer is None:
            await super().send_message(message)  # type: ignore[misc]
            return
        if self._ending is not None:
            # The ending speaks for every operation: a result waits to be cancelled with its
            # operation (so it is neither written nor acknowledged); anything else is dropped.
            if message["type"] in RESULTS:
                await self._cancelled_by_ending()
            return
        writer.since = asyncio.get_running_loop().time()
        try:
            await super().send_message(message)  # type: ignore[misc]
        except asyncio.CancelledError:
            if not stalled(writer):
                raise
            if message["type"] not in RESULTS:  # its own last message: the operation is already forgotten
                self._unfinished.append(message["id"])
            await self.slow_consumer()
        finally:
            writer.since = 0.0

    @contextmanager
    def operation_writes(self) -> Iterator[Writer]:
        """The current task runs an operation: its writes take the deadline until it ends."""
        watch = self.view.runtime.writes
        writer = watch.watch()
        _WRITER.set(writer)
        try:
            yield writer
        finally:
            watch.forget(writer)

    async def slow_consumer(self) -> None:
        """A write of this operation missed the deadline: end all the connection's operations
        as a slow consumer (once, counted once), and wait to be cancelled with them. The write
        that missed wrote nothing, so its entry stays unacknowledged."""
        if self._ending is None:
            self.view.runtime.metrics.delivery.slow_consumers += 1
            logger.info("ending the operations of a client that did not read in time")
            self._ending = asyncio.create_task(self._end_slow_consumer())
        await self._cancelled_by_ending()

    async def _cancelled_by_ending(self) -> None:
        """Wait for the ending to cancel this operation with the others."""
        assert self._ending is not None
        await asyncio.shield(self._ending)
        raise asyncio.CancelledError  # not cancelled with the others (it was already ending): end anyway

    async def _end_slow_consumer(self) -> None:
        _WRITER.set(None)  # created in an operation's task, this one writes as the connection
        OPERATION_ID.set(None)
        try:
            ended = await self.cancel_all()
            unfinished = [operation_id for operation_id in self._unfinished if operation_id not in ended]
            await self._last_words(self.say_slow_consumer(ended + unfinished), "the slow-consumer error")
        finally:
            self._unfinished.clear()
            self._ending = None

    async def abandon(self, ending: Close) -> None:
        """Give up on a peer that stopped answering: free its operations at once,
        then close without waiting on it."""
        await self.cancel_all()
        await self._last_words(self.close(ending), "the close frame")

    async def _last_words(self, words: Awaitable[None], what: str) -> None:
        """`words` written within FINAL_WRITE_TIMEOUT, or the connection dropped without them:
        a peer that stopped reading is never left holding it open."""
        try:
            async with asyncio.timeout(FINAL_WRITE_TIMEOUT):
                await words
            return
        except TimeoutError:
            pass
        except SOCKET_GONE:
            return
        logger.info("not even %s could be written: ending the connection without it", what)
        self._drop()

    def _drop(self) -> None:
        """End the handler without a close frame: its operations are already freed; uvicorn
        closes the transport once the peer has taken what was buffered for it."""
        if self._serving and self._task is not None:
            self._abandoned = True
            self._task.cancel()


class TransportWSHandler(_ConnectionHooks, BaseGraphQLTransportWSHandler[GatewayContext, None]):  # type: ignore[misc]  # view: our router subclass
    """graphql-transport-ws, with server pings and shared execution for the
    subscriptions that allow it (resolvers.shared)."""

    _heartbeat: Heartbeat | None = None

    async def serve(self) -> None:
        await BaseGraphQLTransportWSHandler.handle(self)

    async def shutdown(self) -> None:
        if self._heartbeat is not None:
            with suppress(*SOCKET_GONE):
                await self._heartbeat.stop()
        await super().shutdown()

    async def handle_message(self, message: Any) -> None:
        problem = transport_ws_violation(message)
        if problem is not None:
            await self.handle_invalid_message(problem)
            return
        if message["type"] == "connection_init" and message.get("payload") is None:
            message.pop("payload", None)  # null is allowed; Strawberry wants an object or nothing
        await super().handle_message(message)

    async def handle_connection_init(self, message: ConnectionInitMessage) -> None:
        try:
            await super().handle_connection_init(message)
        except ConnectionRefused as refused:
            await self.refuse_connection(refused)
            return
        finally:
            # Strawberry cancelled its init-timeout task but keeps it, and with it the
            # CancelledError and frames (~2.5 KB per socket): let it go.
            self.connection_init_timeout_task = None
        if self.connection_acknowledged and self._heartbeat is None:
            self._start_heartbeat()

    async def handle_pong(self, message: PongMessage) -> None:
        if self._heartbeat is not None:
            self._heartbeat.pong()

    async def handle_complete(self, message: CompleteMessage) -> None:
        self.bucket.take()  # spends from the budget, but is never refused: it only frees
        await super().handle_complete(message)

    async def handle_subscribe(self, message: SubscribeMessage) -> None:
        operation_id = message["id"]
        if not self.connection_acknowledged or operation_id in self.operations:
            await super().handle_subscribe(message)  # 4401 or 4409, in Strawberry's words
            return
        refusal = self.refusal(len(self.operations))
        if refusal is not None:
            await self.send_message({"id": operation_id, "type": "error", "payload": [refusal.formatted]})
            return
        payload = message["payload"]
        plan = self.view.planner.plan(payload["query"], payload.get("variables"), payload.get("operationName"))
        if plan is None:
            await super().handle_subscribe(message)  # Strawberry's path: its errors and close codes
            return
        # The plan's query and variables (shared by every subscriber of the plan), not the
        # message's: the decoded message is then freed.
        operation: Operation[GatewayContext, None] = Operation(
            self, operation_id, plan.key[0], plan.variables, plan.operation_name
        )
        operation.task = asyncio.create_task(self._run_shared(operation, plan))
        operation.task.add_done_callback(self._task_done)
        self.operations[operation.id] = operation

    async def run_operation(self, operation: Operation[GatewayContext, None]) -> None:
        OPERATION_ID.set(operation.id)  # this task's logs
        with self.operation_writes():
            await super().run_operation(operation)

    async def cleanup_operation(self, operation_id: str) -> None:
        operation = self.operations.get(operation_id)
        if operation is not None:
            # Nothing more goes out for it, even before its task has unwound.
            operation.completed = True
        await super().cleanup_operation(operation_id)

    async def complete_all(self) -> None:
        for operation in await self._cancel_operations():
            with suppress(*SOCKET_GONE):
                await self.send_message({"id": operation.id, "type": "complete"})

    async def cancel_all(self) -> list[str]:
        return [operation.id for operation in await self._cancel_operations()]

    async def say_slow_consumer(self, operation_ids: list[str]) -> None:
        """Each operation gets the error and `complete`; the connection stays open for new ones."""
        error = slow_consumer_error()
        for operation_id in operation_ids:
            await self.send_message(error_next(operation_id, error))
            await self.send_message({"id": operation_id, "type": "complete"})

    async def _cancel_operations(self) -> list[Operation[GatewayContext, None]]:
        """Cancel every operation and wait for them; the ones that had not completed."""
        operations = [operation for operation in self.operations.values() if not operation.completed]
        for operation_id in list(self.operations):
            await self.cleanup_operation(operation_id)
        tasks = [operation.task for operation in operations if operation.task is not None]
        if tasks:
            await asyncio.wait(tasks)
        return operations

    def _start_heartbeat(self) -> None:
        settings = self.view.runtime.settings
        if settings.ping_interval <= 0:
            return
        self._heartbeat = Heartbeat(settings.ping_interval, settings.ping_timeout, self._ping, self._ping_timed_out)
        self._heartbeat.start()

    async def _ping(self) -> None:
        with suppress(*SOCKET_GONE):  # a socket that is gone sends no pong either: it times out
            await self.send_message({"type": "ping"})

    async def _ping_timed_out(self) -> None:
        self.view.runtime.metrics.ping_timeouts += 1
        logger.info("closing a connection that did not answer a ping in time")
        await self.abandon(closes.PING_TIMEOUT)

    async def _run_shared(self, operation: Operation[GatewayContext, None], plan: SharedPlan) -> None:
        OPERATION_ID.set(operation.id)
        with self.operation_writes() as writer:
            try:
                payloads = await open_shared(self.context, self.view.planner, plan)
            except GraphQLError as error:
                await operation.send_initial_errors([error])
                return
            except Exception as error:  # noqa: BLE001 (a bug: log it; the client learns only that it failed)
                await self.handle_task_exception(error)
                await operation.send_initial_errors([GraphQLError(MASKED_MESSAGE)])
                return
            try:
                await self._send_payloads(operation, payloads, writer)
            except GraphQLError as error:
                await self._end_with(operation, error)
            except SOCKET_GONE:
                return
            except Exception as error:  # noqa: BLE001 (a bug: log it, end the operation cleanly)
                await self.handle_task_exception(error)
                await self._end_with(operation, GraphQLError(MASKED_MESSAGE))
            finally:
                await payloads.aclose()
            await operation.send_operation_message({"id": operation.id, "type": "complete"})

    async def _send_payloads(
        self, operation: Operation[GatewayContext, None], payloads: AsyncIterator[str], writer: Writer
    ) -> None:
        """Write each `next` frame; the cursor moves when the next payload is asked for.
        `send_message`'s deadline, inlined: this loop runs once per event per subscriber."""
        head = f'{{"id":{orjson.dumps(operation.id).decode()},"type":"next","payload":'
        send = asgi_send(self.websocket.ws)
        clock = asyncio.get_running_loop().time
        try:
            async for payload in payloads:
                if operation.completed:  # the client completed it while we waited for this event
                    return
                writer.since = clock()
                await send({"type": "websocket.send", "text": f"{head}{payload}}}"})
                writer.since = 0.0
        except asyncio.CancelledError:
            writer.since = 0.0
            if not stalled(writer):
                raise
            await self.slow_consumer()

    async def _end_with(self, operation: Operation[GatewayContext, None], error: GraphQLError) -> None:
        """A `next` with the error, then `complete` (under the deadline, as every write)."""
        await operation.send_operation_message(error_next(operation.id, error))
        await operation.send_operation_message({"id": operation.id, "type": "complete"})


class LegacyWSHandler(_ConnectionHooks, BaseGraphQLWSHandler[GatewayContext, None]):  # type: ignore[misc]  # view: our router subclass
    """Legacy graphql-ws (subscriptions-transport-ws). A malformed message gets
    `connection_error` with the reason, then the socket closes 4400."""

    _init_received = False
    _init_timer: asyncio.Task[None] | None = None

    async def serve(self) -> None:
        """Strawberry's loop, except that a message that is not JSON is refused (Strawberry skips it)."""
        self._init_timer = asyncio.create_task(self._close_unless_initialised())
        try:
            async for message in self.websocket.iter_json():
                await self.handle_message(message)
        except NonTextMessageReceived:
            await self._refuse(closes.NOT_TEXT.reason)
        except NonJsonMessageReceived:
            await self._refuse(closes.NOT_JSON.reason)
        except WebSocketDisconnected:
            pass
        finally:
            for task in (self._init_timer, self.keep_alive_task):
                if task is not None:
                    task.cancel()
                    with suppress(BaseException):
                        await task
            await self.cleanup()

    async def handle_message(self, message: Any) -> None:
        problem = legacy_ws_violation(message)
        if problem is not None:
            await self._refuse(problem)
            return
        await super().handle_message(message)

    async def handle_connection_init(self, message: LegacyInitMessage) -> None:
        """Strawberry's, except for the closes: a second init 4429, a refused token 4403
        (Strawberry closes with 1011, which reads as a server crash), a limit 4429."""
        if self._init_received:
            await self.close(closes.TOO_MANY_INITS)
            return
        self._init_received = True
        if self._init_timer is not None:
            self._init_timer.cancel()
        self.context.connection_params = message.get("payload")
        try:
            await self.view.on_ws_connect(self.context)
        except ConnectionRejectionError as rejection:
            await self.send_message({"type": "connection_error", "payload": rejection.payload})
            await self.close(closes.FORBIDDEN)
            return
        except ConnectionRefused as refused:
            await self.send_message({"type": "connection_error", "payload": {"message": refused.reason}})
            await self.refuse_connection(refused)
            return
        await self.send_message({"type": "connection_ack"})
        self.connection_acknowledged = True
        if self.keep_alive:
            self.keep_alive_task = asyncio.create_task(self.handle_keep_alive())

    async def handle_start(self, message: StartMessage) -> None:
        operation_id = message["id"]
        if self.connection_acknowledged:
            # A start with an active id restarts that operation, as subscriptions-transport-ws does.
            active = len(self.tasks) - (operation_id in self.tasks)
            refusal = self.refusal(active)
            if refusal is not None:
                await self.send_message({"type": "error", "id": operation_id, "payload": refusal.formatted})
                return
        await super().handle_start(message)

    async def handle_stop(self, message: StopMessage) -> None:
        self.bucket.take()  # spends from the budget, never refused
        await super().handle_stop(message)

    async def handle_async_results(
        self, operation_id: str, query: str, operation_name: str | None, variables: dict[str, object] | None
    ) -> None:
        OPERATION_ID.set(operation_id)  # this task's logs
        with self.operation_writes():
            await super().handle_async_results(operation_id, query, operation_name, variables)

    async def complete_all(self) -> None:
        await self.cleanup()  # cancelled operations send their own `complete`

    async def cancel_all(self) -> list[str]:
        running = list(self.tasks)
        await self.cleanup()
        return running

    async def say_slow_consumer(self, operation_ids: list[str]) -> None:
        """Each operation gets an `error` (what subscriptions-transport-ws hands to the
        operation's observer; `connection_error` reaches only a connection callback), then 1013."""
        payload = slow_consumer_error().formatted
        for operation_id in operation_ids:
            await self.send_message({"type": "error", "id": operation_id, "payload": payload})
        await self.close(closes.SLOW_CONSUMER)

    async def _refuse(self, reason: str) -> None:
        with suppress(*SOCKET_GONE):
            await self.send_message({"type": "connection_error", "payload": {"message": close_reason(reason)}})
            await self.websocket.close(CloseCode.BAD_REQUEST, reason)

    async def _close_unless_initialised(self) -> None:
        await asyncio.sleep(self.view.runtime.settings.init_timeout)
        if not self._init_received:
            with suppress(*SOCKET_GONE):
                await self.close(closes.INIT_TIMEOUT)
