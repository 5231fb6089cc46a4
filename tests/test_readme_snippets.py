"""The README's client snippets are the files in tests/clients/snippets, and they work.

The JavaScript ones run in tests/clients/snippets.test.mjs (test_node_clients.py);
the Python one runs here, as a user would: `GATEWAY_URL=... TOKEN=... python gql_subscribe.py`.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest
import redis

from helpers import GatewayServer, groups, make_token, publish, wait_until

ROOT = Path(__file__).resolve().parent.parent
SNIPPETS = ROOT / "tests" / "clients" / "snippets"


@pytest.mark.parametrize("snippet", sorted(p.name for p in SNIPPETS.iterdir() if p.suffix in {".mjs", ".py"}))
def test_the_readme_shows_the_snippet_verbatim(snippet: str) -> None:
    text = (SNIPPETS / snippet).read_text()
    assert text.strip() in (ROOT / "README.md").read_text(), f"README.md no longer shows {snippet}"


@pytest.mark.anyio
async def test_the_gql_snippet_prints_each_order_event(gateway: GatewayServer, redis_client: redis.Redis, tenant: str) -> None:
    env = {**os.environ, "GATEWAY_URL": gateway.http_url, "TOKEN": make_token(tenant)}
    child = await asyncio.create_subprocess_exec(
        sys.executable, str(SNIPPETS / "gql_subscribe.py"), env=env, stdout=asyncio.subprocess.PIPE
    )
    try:
        await wait_until(lambda: len(groups(redis_client, tenant)) == 1)
        created = publish(redis_client, tenant, "order_created", {"order_id": "o-1", "status": "pending"})
        publish(redis_client, tenant, "tool_call", {})
        paid = publish(redis_client, tenant, "order_updated", {"order_id": "o-1", "status": "paid"})

        assert child.stdout is not None
        lines = [json.loads(await asyncio.wait_for(child.stdout.readline(), 10)) for _ in range(2)]
        assert [(e["id"], e["type"], e["orderId"], e["status"]) for e in lines] == [
            (created, "order_created", "o-1", "pending"),
            (paid, "order_updated", "o-1", "paid"),
        ]
    finally:
        child.kill()
        await child.wait()
