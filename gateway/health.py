"""Operator endpoints: /healthz, /readyz and /metrics (Prometheus text format)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from redis.exceptions import RedisError

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
        except (RedisError, OSError):
            redis_ok = False
    hub = runtime.hub
    reader_ok = hub is not None and hub.running and await hub.probe()
    ready = redis_ok and reader_ok and hub is not None and hub.accepting
    response.status_code = 200 if ready else 503
    return {"status": "ready" if ready else "not ready", "redis": redis_ok, "reader": reader_ok}


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    runtime = _runtime(request)
    lines: list[str] = []
    if runtime.hub is not None:
        rows = runtime.hub.counters.tenants()
        for name, attribute, kind in (
            ("ragline_connections", "connections", "gauge"),
            ("ragline_subscriptions", "subscriptions", "gauge"),
            ("ragline_events_delivered_total", "delivered", "counter"),
            ("ragline_events_skipped_total", "skipped", "counter"),
            ("ragline_dead_letters_total", "dead_lettered", "counter"),
        ):
            lines.append(f"# TYPE {name} {kind}")
            lines += [f'{name}{{tenant="{t}"}} {getattr(c, attribute)}' for t, c in sorted(rows.items())]
        lines.append("# TYPE ragline_redis_available gauge")
        lines.append(f"ragline_redis_available {int(runtime.hub.available)}")
    return Response("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")
