"""A client that stops reading never holds up the others, and its subscription ends with SLOW_CONSUMER."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import pytest
import redis
import websockets

from helpers import (
    EVENTS_QUERY,
    TRANSPORT_WS,
    GatewayServer,
    ProtocolClient,
    connect,
    make_token,
    metric,
    publish,
    wait_until,
)
from ragline.streaming import keys

pytestmark = pytest.mark.anyio
EVENTS = 1500
PAYLOAD = {"blob": "x" * 16000}
DURABLE_EVENTS = "subscription($d: String) { events(durable: $d) { id payload } }"
DURABLE_IDS = "subscription($d: String) { events(durable: $d) { id } }"
SLOW_CONSUMER_CLOSES = "ragline_slow_consumer_closes_total"
SLOW_CONSUMER_ERROR = {
    "message": "Slow consumer: the client did not read its events in time; resubscribe with 'after'",
    "extensions": {"code": "SLOW_CONSUMER"},
}


async def read_once_given_up(
    gateway: GatewayServer, client: ProtocolClient, given_up: int
) -> tuple[list[str], dict[str, Any]]:
    """Stay stalled until the gateway has given up on a client (`given_up` in all), then read
    everything the socket buffered: the ids of the events, and the first other message.

    The wait polls the process's own figure (cheap, every 5 ms): the gateway gives its last
    frames a second to be taken, so the reading must start well within it. The proof that it
    was a slow consumer is what the client reads and /metrics, not this figure."""
    figures = gateway.app.state.runtime.metrics.delivery
    try:
        await wait_until(lambda: figures.slow_consumers >= given_up, timeout=30, interval=0.005)
    except AssertionError:
        raise AssertionError("the gateway never gave up on the stalled client as a slow consumer") from None
    ids = []
    while (message := await client.recv())["type"] == "next" and "errors" not in message["payload"]:
        ids.append(message["payload"]["data"]["events"]["id"])
    return ids, message


async def test_a_stalled_client_ends_with_slow_consumer_and_the_others_get_everything(
    make_gateway: Any, redis_client: redis.Redis, tenant: str
) -> None:
    gateway: GatewayServer = make_gateway(slow_consumer_timeout=1.0)
    token = make_token(tenant)
    closes_before = await metric(gateway.port, SLOW_CONSUMER_CLOSES)
    sock = socket.create_connection(("127.0.0.1", gateway.port))
    # A small receive buffer, so that the ~4 MB the server's socket holds stall it; not under
    # loopback's MSS (64 KiB), or reading them back crawls at ~40 KB/s (silly-window avoidance).
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
    async with websockets.connect(gateway.ws_url, sock=sock, subprotocols=[TRANSPORT_WS], max_queue=1) as raw:
        stalled = ProtocolClient(raw, TRANSPORT_WS)
        assert (await stalled.init({"token": token}))["type"] == "connection_ack"
        await stalled.subscribe("s", DURABLE_EVENTS, {"d": "stalled"})
        async with connect(gateway.ws_url, token=token) as healthy:
            await healthy.subscribe("h", EVENTS_QUERY)
            await wait_until(lambda: gateway.hub.counters.tenant(tenant).subscriptions == 2)
            with redis_client.pipeline(transaction=False) as pipe:
                for n in range(EVENTS):
                    fields = {"event_type": "bulk", "tenant_id": tenant, "payload": json.dumps({**PAYLOAD, "n": n})}
                    pipe.xadd(keys.events_key(tenant), fields)
                ids = [i.decode() for i in pipe.execute()]
            healthy_events, (written, last) = await asyncio.gather(
                healthy.collect("h", "events", EVENTS), read_once_given_up(gateway, stalled, 1)
            )
            assert [e["id"] for e in healthy_events] == ids
        # What the stalled client finally reads: a prefix of the events, then the documented end.
        assert 0 < len(written) < EVENTS and written == ids[: len(written)], (len(written), written[-1:])
        assert last == {"id": "s", "type": "next", "payload": {"data": None, "errors": [SLOW_CONSUMER_ERROR]}}
        assert await stalled.recv() == {"id": "s", "type": "complete"}
    assert await metric(gateway.port, SLOW_CONSUMER_CLOSES) - closes_before == 1
    # Nothing after the last event written to it was acknowledged: its durable cursor resumes
    # right after that event, nothing lost, nothing repeated, up to one published since.
    fresh = publish(redis_client, tenant, "bulk")
    async with connect(gateway.ws_url, token=token) as resumed:
        await resumed.subscribe("r", DURABLE_IDS, {"d": "stalled"})
        rest = []
        while (event_id := (await resumed.next_data("r", "events"))["id"]) != fresh:
            rest.append(event_id)
        assert rest == ids[len(written) :], (len(rest), len(ids) - len(written))
