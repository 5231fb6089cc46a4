"""Operator endpoints: /healthz, /readyz and /metrics (Prometheus text format)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from ..streaming.connections import REDIS_ERRORS
from .metrics import CONTENT_TYPE, render
from .runtime import Runtime

router = APIRouter()


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request, response: Response) -> dict[str, object]:
    runtime = _runtime(request)
    redis_ok = False
    if runtime.redis is not None:
        try:
            redis_ok = bool(await runtime.redis.ping())
        except REDIS_ERRORS:
            redis_ok = False
    hub = runtime.hub
    reader_ok = hub is not None and hub.running and await hub.probe()
    ready = redis_ok and reader_ok and hub is not None and hub.accepting
    response.status_code = 200 if ready else 503
    return {"status": "ready" if ready else "not ready", "redis": redis_ok, "reader": reader_ok}


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus text format, read from plain counters at scrape time (gateway.metrics)."""
    return Response(render(request.app.state.metrics_registry), media_type=CONTENT_TYPE)
