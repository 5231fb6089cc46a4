"""GraphiQL served entirely by the gateway: the page and its assets, no CDN.

Gateways run in private networks, so the IDE page at `GET /graphql` loads
React, GraphiQL and the explorer plugin from files shipped in this package
(`gateway/static/graphiql/`, see its README for versions and licenses),
mounted at `/graphiql-assets`.
"""

from __future__ import annotations

import urllib.parse
from functools import cache
from pathlib import Path

import orjson
from fastapi import FastAPI
from starlette.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent / "static"
ASSETS_DIR = STATIC_DIR / "graphiql"
PAGE_FILE = STATIC_DIR / "graphiql.html"
ASSETS_ROUTE = "/graphiql-assets"


@cache
def graphiql_html() -> str:
    """The IDE page. Asset URLs are relative to `/graphql`, so a path prefix added
    by a reverse proxy keeps working."""
    page = PAGE_FILE.read_text(encoding="utf-8")
    return page.replace("{{assets}}", "." + ASSETS_ROUTE)


def mount_graphiql_assets(app: FastAPI) -> None:
    app.mount(ASSETS_ROUTE, StaticFiles(directory=ASSETS_DIR), name="graphiql-assets")


def graphiql_link(graphql_url: str, token: str, query: str) -> str:
    """A GraphiQL URL with the bearer token in the Headers tab and `query` in the editor."""
    headers = orjson.dumps({"Authorization": f"Bearer {token}"}).decode()
    return f"{graphql_url}?{urllib.parse.urlencode({'headers': headers, 'q': query})}"
