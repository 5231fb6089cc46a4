"""`/graphql` over WebSocket: graphql-transport-ws and legacy graphql-ws, both loops owned whole.

The gateway runs both protocols itself, on Strawberry's public schema API
(`Schema.stream` runs a document of any operation type, with the schema's
extensions) and the router's `on_ws_connect`; none of Strawberry's protocol
handlers is used or overridden. A socket:

- is accepted by `accept` after the origin check and the choice of subprotocol
  (the first the client offers that the gateway speaks; none: close 4406);
- is the adapter of its `gateway.connection.Connection` (identity and expiry,
  connection limits, stats, drain, write deadline);
- checks each client message's shape (`gateway.protocol`) before acting on it;
- runs a subscription on the shared fast path (`resolvers.shared`) when the
  planner takes its document, else through `Schema.stream`;
- writes every frame of an operation under the connection's write deadline;
  one that misses it ends all the connection's operations as a slow consumer
  (`GraphQLSocket.slow_consumer`).

graphql-transport-ws also gets server pings (`gateway.heartbeat`), legacy
graphql-ws its `ka` keep-alive. How each protocol ends an operation or a
connection (close codes and reasons) is data in `gateway.closes`.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable
from contextlib import aclosing, suppress
from typing import Any, ClassVar, Protocol

import orjson
from graphql import GraphQLError, GraphQLSyntaxError
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect
from strawberry.exceptions import ConnectionRejectionError
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL, GRAPHQL_WS_PROTOCOL
from strawberry.types.execution import ExecutionResult, PreExecutionError

from ..resolvers.context import GatewayContext, Principal
from ..resolvers.events import DeliveryStream
from ..resolvers.shared import Planner, SharedPlan, open_shared
from ..schema.errors import MASKED_MESSAGE, ErrorCode, GatewayError
from . import closes
from .auth import origin_allowed
from .closes import Close, close_reason
from .connection import Connection, current_writer
from .heartbeat import Heartbeat
from .limits import ConnectionRefused, Limit, TokenBucket, rate_limited, too_many_subscriptions
from .logs import OPERATION_ID, new_connection_id
from .protocol import legacy_ws_violation, transport_ws_violation
from .runtime import Runtime
from .watchdog import Writer, stalled
from .wsprotocol import RELEASE, SEND_NOW

logger = logging.getLogger(__name__)
SUBPROTOCOLS = (GRAPHQL_TRANSPORT_WS_PROTOCOL, GRAPHQL_WS_PROTOCOL)
SOCKET_GONE = (OSError, WebSocketDisconnect)  # uvicorn's ClientDisconnected is an OSError
RESULTS = frozenset({"next", "data"})  # the message types that carry an operation's results
INCREMENTAL_REFUSED = "Incremental delivery (@defer, @stream) is not supported over WebSockets"


class Host(Protocol):
    """What a socket needs of the `/graphql` router (gateway.transport.GatewayRouter)."""

    runtime: Runtime
    planner: Planner

    @property
    def schema(self) -> Any: ...

    def socket_context(self, websocket: WebSocket) -> GatewayContext: ...

    async def open_socket(self, context: GatewayContext, connection: Connection) -> None: ...


async def accept(router: Host, scope: Scope, receive: Receive, send: Send) -> GraphQLSocket | None:
    """A WebSocket on /graphql, accepted and ready to `run` (its caller awaits that directly,
    one frame less for the socket's life); None when it was refused and closed."""
    websocket = WebSocket(scope, receive, send)
    if not origin_allowed(websocket.headers, router.runtime.settings.allowed_origins):
        logger.warning("/graphql socket refused for origin %s", websocket.headers.get("origin"))
        await websocket.close(closes.CloseCode.POLICY_VIOLATION)  # before accept: the handshake gets 403
        return None
    offered = scope.get("subprotocols") or []
    protocol = next((name for name in offered if name in SUBPROTOCOLS), None)
    await websocket.accept(subprotocol=protocol)
    if protocol is None:
        await websocket.close(closes.NO_SUBPROTOCOL.code, closes.NO_SUBPROTOCOL.reason)
        return None
    socket_class = TransportSocket if protocol == GRAPHQL_TRANSPORT_WS_PROTOCOL else LegacySocket
    socket = socket_class(router, receive, send, router.socket_context(websocket))
    extensions = scope.get("extensions", {})
    socket.send_now, socket.release = extensions.get(SEND_NOW), extensions.get(RELEASE)
    return socket


def slow_consumer_error() -> GatewayError:
    return GatewayError(ErrorCode.SLOW_CONSUMER, closes.SLOW_CONSUMER.reason)


class Operation:
    """One operation of a socket: it is `completed` once nothing more may be written for it.
    Its `task` is dropped when the task ends: an ended task keeps the exception that ended
    it (a cancellation's too), whose traceback's frames refer back to the operation."""

    __slots__ = ("completed", "id", "task")

    def __init__(self, operation_id: str) -> None:
        self.id = operation_id
        self.completed = False
        self.task: asyncio.Task[None] | None = None

    def ended(self, task: asyncio.Task[None]) -> None:
        if self.task is task:
            self.task = None


class FramesNow:
    """What the fan-out writer calls to write an operation's result frame (`write_directly`):
    held, so that a pass makes one write per socket (`release`); False when the socket cannot
    take it now. An object, not a closure: it is kept for every subscription."""

    __slots__ = ("_head", "_operation", "_send_now", "_socket")

    def __init__(self, socket: GraphQLSocket, operation: Operation, head: str, send_now: Callable[[str, bool], bool]) -> None:
        self._socket = socket
        self._operation = operation
        self._head = head
        self._send_now = send_now

    def write(self, payload: str) -> bool:
        socket = self._socket
        if self._operation.completed or socket.closed or socket.ending is not None:
            return False
        return self._send_now(f"{self._head}{payload}}}", True)


class GraphQLSocket:
    """What both subprotocols share: the read loop, the connection's lifecycle, the
    subscribe rate and limit, the write deadline, and giving up on a peer."""

    def __init__(self, router: Host, receive: Receive, send: Send, context: GatewayContext) -> None:
        """`context.request` is the socket's Starlette WebSocket, until `connection_init` has read it."""
        self.router = router
        self.runtime = router.runtime
        self.context = context
        self.connection = Connection(self.runtime, self)
        settings = self.runtime.settings
        self.bucket = TokenBucket(settings.subscribe_rate, settings.subscribe_burst)
        self.operations: dict[str, Operation] = {}
        self.init_received = False
        self.acknowledged = False
        self.closed = False
        self._receive = receive  # the raw ASGI receive (once accepted, Starlette's adds nothing we use)
        self._send = send  # the raw ASGI send: every frame goes through `write`
        self.send_now: Callable[[str, bool], bool] | None = None  # the server's, when it has one (wsprotocol)
        self.release: Callable[[], None] | None = None  # ... and what writes the frames it held
        self._task: asyncio.Task[Any] | None = None
        self._init_timer: asyncio.TimerHandle | None = None
        self._jobs: set[asyncio.Task[None]] | None = None  # what timers started (an init-timeout close)
        self._abandoned = False
        self._serving = False
        self.ending: asyncio.Task[None] | None = None  # the slow-consumer ending, while it runs
        self._unfinished: list[str] | None = None  # operations whose own last message missed the deadline

    # -- the connection -------------------------------------------------------

    async def run(self) -> None:
        new_connection_id()
        self._task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        self._init_timer = loop.call_later(self.runtime.settings.init_timeout, self._spawn, self._init_timed_out)
        try:
            self._serving = True
            # Read client messages until the client goes or a malformed one is refused; the
            # last message is not kept while the next is awaited.
            while await self._take(await self._receive()):
                pass
        except asyncio.CancelledError:
            # `_drop` cancelled us to stop waiting on a peer that takes nothing: that ends
            # the connection normally; any other cancellation goes on.
            if not self._abandoned or self._task is None or self._task.uncancel() > 0:
                raise
        finally:
            self._serving = False
            if self._init_timer is not None:
                self._init_timer.cancel()
                self._init_timer = None  # a timer that fired keeps its callback, bound to this socket
            await self.stop_keepalive()
            await self.cancel_all()
            if self.ending is not None:
                await self.ending
            for job in list(self._jobs or ()):
                job.cancel()
            self.connection.close()
            self._task = None
            # Strawberry's execution contexts (one per operation on its path) are cyclic and
            # keep the context; without its socket it keeps nothing of the connection.
            self.context.request = None
            self.context.refresh = None  # it refers to the context and the connection

    async def _take(self, message: Any) -> bool:
        """Act on one ASGI message; False when the connection ends."""
        if message["type"] == "websocket.disconnect":
            return False
        if self.closed:
            return True  # closing: the client's close frame is on its way
        text = message.get("text")
        if text is None:
            await self.refuse(closes.NOT_TEXT.reason)
            return False
        try:
            decoded = orjson.loads(text)  # strict JSON (RFC 8259): no NaN, no lone surrogate
        except orjson.JSONDecodeError:
            await self.refuse(closes.NOT_JSON.reason)
            return False
        problem = self.violation(decoded)
        if problem is not None:
            await self.refuse(problem)
            return False
        await self.handle(decoded)
        return True

    result_type: ClassVar[str]  # the type of the messages that carry an operation's results

    def violation(self, message: Any) -> str | None:
        """What is wrong with the shape of a client message, or None."""
        raise NotImplementedError

    async def handle(self, message: dict[str, Any]) -> None:
        raise NotImplementedError

    async def refuse(self, reason: str) -> None:
        """A malformed message: close 4400 with what was wrong."""
        with suppress(*SOCKET_GONE):
            await self.close(closes.bad_request(reason))

    async def connection_init(self, payload: dict[str, Any] | None) -> bool:
        """Authenticate and open the connection, or close as the catalogue says; True when acknowledged."""
        self.init_received = True
        if self._init_timer is not None:
            self._init_timer.cancel()
            self._init_timer = None
        self.context.connection_params = payload
        try:
            await self.router.open_socket(self.context, self.connection)
        except ConnectionRejectionError as rejection:
            await self.rejected(rejection.payload)
            return False
        except ConnectionRefused as refused:
            await self.over_limit(refused)
            return False
        self._forget_handshake()
        self.context.refresh = self.refresh_token
        await self.send_message({"type": "connection_ack"})
        self.acknowledged = True
        return True

    async def refresh_token(self, token: str) -> Principal:
        """`refreshToken` on this socket: the connection's principal and the context's move together."""
        self.context.principal = await self.connection.refresh(token)  # or RefreshRefused: FORBIDDEN
        return self.context.principal

    def _forget_handshake(self) -> None:
        """Once the connection is open, its handshake's headers and query string (the token
        among them) have been read: they need not stay in memory for the socket's life."""
        websocket, self.context.request = self.context.request, None  # with what Starlette parsed
        if isinstance(websocket, WebSocket):
            scope = websocket.scope
            if isinstance(scope.get("headers"), list):
                scope["headers"].clear()  # uvicorn's scope, and Starlette's view of it
            scope["query_string"] = b""

    async def rejected(self, payload: object) -> None:
        await self.close(closes.FORBIDDEN)

    async def over_limit(self, refused: ConnectionRefused) -> None:
        await self.close(refused.ending)

    async def _init_timed_out(self) -> None:
        if not self.init_received:
            await self._last_words(self.close(closes.INIT_TIMEOUT), "the init-timeout close")

    async def stop_keepalive(self) -> None:
        """Stop what the protocol sends unasked (pings, `ka`)."""

    def _spawn(self, job: Callable[[], Awaitable[None]]) -> None:
        task = asyncio.get_running_loop().create_task(_call(job))
        if self._jobs is None:
            self._jobs = set()
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)

    # -- what the lifecycle calls (gateway.connection.Adapter) ----------------

    async def expire(self) -> None:
        await self._last_words(self.close(closes.TOKEN_EXPIRED), "the token-expired close")

    async def revoke(self) -> None:
        await self._last_words(self.close(closes.REVOKED), "the revoked close")

    async def drain(self) -> None:
        """End every operation (their cursors flushed), then say `complete` for each and close 1001."""
        ended = await self.cancel_all()
        await self._last_words(self._goodbye(ended, closes.SHUTDOWN), "the shutdown close")

    async def _goodbye(self, operation_ids: list[str], ending: Close) -> None:
        for operation_id in operation_ids:
            await self.send_message({"id": operation_id, "type": "complete"})
        await self.close(ending)

    # -- operations -----------------------------------------------------------

    def refusal(self, active: int) -> GatewayError | None:
        """Why a new operation may not start: the connection being ended, the rate, then the limit."""
        metrics, settings = self.runtime.metrics, self.runtime.settings
        if self.ending is not None:
            return slow_consumer_error()
        if not self.bucket.take():
            metrics.refused(Limit.SUBSCRIBE_RATE)
            return rate_limited(settings)
        if active >= settings.max_subscriptions_per_connection:
            metrics.refused(Limit.SUBSCRIPTIONS)
            return too_many_subscriptions(settings)
        return None

    def start(self, operation_id: str, job: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Run `job(operation, *args)` as the operation's task."""
        operation = Operation(operation_id)
        self.operations[operation_id] = operation
        task = operation.task = asyncio.get_running_loop().create_task(self._operation(operation, job, args))
        task.add_done_callback(operation.ended)

    async def _operation(self, operation: Operation, job: Callable[..., Awaitable[None]], args: tuple[Any, ...]) -> None:
        """An operation's task: its logs name it, its writes take the deadline."""
        OPERATION_ID.set(operation.id)
        with self.connection.writes():
            try:
                await job(operation, *args)
            except SOCKET_GONE:
                pass
            except Exception as error:  # noqa: BLE001 (a bug: log it, end the operation cleanly)
                await self.bug(error)
                with suppress(*SOCKET_GONE):
                    await self.send_operation_message(operation, {"id": operation.id, "type": "complete"})
            finally:
                if self.operations.get(operation.id) is operation:
                    del self.operations[operation.id]

    async def stream(self, query: str, variables: dict[str, Any] | None, operation_name: str | None) -> Any:
        """The results of a document the fast path declined: Strawberry's execution."""
        return await self.router.schema.stream(
            query, variable_values=variables, context_value=self.context, operation_name=operation_name
        )

    async def run_document(
        self, operation: Operation, query: str, variables: dict[str, Any] | None, operation_name: str | None
    ) -> None:
        """A document the fast path declined, run by Strawberry: each result a `result_type`
        message, then `complete`; an error before execution is the operation's error."""
        results = await self.stream(query, variables, operation_name)
        async with aclosing(results):
            first = True
            async for result in results:
                if first and isinstance(result, PreExecutionError):
                    assert result.errors
                    await self.pre_execution_error(operation, result.errors)
                    return
                if not isinstance(result, ExecutionResult):
                    await self.operation_error(operation, [GraphQLError(INCREMENTAL_REFUSED)])
                    return
                first = False
                message = {"id": operation.id, "type": self.result_type, "payload": _payload(result)}
                await self.send_operation_message(operation, message)
        await self.send_operation_message(operation, {"id": operation.id, "type": "complete"})

    async def pre_execution_error(self, operation: Operation, errors: list[GraphQLError]) -> None:
        await self.operation_error(operation, errors)

    async def run_shared(self, operation: Operation, plan: SharedPlan) -> None:
        """A subscription the planner took: its cohort's rendered payloads, each written
        by the fan-out writer or by this task (`send_payloads`), then `complete`."""
        writer = current_writer()
        assert writer is not None
        try:
            payloads = await open_shared(self.context, self.router.planner, plan)
        except GraphQLError as error:
            await self.operation_error(operation, [error])
            return
        except Exception as error:  # noqa: BLE001 (a bug: log it; the client learns only that it failed)
            await self.bug(error)
            await self.operation_error(operation, [GraphQLError(MASKED_MESSAGE)])
            return
        # Interned: the operations of clients that number them alike (`1`, `2`...) share one.
        head = sys.intern(f'{{"id":{orjson.dumps(operation.id).decode()},"type":"{self.result_type}","payload":')
        try:
            await self.send_payloads(operation, payloads, head, writer)
        except GraphQLError as error:
            await self._end_with(operation, error)
        except SOCKET_GONE:
            return
        except Exception as error:  # noqa: BLE001 (a bug: log it, end the operation cleanly)
            await self.bug(error)
            await self._end_with(operation, GraphQLError(MASKED_MESSAGE))
        finally:
            await payloads.aclose()
        await self.send_operation_message(operation, {"id": operation.id, "type": "complete"})

    async def _end_with(self, operation: Operation, error: GraphQLError) -> None:
        """End an operation with an error it can resume from, as Strawberry's path does: a
        result (`next`, `data`) carrying the error, then `complete`."""
        await self.send_operation_message(operation, error_next(operation.id, error, self.result_type))
        await self.send_operation_message(operation, {"id": operation.id, "type": "complete"})

    async def operation_error(self, operation: Operation, errors: list[GraphQLError]) -> None:
        """End the operation with an `error` message, as the protocol shapes it."""
        raise NotImplementedError

    def forget(self, operation_id: str) -> Operation | None:
        """Nothing more goes out for this operation; its task, if running, is cancelled."""
        operation = self.operations.pop(operation_id, None)
        if operation is None:
            return None
        operation.completed = True
        if operation.task is not None:
            operation.task.cancel()
        return operation

    async def cancel_all(self) -> list[str]:
        """End every operation without a word to the client (their groups are released);
        the ids of those that were running."""
        operations = [self.forget(operation_id) for operation_id in list(self.operations)]
        tasks = [operation.task for operation in operations if operation is not None and operation.task is not None]
        if tasks:
            await asyncio.wait(tasks)
        return [operation.id for operation in operations if operation is not None]

    async def say_slow_consumer(self, operation_ids: list[str]) -> None:
        """Tell the client that these operations ended as a slow consumer, as its protocol can."""
        raise NotImplementedError

    async def bug(self, error: Exception) -> None:
        """An exception no client caused: logged; the client learns only that its operation failed."""
        logger.error("operation failed", exc_info=error)

    # -- writing --------------------------------------------------------------

    async def write(self, text: str) -> None:
        if self.closed:
            raise WebSocketDisconnect(closes.CloseCode.GOING_AWAY)
        await self._send({"type": "websocket.send", "text": text})

    async def close(self, ending: Close) -> None:
        """Close the socket as the catalogue says (once)."""
        if self.closed:
            return
        self.closed = True
        await self._send({"type": "websocket.close", "code": int(ending.code), "reason": close_reason(ending.reason)})

    async def send_message(self, message: dict[str, Any]) -> None:
        """Every message the socket writes. An operation's are written under the write deadline,
        without a timer per write: the process's `WriteWatch` cancels a write pending too long,
        which ends the connection's operations (`slow_consumer`)."""
        writer = current_writer()
        if writer is None:
            await self.write(orjson.dumps(message).decode())
            return
        if self.ending is not None:
            # The ending speaks for every operation: a result waits to be cancelled with its
            # operation (so it is neither written nor acknowledged); anything else is dropped.
            if message["type"] in RESULTS:
                await self._cancelled_by_ending()
            return
        writer.since = asyncio.get_running_loop().time()
        try:
            await self.write(orjson.dumps(message).decode())
        except asyncio.CancelledError:
            if not stalled(writer):
                raise
            if message["type"] not in RESULTS:  # its own last message: the operation is already forgotten
                self._unfinished = [*(self._unfinished or ()), message["id"]]
            await self.slow_consumer()
        finally:
            writer.since = 0.0

    async def send_operation_message(self, operation: Operation, message: dict[str, Any]) -> None:
        """A message of a running operation; its last one (`complete`, `error`) frees its id first."""
        if operation.completed:
            return
        if message["type"] in ("complete", "error"):
            operation.completed = True
            if self.operations.get(operation.id) is operation:
                del self.operations[operation.id]
        await self.send_message(message)

    async def send_payloads(
        self, operation: Operation, payloads: DeliveryStream[str], head: str, writer: Writer
    ) -> None:
        """Write each result frame of the fast path (`head` + payload + `}`); the cursor moves
        when the next payload is asked for. `send_message`'s deadline, inlined: this loop runs
        once per event per subscriber, unless the shared reader writes the frames itself
        (`write_directly`): it does while this loop waits with nothing queued and the socket
        takes a frame without waiting, so a subscriber that keeps up costs no task wake-up."""
        if self.send_now is not None:
            payloads.write_directly(FramesNow(self, operation, head, self.send_now).write, self.release)
        send = self._send
        clock = asyncio.get_running_loop().time
        try:
            while True:
                idle = payloads.idle()
                if idle is not None:
                    await idle  # waits here, not four calls deeper in `__anext__`
                    continue
                try:
                    payload = await payloads.__anext__()
                except StopAsyncIteration:
                    return
                if operation.completed:  # the client completed it while we waited for this event
                    return
                if self.closed:
                    raise WebSocketDisconnect(closes.CloseCode.GOING_AWAY)
                writer.since = clock()
                await send({"type": "websocket.send", "text": f"{head}{payload}}}"})
                writer.since = 0.0
        except asyncio.CancelledError:
            writer.since = 0.0
            if not stalled(writer):
                raise
            await self.slow_consumer()

    # -- slow consumers and dead peers ----------------------------------------

    async def slow_consumer(self) -> None:
        """A write of this operation missed the deadline: end all the connection's operations
        as a slow consumer (once, counted once), and wait to be cancelled with them. The write
        that missed wrote nothing, so its entry stays unacknowledged."""
        if self.ending is None:
            self.connection.ended_slow()
            self.ending = asyncio.create_task(self._end_slow_consumer())
        await self._cancelled_by_ending()

    async def _cancelled_by_ending(self) -> None:
        """Wait for the ending to cancel this operation with the others."""
        assert self.ending is not None
        await asyncio.shield(self.ending)
        raise asyncio.CancelledError  # not cancelled with the others (it was already ending): end anyway

    async def _end_slow_consumer(self) -> None:
        # Made in an operation's task, this one writes as the connection: no deadline, no operation.
        self.connection.unwatched()
        OPERATION_ID.set(None)
        try:
            ended = await self.cancel_all()
            unfinished = [operation_id for operation_id in self._unfinished or () if operation_id not in ended]
            await self._last_words(self.say_slow_consumer(ended + unfinished), "the slow-consumer error")
        finally:
            self._unfinished = None
            self.ending = None
            self.connection.slow = False  # graphql-transport-ws goes on: a later stall counts again

    async def abandon(self, ending: Close) -> None:
        """Give up on a peer that stopped answering: free its operations at once,
        then close without waiting on it."""
        await self.cancel_all()
        await self._last_words(self.close(ending), "the close frame")

    async def _last_words(self, words: Awaitable[None], what: str) -> None:
        """`words` written in time, or the connection dropped without them: a peer that
        stopped reading is never left holding it open."""
        if not await self.connection.last_words(words, SOCKET_GONE):
            logger.info("not even %s could be written: ending the connection without it", what)
            self._drop()

    def _drop(self) -> None:
        """End the socket's task without a close frame: its operations are already freed;
        uvicorn closes the transport once the peer has taken what was buffered for it."""
        if self._serving and self._task is not None:
            self._abandoned = True
            self._task.cancel()


class TransportSocket(GraphQLSocket):
    """graphql-transport-ws (https://github.com/enisdenjo/graphql-ws/blob/master/PROTOCOL.md),
    with server pings and shared execution for the subscriptions that allow it."""

    def violation(self, message: Any) -> str | None:
        return transport_ws_violation(message)

    result_type = "next"
    _heartbeat: Heartbeat | None = None

    async def handle(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "connection_init":
            await self._connection_init(message.get("payload"))
        elif kind == "ping":
            await self.send_message({"type": "pong"})
        elif kind == "pong":
            if self._heartbeat is not None:
                self._heartbeat.pong()
        elif kind == "subscribe":
            await self._subscribe(message["id"], message["payload"])
        else:  # complete
            self.bucket.take()  # spends from the budget, but is never refused: it only frees
            self.forget(message["id"])

    async def _connection_init(self, payload: dict[str, Any] | None) -> None:
        if self.init_received:
            await self.close(closes.TOO_MANY_INITS)
            return
        if await self.connection_init(payload or {}):
            self._start_heartbeat()

    async def _subscribe(self, operation_id: str, payload: dict[str, Any]) -> None:
        if not self.acknowledged:
            await self.close(closes.UNAUTHORIZED)
            return
        if operation_id in self.operations:
            await self.close(closes.duplicate_operation(operation_id))
            return
        refusal = self.refusal(len(self.operations))
        if refusal is not None:
            await self.send_message({"id": operation_id, "type": "error", "payload": [refusal.formatted]})
            return
        query, variables, name = payload["query"], payload.get("variables"), payload.get("operationName")
        plan = self.router.planner.plan(query, variables, name)
        if plan is None:
            self.start(operation_id, self.run_document, query, variables, name)
        else:  # the decoded message is not kept: the plan holds what every subscriber of it shares
            self.start(operation_id, self.run_shared, plan)

    async def pre_execution_error(self, operation: Operation, errors: list[GraphQLError]) -> None:
        """A document that cannot be parsed closes the socket 4400, as the protocol says;
        any other error before execution (validation, an operation the document does not
        define) is the operation's `error`."""
        if isinstance(errors[0], GraphQLSyntaxError):
            self.forget(operation.id)
            await self.close(closes.bad_request(errors[0].message))
            return
        await self.operation_error(operation, errors)

    async def operation_error(self, operation: Operation, errors: list[GraphQLError]) -> None:
        await self.send_operation_message(
            operation, {"id": operation.id, "type": "error", "payload": [error.formatted for error in errors]}
        )

    async def say_slow_consumer(self, operation_ids: list[str]) -> None:
        """Each operation gets the error and `complete`; the connection stays open for new ones."""
        error = slow_consumer_error()
        for operation_id in operation_ids:
            await self.send_message(error_next(operation_id, error))
            await self.send_message({"id": operation_id, "type": "complete"})

    def _start_heartbeat(self) -> None:
        settings = self.runtime.settings
        if settings.ping_interval <= 0 or self._heartbeat is not None:
            return
        self._heartbeat = Heartbeat(settings.ping_interval, settings.ping_timeout, self._ping, self._ping_timed_out)
        self._heartbeat.start()

    async def stop_keepalive(self) -> None:
        heartbeat, self._heartbeat = self._heartbeat, None  # it holds this socket's methods
        if heartbeat is not None:
            with suppress(*SOCKET_GONE):
                await heartbeat.stop()

    async def _ping(self) -> None:
        with suppress(*SOCKET_GONE):  # a socket that is gone sends no pong either: it times out
            await self.send_message({"type": "ping"})

    async def _ping_timed_out(self) -> None:
        self.runtime.metrics.ping_timeouts += 1
        logger.info("closing a connection that did not answer a ping in time")
        await self.abandon(closes.PING_TIMEOUT)


class LegacySocket(GraphQLSocket):
    """Legacy graphql-ws (subscriptions-transport-ws). A malformed message gets
    `connection_error` with the reason, then the socket closes 4400."""

    def violation(self, message: Any) -> str | None:
        return legacy_ws_violation(message)

    result_type = "data"
    _keepalive: asyncio.Task[None] | None = None

    async def handle(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "connection_init":
            await self._connection_init(message.get("payload"))
        elif kind == "connection_terminate":
            await self.close(closes.TERMINATED)
        elif kind == "start":
            await self._start(message["id"], message["payload"])
        else:  # stop
            self.bucket.take()  # spends from the budget, never refused
            await self._stop(message["id"])

    async def refuse(self, reason: str) -> None:
        with suppress(*SOCKET_GONE):
            await self.send_message({"type": "connection_error", "payload": {"message": close_reason(reason)}})
            await super().refuse(reason)

    async def _connection_init(self, payload: dict[str, Any] | None) -> None:
        """A second init closes 4429, a refused token 4403 after `connection_error`, a limit 4429."""
        if self.init_received:
            await self.close(closes.TOO_MANY_INITS)
            return
        if await self.connection_init(payload) and self.runtime.settings.ping_interval > 0:
            self._keepalive = asyncio.get_running_loop().create_task(self._keep_alive())

    async def rejected(self, payload: object) -> None:
        await self.send_message({"type": "connection_error", "payload": payload})
        await super().rejected(payload)

    async def revoke(self) -> None:
        """`connection_error` (what subscriptions-transport-ws hands to the connection's
        callback), then 4403."""

        async def words() -> None:
            await self.send_message({"type": "connection_error", "payload": {"message": closes.REVOKED.reason}})
            await self.close(closes.REVOKED)

        await self._last_words(words(), "the revoked close")

    async def over_limit(self, refused: ConnectionRefused) -> None:
        await self.send_message({"type": "connection_error", "payload": {"message": refused.reason}})
        await super().over_limit(refused)

    async def _keep_alive(self) -> None:
        with suppress(*SOCKET_GONE):
            while True:
                await self.send_message({"type": "ka"})
                await asyncio.sleep(self.runtime.settings.ping_interval)

    async def stop_keepalive(self) -> None:
        keepalive, self._keepalive = self._keepalive, None  # its coroutine refers to this socket
        if keepalive is not None:
            keepalive.cancel()
            with suppress(asyncio.CancelledError):
                await keepalive

    async def _start(self, operation_id: str, payload: dict[str, Any]) -> None:
        if not self.acknowledged:
            await self.close(closes.UNAUTHORIZED)
            return
        # A start with an active id restarts that operation, as subscriptions-transport-ws does.
        refusal = self.refusal(len(self.operations) - (operation_id in self.operations))
        if refusal is not None:
            await self.send_message({"type": "error", "id": operation_id, "payload": refusal.formatted})
            return
        await self._stop(operation_id)
        query, variables, name = payload["query"], payload.get("variables"), payload.get("operationName")
        plan = self.router.planner.plan(query, variables, name)
        if plan is None:
            self.start(operation_id, self.run_document, query, variables, name)
        else:
            self.start(operation_id, self.run_shared, plan)

    async def _stop(self, operation_id: str) -> None:
        """End a running operation; its `complete` is written once its task has ended."""
        operation = self.forget(operation_id)
        if operation is None:
            return
        if operation.task is not None:
            await asyncio.wait([operation.task])
        await self.send_message({"type": "complete", "id": operation_id})

    async def operation_error(self, operation: Operation, errors: list[GraphQLError]) -> None:
        """subscriptions-transport-ws's `error` carries one error."""
        await self.send_operation_message(operation, {"type": "error", "id": operation.id, "payload": errors[0].formatted})

    async def say_slow_consumer(self, operation_ids: list[str]) -> None:
        """Each operation gets an `error` (what subscriptions-transport-ws hands to the
        operation's observer; `connection_error` reaches only a connection callback), then 1013."""
        payload = slow_consumer_error().formatted
        for operation_id in operation_ids:
            await self.send_message({"type": "error", "id": operation_id, "payload": payload})
        await self.close(closes.SLOW_CONSUMER)


def error_next(operation_id: str, error: GraphQLError, result_type: str = "next") -> dict[str, Any]:
    return {"id": operation_id, "type": result_type, "payload": {"data": None, "errors": [error.formatted]}}


def _payload(result: ExecutionResult) -> dict[str, Any]:
    payload: dict[str, Any] = {"data": result.data}
    if result.errors:
        payload["errors"] = [error.formatted for error in result.errors]
    if result.extensions:
        payload["extensions"] = result.extensions
    return payload


async def _call(job: Callable[[], Awaitable[None]]) -> None:
    await job()


__all__ = ["SOCKET_GONE", "LegacySocket", "TransportSocket", "accept"]
