"""The GraphiQL page loads its scripts and styles from the gateway, never from a CDN
(this runs without a browser; tests/test_graphiql_browser.py runs the page)."""

from __future__ import annotations

import re
from urllib.parse import urljoin

import httpx
import pytest

from helpers import GatewayServer
from ragline.gateway.ide import ASSETS_DIR

pytestmark = pytest.mark.anyio
ASSET_REFERENCE = re.compile(r'<(?:script|link)\b[^>]*\b(?:src|href)="([^"]+)"')


async def test_the_graphiql_page_loads_every_asset_from_the_gateway(gateway: GatewayServer) -> None:
    async with httpx.AsyncClient() as http:
        page = await http.get(gateway.http_url, headers={"Accept": "text/html"})
        references = ASSET_REFERENCE.findall(page.text)
        assets = [await http.get(urljoin(gateway.http_url, ref)) for ref in references if not ref.startswith("data:")]
    assert page.status_code == 200 and "RAGline GraphiQL" in page.text
    assert re.search(r'(?:src|href)="(?:https?:)?//', page.text) is None  # nothing from another host
    assert [urljoin(gateway.http_url, ref) for ref in references if not ref.startswith("data:")] == [
        f"http://127.0.0.1:{gateway.port}/graphiql-assets/{name}"
        for name in (
            "graphiql.min.css", "plugin-explorer.css", "react.production.min.js",
            "react-dom.production.min.js", "graphiql.min.js", "plugin-explorer.umd.js",
        )
    ]
    for asset in assets:
        name = asset.url.path.rsplit("/", 1)[1]
        assert (asset.status_code, asset.content) == (200, (ASSETS_DIR / name).read_bytes())
