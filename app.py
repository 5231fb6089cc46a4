"""The RAGline gateway application: `create_app()` builds it (the `ragline` CLI is `gateway.cli`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from .gateway.compat import router as compat_router
from .gateway.dashboard import router as dashboard_router
from .gateway.health import router as health_router
from .gateway.ide import mount_graphiql_assets
from .gateway.limits import planner_options, schema_extensions
from .gateway.metrics import registry_for
from .gateway.runtime import Runtime
from .gateway.settings import Settings, load_settings
from .gateway.transport import GatewayApp, GatewayRouter
from .resolvers.root import build_schema


def create_app(settings: Settings | None = None) -> GatewayApp:
    """A gateway app; its lifespan connects to Redis and starts the shared reader."""
    runtime = Runtime.from_settings(settings or load_settings())

    @asynccontextmanager
    async def lifespan(app: GatewayApp) -> AsyncIterator[None]:
        await runtime.start()
        demo = _start_demo(runtime)
        try:
            yield
        finally:
            if demo is not None:
                demo.cancel()
                with suppress(asyncio.CancelledError):
                    await demo
            await runtime.stop()

    app = GatewayApp(title="RAGline gateway", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.runtime = runtime
    app.state.metrics_registry = registry_for(runtime)
    extensions = schema_extensions(runtime.settings)  # query depth, tokens, aliases, introspection
    graphql_router = GatewayRouter(build_schema(extensions), runtime, planner_options(extensions))
    app.state.planner = graphql_router.planner
    app.include_router(graphql_router)  # HTTP; its WebSockets skip FastAPI's middleware and routing:
    app.graphql_router = graphql_router
    app.include_router(health_router)
    app.include_router(dashboard_router)  # GET /dashboard and its assets
    if runtime.settings.graphiql:
        mount_graphiql_assets(app)
    app.include_router(compat_router)
    return app


def _start_demo(runtime: Runtime) -> asyncio.Task[None] | None:
    if not runtime.settings.demo or runtime.redis is None:
        return None
    from .gateway.demo import run_demo

    return asyncio.create_task(run_demo(runtime.redis), name="ragline-demo")
