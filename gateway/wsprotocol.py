"""uvicorn's sans-I/O WebSocket protocol, keeping less per connection.

An idle subscription's memory is mostly its connection's, and uvicorn keeps
things it no longer needs: an `asyncio.Queue` for incoming ASGI events (four
deques, ~3 KB, for what is a single-consumer inbox), an `asyncio.Event` for
"the transport takes writes" (a deque, ~0.8 KB, for what is waited on only
while a client does not read), and the handshake's request and response with
their headers (~3 KB; websockets' parser keeps the request for the socket's
whole life, too). `LeanWebSocketProtocol` replaces the first two with `Inbox`
and `Gate`, and drops the handshake, emptying the request's headers, once the
101 is sent; everything else is uvicorn's. It also offers the gateway's
fan-out writer a way to write a frame without awaiting (`SEND_NOW`). `ragline serve`, the tests
and the benchmark's reference servers all run it, so they share one transport.
"""

from __future__ import annotations

import asyncio
import struct
from collections import deque
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState
from websockets.http11 import Request
from websockets.protocol import State

# The scope extension holding `send_now(text) -> bool`: write a text frame at once, or
# say (False) that the socket cannot take one without waiting; ASGI's `send` awaits.
SEND_NOW = "ragline.websocket.send_now"
# ... and `release()`: with `send_now(text, hold=True)` the frames wait for it, so that a
# pass writing several frames to one socket makes one write (one system call) of them.
RELEASE = "ragline.websocket.release"
# Held frames are written once they reach this many bytes, so that the transport's high-water
# mark (asyncio's default: 64 KiB) still stops a pass that writes to a socket nobody reads.
HOLD_LIMIT = 16 * 1024


class Inbox:
    """What uvicorn uses of `asyncio.Queue` (put_nowait, get, empty), for one consumer,
    with its deque made only while events wait. `get` is not a coroutine: it returns the
    future the consumer awaits, which the next event is handed to, so a connection waiting
    for a message keeps no suspended call for it. An event handed to a consumer cancelled
    meanwhile is lost: uvicorn's consumer is the app's `receive`, which the gateway cancels
    only when the connection ends."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: deque[Any] | None = None
        self._waiter: asyncio.Future[Any] | None = None

    def put_nowait(self, item: Any) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(item)  # the consumer waits: nothing is queued
            return
        if self._items is None:
            self._items = deque()
        self._items.append(item)

    def get(self) -> asyncio.Future[Any]:
        waiter = asyncio.get_running_loop().create_future()
        if self._items:
            waiter.set_result(self._items.popleft())
            if not self._items:
                self._items = None
        else:
            self._waiter = waiter
        return waiter

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items) if self._items else 0


class Gate:
    """What uvicorn uses of `asyncio.Event` (set, clear, is_set, wait), with its waiters
    made only while somebody waits."""

    __slots__ = ("_open", "_waiters")

    def __init__(self) -> None:
        self._open = True
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._open

    def set(self) -> None:
        self._open = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._open = False

    async def wait(self) -> bool:
        if self._open:
            return True
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)
        return True


class LeanWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's protocol with a lighter inbox and gate, and no handshake kept after the 101."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = Inbox()  # type: ignore[assignment]
        self.writable = Gate()  # type: ignore[assignment]
        self._held: list[bytes] | None = None
        self._held_bytes = 0

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        if not self.close_sent:
            self.scope["extensions"][SEND_NOW] = self.send_now  # type: ignore[assignment]
            self.scope["extensions"][RELEASE] = self.release  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        scope = getattr(self, "scope", None)
        if scope is not None:
            scope["extensions"].pop(SEND_NOW, None)  # they refer back to the protocol
            scope["extensions"].pop(RELEASE, None)

    def send_now(self, text: str, hold: bool = False) -> bool:
        """What `send` does for a `websocket.send` of `text`, when it would not wait: the
        handshake done, no close sent, and the transport below its high-water mark. With
        `hold`, the frame is written by the next `release` (the caller's, before it yields)."""
        if not self.writable.is_set() or self.close_sent or self.disconnected or not self.handshake_complete:
            return False
        if self.initial_response is not None:
            return False
        conn = self.conn
        if conn.extensions or conn.expect_continuation_frame:  # none here (no deflate, no fragments)
            try:
                conn.send_text(text.encode())
            except InvalidState:
                return False
            data = b"".join(conn.data_to_send())
        elif conn.state is not State.OPEN:
            return False
        else:
            data = text_frame(text.encode())
        if not hold:
            self.release()
            self.transport.write(data)
            return True
        if self._held is None:
            self._held = [data]
        else:
            self._held.append(data)
        self._held_bytes += len(data)
        if self._held_bytes >= HOLD_LIMIT:
            self.release()
        return True

    def release(self) -> None:
        """Write the held frames, in one write."""
        held, self._held, self._held_bytes = self._held, None, 0
        if held is not None and not self.disconnected:
            self.transport.write(b"".join(held))

    def start_keepalive(self) -> None:
        # Called once the 101 response went out: the handshake is done with (the scope has
        # the headers the app reads). websockets' parser keeps the request until the socket
        # ends: its headers are emptied.
        if self.request is not None:
            self.request.headers.clear()
        self.request = None  # type: ignore[assignment]
        self.response = None  # type: ignore[assignment]
        super().start_keepalive()


def text_frame(payload: bytes) -> bytes:
    """A final, unmasked text frame (RFC 6455 5.2), as websockets' `send_text` writes it for
    a server with no extension, without its per-frame objects: it runs once per delivery."""
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 65536:
        return _SHORT.pack(0x81, 126, size) + payload
    return _LONG.pack(0x81, 127, size) + payload


_SHORT = struct.Struct("!BBH")
_LONG = struct.Struct("!BBQ")


def websocket_options() -> dict[str, Any]:
    """uvicorn options for the gateway's WebSockets (and the benchmark's references)."""
    return {"ws": LeanWebSocketProtocol, "ws_per_message_deflate": False}


__all__ = ["RELEASE", "SEND_NOW", "Gate", "Inbox", "LeanWebSocketProtocol", "websocket_options"]
