"""The live dashboard at /dashboard in a real browser (Debian's Chromium, driven by Playwright),
with every request that leaves this machine aborted: the page loads only the gateway's own
files under its Content-Security-Policy, connects to /graphql, and its figures, chart and
list of users follow what test clients do. Screenshots go to tests/artifacts/."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from browser import BROWSER_TIMEOUT_MS, offline_page, require_browser, screenshot
from helpers import (
    EVENTS_QUERY,
    ORDERS_QUERY,
    GatewayProcess,
    GatewayServer,
    connect,
    groups,
    make_token,
    publish,
    wait_until,
)
from ragline.resolvers.live import UNAVAILABLE

playwright_api = require_browser()

pytestmark = pytest.mark.anyio
REFUSED_HINT = "The token was refused: connect with a fresh one."
CSP = (
    "default-src 'self'; connect-src 'self'; img-src 'self' data:; style-src 'self'; "
    "script-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
# Page-state predicates for wait_for_function, written as functions: the page's CSP forbids
# eval, which Playwright would need to run a bare expression in it.
DELIVERING = "() => Number(document.getElementById('deliveries-per-second').dataset.value) > 0"
CHART_DRAWN = """() => {
  const canvas = document.getElementById("chart");
  const { data } = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height);
  for (let i = 0; i < data.length; i += 4) {  // a pixel of the line, in the page's --accent #2f6fde
    if (data[i] === 47 && data[i + 1] === 111 && data[i + 2] === 222 && data[i + 3] === 255) return true;
  }
  return false;
}"""

expect = playwright_api.expect
expect.set_options(timeout=BROWSER_TIMEOUT_MS)


def dashboard_url(gateway: GatewayServer, token: str | None = None) -> str:
    url = f"http://127.0.0.1:{gateway.port}/dashboard"
    return url if token is None else f"{url}#token={token}"


async def connected(page: Any) -> None:
    await expect(page.locator("#status")).to_have_attribute("data-state", "connected")


async def revoke(gateway: GatewayServer, tenant: str, user_id: str) -> None:
    """An admin's `revoke` mutation over HTTP: the user's connections close with 4403 Revoked."""
    query = "mutation($t: String!, $u: String) { revoke(tenantId: $t, userId: $u) { tenantId } }"
    headers = {"Authorization": f"Bearer {make_token(tenant, 'admin', roles=['admin'])}"}
    body = {"query": query, "variables": {"t": tenant, "u": user_id}}
    async with httpx.AsyncClient() as http:
        response = await http.post(gateway.http_url, json=body, headers=headers)
    assert response.json() == {"data": {"revoke": {"tenantId": tenant}}}, response.text


def user(page: Any, user_id: str) -> Any:
    return page.locator(f'#users li[data-user="{user_id}"]')


async def test_the_figures_chart_and_users_follow_a_tenants_clients_while_cdns_are_unreachable(
    gateway: GatewayServer, redis_client: redis.Redis, tenant: str
) -> None:
    async with offline_page(height=900) as (page, traffic):
        response = await page.goto(dashboard_url(gateway, make_token(tenant, "watcher")))
        assert response.headers["content-security-policy"] == CSP
        await connected(page)
        await expect(page.locator("#connections")).to_have_text("1")  # the page's own
        await expect(page.locator("#subscriptions")).to_have_text("0")  # statsUpdates and presence are not counted
        await expect(user(page, "watcher")).to_have_attribute("data-connections", "1")
        await expect(page.locator("#redis")).to_have_text("available")
        await expect(page.locator("#dead-letters")).to_have_text("0")

        alice_token = make_token(tenant, "alice")
        async with connect(gateway.ws_url, token=alice_token) as alice:
            await expect(page.locator("#connections")).to_have_text("2")
            await expect(user(page, "alice").locator(".user-id")).to_have_text("alice")
            await expect(user(page, "alice").locator(".user-connections")).to_have_text("1 connection")
            async with connect(gateway.ws_url, token=alice_token):
                await expect(page.locator("#connections")).to_have_text("3")
                await expect(user(page, "alice").locator(".user-connections")).to_have_text("2 connections")
            await expect(user(page, "alice").locator(".user-connections")).to_have_text("1 connection")

            await alice.subscribe("1", EVENTS_QUERY)
            await wait_until(lambda: groups(redis_client, tenant))
            await expect(page.locator("#subscriptions")).to_have_text("1")
            entry_ids = [publish(redis_client, tenant, "order_created", {"n": n}) for n in range(5)]
            received = await alice.collect("1", "events", 5)
            assert [event["id"] for event in received] == entry_ids
            await page.wait_for_function(DELIVERING)
            await page.wait_for_function(CHART_DRAWN)
            await expect(page.locator("#pending")).to_have_text("0")
            await screenshot(page, "dashboard.png", full_page=True)

        await expect(user(page, "alice")).to_have_count(0)  # LEFT, once the grace has passed
        await expect(page.locator("#connections")).to_have_text("1")
        await expect(page.locator("#subscriptions")).to_have_text("0")
        await expect(user(page, "watcher")).to_have_count(1)
        await expect(page.locator("#tenants-panel")).to_be_hidden()  # one tenant: no table
    assert traffic.problems() == ([], [], [], [])
    assert traffic.websockets == [gateway.ws_url]


async def test_an_admin_sees_every_tenant_in_the_table_and_the_page_answers_pings(
    make_gateway: Callable[..., GatewayServer], tenant: str
) -> None:
    gateway = make_gateway(ping_interval=0.2, ping_timeout=1.0)
    other = f"{tenant}-b"
    async with offline_page(height=900) as (page, traffic):
        await page.goto(dashboard_url(gateway, make_token(tenant, "root", roles=["admin"])))
        await connected(page)
        async with connect(gateway.ws_url, token=make_token(other, "bob")):
            await expect(page.locator("#tenants-panel")).to_be_visible()
            for tenant_id in (tenant, other):
                connections = page.locator(f'#tenants tr[data-tenant="{tenant_id}"] td:nth-child(2)')
                await expect(connections).to_have_text("1")
            await expect(user(page, "root")).to_have_count(1)  # presence: the admin's own tenant
            await expect(user(page, "bob")).to_have_count(0)
            await screenshot(page, "dashboard-admin.png", full_page=True)
        await wait_until(lambda: traffic.frames_sent.count('{"type":"pong"}') >= 5)
        await expect(page.locator("#status")).to_have_attribute("data-state", "connected")  # no ping timeout
    assert traffic.problems() == ([], [], [], [])


async def test_the_token_field_connects_and_a_refused_expired_or_revoked_token_is_shown(
    gateway: GatewayServer, tenant: str
) -> None:
    async with offline_page(height=900) as (page, traffic):
        await page.goto(dashboard_url(gateway))
        status = page.locator("#status")
        await expect(status).to_have_text("Not connected: paste a token and press Connect.")

        await page.fill("#token-input", make_token(tenant, "mallory", secret="not-the-gateway-secret-" + "y" * 48))
        await page.click("#connect")
        await expect(status).to_have_attribute("data-state", "closed")
        await expect(status).to_have_text(f"Closed by the gateway (4403 Forbidden). {REFUSED_HINT}")

        await page.fill("#token-input", make_token(tenant, "carol", ttl=5))
        await page.click("#connect")
        await connected(page)
        await expect(page.locator("#token-form")).to_be_hidden()
        await expect(user(page, "carol")).to_have_count(1)
        await expect(status).to_have_text(f"Closed by the gateway (4403 Token expired). {REFUSED_HINT}")
        await expect(page.locator("#token-form")).to_be_visible()
        await screenshot(page, "dashboard-token-expired.png", full_page=True)

        await page.fill("#token-input", make_token(tenant, "dave"))
        await page.click("#connect")
        await connected(page)
        await revoke(gateway, tenant, "dave")
        await expect(status).to_have_text(f"Closed by the gateway (4403 Revoked). {REFUSED_HINT}")
    assert traffic.problems() == ([], [], [], [])


async def test_an_error_message_from_the_gateway_is_shown_as_the_status(gateway: GatewayServer, tenant: str) -> None:
    """The gateway's answer to presenceChanges is replaced by the error it sends when Redis is down."""

    def presence_fails(route: Any) -> None:
        server = route.connect_to_server()

        def from_page(message: str | bytes) -> None:
            if json.loads(message).get("id") == "2":  # presenceChanges' subscribe
                error = {"message": UNAVAILABLE, "extensions": {"code": "UNAVAILABLE"}}
                route.send(json.dumps({"id": "2", "type": "error", "payload": [error]}))
            else:
                server.send(message)

        route.on_message(from_page)

    async with offline_page(height=900) as (page, traffic):
        await page.route_web_socket(gateway.ws_url, presence_fails)
        await page.goto(dashboard_url(gateway, make_token(tenant, "erin")))
        await expect(page.locator("#status")).to_have_attribute("data-state", "error")
        await expect(page.locator("#status")).to_have_text(f"presenceChanges: {UNAVAILABLE} (UNAVAILABLE)")
        await expect(page.locator("#connections")).to_have_text("1")  # statsUpdates goes on
    assert traffic.problems() == ([], [], [], [])


async def test_the_link_printed_by_ragline_serve_demo_shows_the_demo_orders_being_delivered(
    redis_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "serve.log"
    env = {"RAGLINE_REDIS_URL": redis_url, "RAGLINE_DATA_DIR": str(tmp_path / "data")}
    served = GatewayProcess(env, log, "--demo").start()
    try:
        link = re.search(r"^  (http://\S+/dashboard#token=(\S+))$", log.read_text(), re.MULTILINE)
        assert link is not None, log.read_text()
        async with offline_page(height=900) as (page, traffic):
            await page.goto(link.group(1))
            await connected(page)
            await expect(user(page, "dev")).to_have_count(1)
            async with connect(served.ws_url, token=link.group(2)) as subscriber:
                await subscriber.subscribe("1", ORDERS_QUERY)
                order = await subscriber.next_data("1", "orderEvents")  # the demo's, within seconds
                await page.wait_for_function(DELIVERING)
            await screenshot(page, "dashboard-serve-link.png", full_page=True)
    finally:
        served.stop()
    assert order["type"] in {"order_created", "order_updated", "order_completed"}
    assert traffic.problems() == ([], [], [], [])
    assert traffic.websockets == [served.ws_url]
