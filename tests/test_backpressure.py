"""A client that stops reading never holds up the others, and its subscription ends."""

from __future__ import annotations

import json
import socket

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
from streaming import keys

pytestmark = pytest.mark.anyio
EVENTS = 1500
PAYLOAD = {"blob": "x" * 16000}


async def test_a_stalled_client_ends_with_slow_consumer_and_the_others_get_everything(
    make_gateway: object, redis_client: redis.Redis, tenant: str
) -> None:
    gateway: GatewayServer = make_gateway(slow_consumer_timeout=1.0)  # type: ignore[operator]
    token = make_token(tenant)
    sock = socket.create_connection(("127.0.0.1", gateway.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    async with websockets.connect(gateway.ws_url, sock=sock, subprotocols=[TRANSPORT_WS], max_queue=1) as raw:
        stalled = ProtocolClient(raw, TRANSPORT_WS)
        assert (await stalled.init({"token": token}))["type"] == "connection_ack"
        await stalled.subscribe("s", EVENTS_QUERY)
        async with connect(gateway.ws_url, token=token) as healthy:
            await healthy.subscribe("h", EVENTS_QUERY)
            await wait_until(lambda: gateway.hub.counters.tenant(tenant).subscriptions == 2)
            with redis_client.pipeline(transaction=False) as pipe:
                for n in range(EVENTS):
                    fields = {"event_type": "bulk", "tenant_id": tenant, "payload": json.dumps({**PAYLOAD, "n": n})}
                    pipe.xadd(keys.events_key(tenant), fields)
                ids = [i.decode() for i in pipe.execute()]
            received = [e["id"] for e in await healthy.collect("h", "events", EVENTS)]
            assert received == ids
            # the stalled one gave up within the timeout; only the healthy group is left
            await wait_until(lambda: gateway.hub.counters.tenant(tenant).subscriptions == 1, timeout=15)
            assert len(groups(redis_client, tenant)) == 1
