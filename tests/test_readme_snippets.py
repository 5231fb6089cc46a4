"""The docs' client snippets are the files in tests/clients/snippets, and they work.

docs/clients.md includes each file by path (pymdownx.snippets), so the page shows what the
tests run; no page or README may hold a copy, which could drift. The JavaScript ones run in
tests/clients/snippets.test.mjs (test_node_clients.py); the Python one runs here, as a user
would: `GATEWAY_URL=... TOKEN=... python gql_subscribe.py`.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path

import pytest
import redis

from helpers import GatewayServer, groups, make_token, publish, wait_until

ROOT = Path(__file__).resolve().parent.parent
SNIPPETS = ROOT / "tests" / "clients" / "snippets"
NAMES = sorted(p.name for p in SNIPPETS.iterdir() if p.suffix in {".mjs", ".py"})
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE_LANGUAGE = {".mjs": "js", ".py": "python"}


@pytest.mark.parametrize("snippet", NAMES)
def test_the_docs_include_the_snippet_from_its_file(snippet: str) -> None:
    language = FENCE_LANGUAGE[Path(snippet).suffix]
    include = re.compile(
        rf'^```{language}\n--8<-- "tests/clients/snippets/{re.escape(snippet)}"\n```$', re.MULTILINE
    )
    including = [p.name for p in PAGES if include.search(p.read_text())]
    assert including == ["clients.md"], (
        f"{snippet} is included by {including}, not by docs/clients.md alone"
    )


@pytest.mark.parametrize("snippet", NAMES)
def test_no_page_holds_a_copy_of_the_snippet(snippet: str) -> None:
    lines = {
        line.strip()
        for line in (SNIPPETS / snippet).read_text().splitlines()
        if len(line.strip()) >= 40
    }
    assert lines, f"{snippet} has no line long enough to recognise a copy by"
    copies = [
        (p.relative_to(ROOT).as_posix(), line)
        for p in PAGES
        for line in lines
        if line in p.read_text()
    ]
    assert not copies, f"copied from {snippet} instead of included (--8<--): {copies}"


@pytest.mark.anyio
async def test_the_gql_snippet_prints_each_order_event(
    gateway: GatewayServer, redis_client: redis.Redis, tenant: str
) -> None:
    env = {**os.environ, "GATEWAY_URL": gateway.http_url, "TOKEN": make_token(tenant)}
    child = await asyncio.create_subprocess_exec(
        sys.executable, str(SNIPPETS / "gql_subscribe.py"), env=env, stdout=asyncio.subprocess.PIPE
    )
    try:
        await wait_until(lambda: len(groups(redis_client, tenant)) == 1)
        created = publish(
            redis_client, tenant, "order_created", {"order_id": "o-1", "status": "pending"}
        )
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
