"""Browser-test support: Debian's Chromium driven by Playwright, on a page that can reach
only this machine (every other request is aborted and recorded), and screenshots saved
to tests/artifacts/. A browser test module calls `require_browser()` first: it skips the
module when Chromium or the playwright package is missing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
LAUNCH_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
BROWSER_TIMEOUT_MS = 15_000


def require_browser() -> Any:
    """Skip the calling test module unless Chromium and playwright are installed;
    return `playwright.async_api`. Call it at module level."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)
    return pytest.importorskip(
        "playwright.async_api", reason="the Python playwright package is missing (pip install -e '.[test]')"
    )


@dataclass
class Traffic:
    """What the page did: requests to other hosts are aborted and recorded, and so are
    failed responses, page errors, console errors (a CSP violation is one), WebSockets
    and the frames the page sent on them."""

    blocked: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    websockets: list[str] = field(default_factory=list)
    frames_sent: list[str] = field(default_factory=list)

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

    def on_request_failed(self, request: Any) -> None:
        self.failed.append(f"failed {request.url}")

    def on_page_error(self, error: Any) -> None:
        self.page_errors.append(str(error))

    def on_console(self, message: Any) -> None:
        if message.type == "error":
            self.console_errors.append(message.text)

    def on_websocket(self, websocket: Any) -> None:
        self.websockets.append(websocket.url)
        websocket.on("framesent", lambda payload: self.frames_sent.append(payload))

    def problems(self) -> tuple[list[str], ...]:
        return self.blocked, self.failed, self.page_errors, self.console_errors


@asynccontextmanager
async def offline_page(*, width: int = 1280, height: int = 800) -> AsyncIterator[tuple[Any, Traffic]]:
    """A Chromium page of `width` x `height` that can reach only this machine, and what it did."""
    playwright_api = require_browser()
    async with playwright_api.async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        try:
            context = await browser.new_context(viewport={"width": width, "height": height})
            context.set_default_timeout(BROWSER_TIMEOUT_MS)
            traffic = Traffic()
            await context.route("**/*", traffic.local_only)
            page = await context.new_page()
            page.on("response", traffic.on_response)
            page.on("requestfailed", traffic.on_request_failed)
            page.on("pageerror", traffic.on_page_error)
            page.on("console", traffic.on_console)
            page.on("websocket", traffic.on_websocket)
            yield page, traffic
        finally:
            await browser.close()


async def screenshot(page: Any, name: str, *, full_page: bool = False) -> None:
    """Save the page (the whole scrollable page with `full_page`) as tests/artifacts/`name`."""
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / name), full_page=full_page)
