"""GraphiQL in a real browser (Debian's Chromium, driven by Playwright), with every
request that leaves this machine aborted: the page needs no CDN, and a subscription
run from it shows an event published by the test. Screenshots go to tests/artifacts/."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest
import redis

from helpers import GatewayProcess, GatewayServer, groups, make_token, publish, wait_until

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)
playwright_api = pytest.importorskip(
    "playwright.async_api", reason="the Python playwright package is missing (pip install -e '.[test]')"
)

pytestmark = pytest.mark.anyio
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
LAUNCH_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
TYPED_SUBSCRIPTION = 'subscription {\n  events(types: ["order_*"]) {\n    id type tenantId payload\n  }\n}\n'
BROWSER_TIMEOUT_MS = 15_000
RESPONSE_PANE = ".graphiql-response"


@dataclass
class Traffic:
    """What the page asked for: requests to other hosts are aborted and recorded."""

    blocked: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)

    async def local_only(self, route: Any) -> None:
        url = route.request.url
        if urlsplit(url).hostname in LOCAL_HOSTS:
            await route.continue_()
        else:
            self.blocked.append(url)
            await route.abort("internetdisconnected")

    def on_response(self, response: Any) -> None:
        if response.status >= 400:
            self.failed.append(f"{response.status} {response.url}")


@asynccontextmanager
async def offline_page() -> AsyncIterator[tuple[Any, Traffic]]:
    """A Chromium page that can reach only this machine."""
    async with playwright_api.async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        try:
            context = await browser.new_context(viewport={"width": 1280, "height": 800})
            context.set_default_timeout(BROWSER_TIMEOUT_MS)
            traffic = Traffic()
            await context.route("**/*", traffic.local_only)
            page = await context.new_page()
            page.on("response", traffic.on_response)
            page.on("requestfailed", lambda request: traffic.failed.append(f"failed {request.url}"))
            page.on("pageerror", lambda error: traffic.page_errors.append(str(error)))
            yield page, traffic
        finally:
            await browser.close()


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


async def screenshot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / name))


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
