"""The live dashboard at `GET /dashboard`: one page, its script and its stylesheet, no CDN.

The page (`gateway/static/dashboard.html`, assets in `gateway/static/dashboard/`) opens a
WebSocket to this gateway's own `/graphql` with the token from `#token=` or a text field,
and draws what the public `statsUpdates` and `presenceChanges` subscriptions send. It is
served with a Content-Security-Policy that lets it load and connect to this origin only.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, HTMLResponse

STATIC_DIR = Path(__file__).parent / "static"
PAGE_FILE = STATIC_DIR / "dashboard.html"
ASSETS_DIR = STATIC_DIR / "dashboard"
ASSETS_ROUTE = "/dashboard-assets"
ASSET_TYPES = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}

# Same origin only, nothing inline (scripts and styles are files), no framing: the page
# holds a token. CSP3's 'self' also matches ws: and wss: to this host, for /graphql.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; connect-src 'self'; img-src 'self' data:; style-src 'self'; "
    "script-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

router = APIRouter()


@cache
def dashboard_html() -> str:
    """The page; asset URLs are relative to `/dashboard`, so a proxy's path prefix keeps working."""
    return PAGE_FILE.read_text(encoding="utf-8").replace("{{assets}}", "." + ASSETS_ROUTE)


@router.get("/dashboard", include_in_schema=False)
async def dashboard() -> HTMLResponse:
    return HTMLResponse(dashboard_html(), headers=SECURITY_HEADERS)


@router.get(ASSETS_ROUTE + "/{name}", include_in_schema=False)
async def dashboard_asset(name: str) -> FileResponse:
    """One of the page's own files (a fixed list: no path from the URL reaches the disk)."""
    media_type = ASSET_TYPES.get(name)
    if media_type is None:
        raise HTTPException(status_code=404)
    return FileResponse(ASSETS_DIR / name, media_type=media_type, headers=SECURITY_HEADERS)


def dashboard_link(graphql_url: str, token: str) -> str:
    """The dashboard beside `graphql_url`, with `token` in the fragment (never sent to a server)."""
    return f"{graphql_url.removesuffix('/graphql')}/dashboard#token={token}"
