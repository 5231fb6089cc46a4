"""gql (Python): subscribe over WebSocket and print each order event as a JSON line.

pip install "gql[websockets]"
"""

import asyncio
import json
import os

from gql import Client, gql
from gql.transport.websockets import WebsocketsTransport

URL = os.environ.get("GATEWAY_URL", "http://127.0.0.1:8000/graphql").replace("http", "ws", 1)
ORDER_EVENTS = gql("subscription { orderEvents { id type orderId status occurredAt } }")


async def main() -> None:
    transport = WebsocketsTransport(
        url=URL,
        init_payload={"authorization": f"Bearer {os.environ['TOKEN']}"},
        # graphql-transport-ws; WebsocketsTransport.APOLLO_SUBPROTOCOL speaks the legacy graphql-ws
        subprotocols=[WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL],
    )
    async with Client(transport=transport) as session:
        async for data in session.subscribe(ORDER_EVENTS):
            print(json.dumps(data["orderEvents"]), flush=True)


asyncio.run(main())
