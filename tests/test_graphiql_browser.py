"""GraphiQL in a real browser (Debian's Chromium, driven by Playwright), with every
request that leaves this machine aborted: the page needs no CDN, and a subscription
run from it shows an event published by the test. Screenshots go to tests/artifacts/."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import redis

from browser import offline_page, require_browser, screenshot
from helpers import GatewayProcess, GatewayServer, groups, make_token, publish, wait_until

require_browser()

pytestmark = pytest.mark.anyio
TYPED_SUBSCRIPTION = 'subscription {\n  events(types: ["order_*"]) {\n    id type tenantId payload\n  }\n}\n'
RESPONSE_PANE = ".graphiql-response"


async def run_and_wait_for_a_new_group(page: Any, client: redis.Redis, tenant: str) -> None:
    """Press Run; return once the subscription's consumer group exists, so it sees what comes next."""
    before = {g["name"] for g in groups(client, tenant)}
    await page.click(".graphiql-execute-button")
    await wait_until(lambda: {g["name"] for g in groups(client, tenant)} - before)


async def result_with(page: Any, entry_id: str) -> dict[str, Any]:
    """The response pane's JSON, once it shows `entry_id`."""
    await page.wait_for_function(
        "([selector, id]) => document.querySelector(selector)?.innerText.includes(id)", arg=[RESPONSE_PANE, entry_id]
    )
    text = await page.inner_text(RESPONSE_PANE)
    return dict(json.loads(text.replace("\xa0", " ")))  # CodeMirror indents with no-break spaces


async def test_a_subscription_typed_into_graphiql_shows_an_event_published_while_cdns_are_unreachable(
    gateway: GatewayServer, redis_client: redis.Redis, tenant: str
) -> None:
    headers = json.dumps({"Authorization": f"Bearer {make_token(tenant)}"})
    async with offline_page() as (page, traffic):
        await page.goto(f"{gateway.http_url}?{urlencode({'headers': headers})}")
        editor = page.locator(".graphiql-query-editor .CodeMirror")
        await editor.click()
        await page.keyboard.press("Control+A")
        await page.keyboard.insert_text(TYPED_SUBSCRIPTION)
        await run_and_wait_for_a_new_group(page, redis_client, tenant)
        entry_id = publish(redis_client, tenant, "order_created", {"order_id": "o-typed"})
        result = await result_with(page, entry_id)
        await screenshot(page, "graphiql.png")
    assert result == {
        "data": {"events": {"id": entry_id, "type": "order_created", "tenantId": tenant, "payload": {"order_id": "o-typed"}}}
    }
    assert (traffic.blocked, traffic.failed, traffic.page_errors) == ([], [], [])


async def test_the_link_printed_by_ragline_serve_runs_its_subscription_with_the_dev_token(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    log = tmp_path / "serve.log"
    served = GatewayProcess({"RAGLINE_REDIS_URL": redis_url, "RAGLINE_DATA_DIR": str(tmp_path / "data")}, log).start()
    try:
        link = re.search(r"^  (http://\S+/graphql\?headers=\S+)$", log.read_text(), re.MULTILINE)
        assert link is not None, log.read_text()
        async with offline_page() as (page, traffic):
            await page.goto(link.group(1))
            await run_and_wait_for_a_new_group(page, redis_client, "demo")
            order_id = f"o-{uuid.uuid4().hex[:8]}"
            payload = {"order_id": order_id, "status": "pending"}
            entry_id = publish(redis_client, "demo", "order_created", payload)
            event = (await result_with(page, entry_id))["data"]["orderEvents"]
            await screenshot(page, "graphiql-serve-link.png")
    finally:
        served.stop()
    occurred_at = datetime.fromtimestamp(int(entry_id.split("-")[0]) / 1000, UTC).isoformat()
    assert event == {
        "id": entry_id, "type": "order_created", "orderId": order_id, "status": "pending",
        "occurredAt": occurred_at, "payload": payload,
    }
    assert (traffic.blocked, traffic.failed, traffic.page_errors) == ([], [], [])
