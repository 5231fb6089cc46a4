"""The /graphql WebSocket handlers: Strawberry's, held to the protocols and our limits.

Both handlers add, around Strawberry's: connection accounting and the graceful
drain; a check of every client message's shape (`gateway.protocol`) before
Strawberry reads it; the subscribe/complete rate and the subscription limit,
answered with coded errors; the socket's ids in the logs. graphql-transport-ws
also gets server pings (`gateway.heartbeat`) and the shared-execution fast
path (`resolvers.shared`); legacy graphql-ws gets the init timeout and the
refusal of a second `connection_init` that Strawberry only applies to the
newer protocol, and its `ka` keep-alive.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import suppress
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

from resolvers.context import GatewayContext
from resolvers.shared import SharedPlan, open_shared
from schema.errors import MASKED_MESSAGE, ErrorCode, GatewayError

from . import closes
from .closes import FINAL_WRITE_TIMEOUT, Close, CloseCode, close_reason
from .heartbeat import Heartbeat
from .limits import ConnectionRefused, Limit, TokenBucket, rate_limited, too_many_subscriptions
from .logs import OPERATION_ID, new_connection_id
from .protocol import legacy_ws_violation, transport_ws_violation
from .watchdog import stalled

if TYPE_CHECKING:
    from .transport import GatewayRouter

logger = logging.getLogger(__name__)
SOCKET_GONE = (RuntimeError, OSError, WebSocketDisconnect, WebSocketDisconnected)


class SlowConsumerError(Exception):
    """A frame could not be written within `slow_consumer_timeout`."""


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
    """What both handlers add: accounting, drain, rate limit, and giving up on a dead peer."""

    view: GatewayRouter
    context: GatewayContext
    websocket: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = self.view.runtime.settings
        self.bucket = TokenBucket(settings.subscribe_rate, settings.subscribe_burst)
        self._abandoned = False
        self._task: asyncio.Task[Any] | None = None

    async def handle(self) -> None:
        new_connection_id()
        self._task = asyncio.current_task()
        connections = self.view.runtime.connections
        connections.add(self)
        try:
            await self.serve()
        except asyncio.CancelledError:
            # `abandon` cancelled us to stop waiting on a dead peer: that ends the connection
            # normally; any other cancellation goes on.
            if not self._abandoned or self._task is None or self._task.uncancel() > 0:
                raise
        finally:
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

    async def cancel_all(self) -> None:
        """End every operation without a word to the client (their groups are released)."""
        raise NotImplementedError

    def refusal(self, active: int) -> GatewayError | None:
        """Why a new operation may not start: the rate, then the subscription limit."""
        metrics, settings = self.view.runtime.metrics, self.view.runtime.settings
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

    async def abandon(self, ending: Close) -> None:
        """Give up on a peer that stopped answering: free its operations at once,
        then close without waiting on it. If even the close frame cannot be
        written (the peer stopped reading and the buffers are full), the
        handler ends anyway; the kernel releases the socket later."""
        await self.cancel_all()
        try:
            async with asyncio.timeout(FINAL_WRITE_TIMEOUT):
                await self.close(ending)
            return
        except TimeoutError:
            pass
        except SOCKET_GONE:
            return
        logger.info("not even the close frame could be written: ending the connection without it")
        self._abandoned = True
        if self._task is not None:
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

    async def cancel_all(self) -> None:
        await self._cancel_operations()

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
            await self._send_payloads(operation, payloads)
        except GraphQLError as error:
            await self._end_with(operation, error)
        except SlowConsumerError:
            await self._end_with(operation, GatewayError(ErrorCode.SLOW_CONSUMER, closes.SLOW_CONSUMER.reason))
            return
        except SOCKET_GONE:
            return
        except Exception as error:  # noqa: BLE001 (a bug: log it, end the operation cleanly)
            await self.handle_task_exception(error)
            await self._end_with(operation, GraphQLError(MASKED_MESSAGE))
        finally:
            await payloads.aclose()
        await operation.send_operation_message({"id": operation.id, "type": "complete"})

    async def _send_payloads(self, operation: Operation[GatewayContext, None], payloads: AsyncIterator[str]) -> None:
        """Write each `next` frame; the cursor moves when the next payload is asked for.
        A write pending longer than `slow_consumer_timeout` raises SlowConsumerError
        (the process's `WriteWatch` cancels it: no timer per write)."""
        head = f'{{"id":{orjson.dumps(operation.id).decode()},"type":"next","payload":'
        send = asgi_send(self.websocket.ws)
        watch = self.view.runtime.writes
        writer = watch.watch()
        clock = asyncio.get_running_loop().time
        try:
            async for payload in payloads:
                if operation.completed:  # the client completed it while we waited for this event
                    return
                writer.since = clock()
                await send({"type": "websocket.send", "text": f"{head}{payload}}}"})
                writer.since = 0.0
        except asyncio.CancelledError:
            if stalled(writer):
                raise SlowConsumerError from None
            raise
        finally:
            watch.forget(writer)

    async def _end_with(self, operation: Operation[GatewayContext, None], error: GraphQLError) -> None:
        """A `next` with the error, then `complete`; a client that reads nothing gets its socket closed."""
        if isinstance(error, GatewayError) and error.code == ErrorCode.SLOW_CONSUMER:
            self.view.runtime.metrics.delivery.slow_consumers += 1
        try:
            async with asyncio.timeout(FINAL_WRITE_TIMEOUT):
                await operation.send_operation_message(
                    {"id": operation.id, "type": "next", "payload": {"data": None, "errors": [error.formatted]}}
                )
                await operation.send_operation_message({"id": operation.id, "type": "complete"})
        except TimeoutError:
            logger.info("closing a connection that stopped reading")
            with suppress(*SOCKET_GONE, TimeoutError):
                async with asyncio.timeout(FINAL_WRITE_TIMEOUT):
                    await self.close(closes.SLOW_CONSUMER)


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
        await super().handle_async_results(operation_id, query, operation_name, variables)

    async def complete_all(self) -> None:
        await self.cleanup()  # cancelled operations send their own `complete`

    async def cancel_all(self) -> None:
        await self.cleanup()

    async def _refuse(self, reason: str) -> None:
        with suppress(*SOCKET_GONE):
            await self.send_message({"type": "connection_error", "payload": {"message": close_reason(reason)}})
            await self.websocket.close(CloseCode.BAD_REQUEST, reason)

    async def _close_unless_initialised(self) -> None:
        await asyncio.sleep(self.view.runtime.settings.init_timeout)
        if not self._init_received:
            with suppress(*SOCKET_GONE):
                await self.close(closes.INIT_TIMEOUT)
