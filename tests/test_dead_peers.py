"""A peer that stops reading (a frozen tab, a phone gone off the network) is found by the
server's pings and cleaned up, even when its buffers are full and no close frame fits."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from contextlib import suppress

import pytest
import redis
import websockets

from helpers import (
    EVENTS_QUERY,
    TRANSPORT_WS,
    GatewayServer,
    ProtocolClient,
    connect,
    groups,
    make_token,
    wait_until,
)
from ragline.streaming import keys

pytestmark = pytest.mark.anyio
DURABLE_QUERY = "subscription($durable: String) { events(durable: $durable) { id } }"
BLOB = {"blob": "x" * 32000}
INTERVAL = 0.5


async def test_a_client_that_stops_reading_is_cleaned_up_within_two_ping_intervals(
    make_gateway: object, redis_client: redis.Redis, tenant: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ragline.gateway.sockets")
    # the slow-consumer timeout is long: only the pings can find this client in time
    gateway: GatewayServer = make_gateway(  # type: ignore[operator]
        ping_interval=INTERVAL, ping_timeout=INTERVAL, slow_consumer_timeout=60
    )
    token = make_token(tenant)
    sock = socket.create_connection(("127.0.0.1", gateway.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled_ws = await websockets.connect(
        gateway.ws_url, sock=sock, subprotocols=[TRANSPORT_WS], max_queue=1, close_timeout=0.5
    )
    try:
        stalled = ProtocolClient(stalled_ws, TRANSPORT_WS)
        assert (await stalled.init({"token": token}))["type"] == "connection_ack"
        await stalled.subscribe("eph", EVENTS_QUERY)
        await stalled.subscribe("dur", DURABLE_QUERY, {"durable": "wall"})
        async with connect(gateway.ws_url, token=token) as neighbour:
            await neighbour.subscribe("n", EVENTS_QUERY)
            await wait_until(lambda: gateway.hub.counters.tenant(tenant).subscriptions == 3)
            assert gateway.hub.counters.tenant(tenant).connections == 2
            received: list[str] = []
            reading = asyncio.create_task(_read_events(neighbour, received))  # and answering pings
            # From here on the stalled client reads nothing; these fill its socket buffers.
            stopped = time.monotonic()
            with redis_client.pipeline(transaction=False) as pipe:
                for n in range(200):
                    pipe.xadd(keys.events_key(tenant), _fields(tenant, n))
                ids = [i.decode() for i in pipe.execute()]
            await wait_until(lambda: gateway.hub.counters.tenant(tenant).subscriptions == 1, timeout=5)
            await wait_until(lambda: gateway.hub.counters.tenant(tenant).connections == 1, timeout=5)
            found_after = time.monotonic() - stopped
            assert found_after < 2 * INTERVAL + 2.0  # two intervals, plus the 1 s allowed for the close
            names = [g["name"] for g in groups(redis_client, tenant)]
            assert keys.durable_group(keys.EVENTS_KIND, tenant, "u1", "wall") in names  # kept for its return
            assert len(names) == 2  # the neighbour's and the durable one: the ephemeral group is gone
            assert gateway.app.state.runtime.metrics.ping_timeouts == 1
            await wait_until(lambda: len(received) == len(ids))
            assert received == ids  # the neighbour got everything, in order, throughout
            reading.cancel()
            with suppress(asyncio.CancelledError):
                await reading
        # its buffers were full: the gateway gave up on the close frame, and ended the connection anyway
        assert "not even the close frame could be written" in caplog.text
    finally:
        stalled_ws.transport.abort()


async def _read_events(client: ProtocolClient, received: list[str]) -> None:
    while True:
        received.append((await client.next_data("n", "events"))["id"])


def _fields(tenant: str, n: int) -> dict[str, str]:
    return {"event_type": "bulk", "tenant_id": tenant, "payload": json.dumps({**BLOB, "n": n})}
