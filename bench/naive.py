"""The naive reference server: the straightforward way to serve the `events` subscription.

Each subscription creates its own consumer group (at `$`), owns its own Redis
connection, loops on a blocking XREADGROUP, and yields one event at a time so
Strawberry runs a full GraphQL execution per event per subscriber; every entry
is XACKed on its own after its frame was sent. This is the design the gateway
is measured against (CONTRACT.md forbids it for the gateway itself). On a
Redis Cluster each subscription's client is a redis-py cluster client, as a
straightforward implementation would use (it asks a node for XREADGROUP's
keys, COMMAND GETKEYS, before every read).

Run as `python -m bench.naive [--workers N]` with the RAGLINE_* variables.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from datetime import UTC, datetime
from typing import Any, cast

import jwt
import redis.asyncio as aioredis
import strawberry
import uvicorn
from fastapi import FastAPI, Response
from strawberry.exceptions import ConnectionRejectionError
from strawberry.fastapi import BaseContext, GraphQLRouter
from strawberry.scalars import JSON
from strawberry.types import Info

from bench.protocol import (
    GRAPHQL_PATH,
    SUBPROTOCOL,
    entry_millis,
    events_group_prefix,
    stream_key,
    token_from_init,
    verify_token,
)
from bench.refsettings import RefSettings, parse_workers, uvicorn_options
from ragline.streaming.connections import AnyRedis, is_cluster_url, open_client, ping_all

logger = logging.getLogger(__name__)

SETTINGS = RefSettings.from_env()

# A straightforward implementation still reads in batches; reading one entry
# per call would only make the reference slower than an honest naive server.
READ_COUNT = 100
BLOCK_MS = 2000
# No socket timeout, on purpose. redis-py 8 defaults it to 5 s, which (1)
# aborts a blocking read that a busy loop resumes late, and (2) routes every
# send through asyncio.wait_for, which on Python 3.11 swallows a cancel that
# arrives as the send completes (gh-86296): the cancelled subscription then
# loops forever and its group leaks. BLOCK bounds each read instead.
SOCKET_TIMEOUT_S = None
CONSUMER = "c"

# XREADGROUP with decode_responses: [(key, [(id, {field: value})])].
StreamsReply = list[tuple[str, list[tuple[str, dict[str, str]]]]]


@strawberry.type
class Event:
    """The contract's Event type, limited to the fields the benchmark selects."""

    id: strawberry.ID
    type: str
    tenant_id: str
    event_id: str | None
    occurred_at: datetime
    payload: JSON


def event_from_entry(entry_id: str, fields: dict[str, str]) -> Event:
    """Turn one stream entry into the GraphQL object (raises on malformed data)."""
    return Event(
        id=strawberry.ID(entry_id),
        type=fields["event_type"],
        tenant_id=fields["tenant_id"],
        event_id=fields.get("event_id"),
        occurred_at=datetime.fromtimestamp(entry_millis(entry_id) / 1000, tz=UTC),
        payload=json.loads(fields["payload"]),
    )


def own_client(url: str) -> AnyRedis:
    """A subscription's own client: one connection, or a cluster client of its own."""
    if is_cluster_url(url):
        return open_client(url, decode_responses=True, socket_timeout=SOCKET_TIMEOUT_S)
    return aioredis.Redis.from_url(
        url,
        decode_responses=True,
        single_connection_client=True,
        socket_timeout=SOCKET_TIMEOUT_S,
    )


class GroupReader:
    """One subscription's private group and connection on its tenant's stream."""

    def __init__(self, tenant: str) -> None:
        self.key = stream_key(tenant)
        self.group = f"{events_group_prefix(tenant)}naive-{uuid.uuid4().hex}"
        self.redis = own_client(SETTINGS.redis_url)

    async def open(self) -> None:
        await self.redis.xgroup_create(self.key, self.group, id="$", mkstream=True)

    async def entries(self) -> AsyncIterator[tuple[str, dict[str, str]]]:
        """Blocking XREADGROUP forever, one batch at a time."""
        while True:
            reply = await self.redis.xreadgroup(
                self.group, CONSUMER, {self.key: ">"}, count=READ_COUNT, block=BLOCK_MS
            )
            for _key, entries in cast(StreamsReply, reply or []):
                for entry_id, fields in entries:
                    yield entry_id, fields

    async def ack(self, entry_id: str) -> None:
        await self.redis.xack(self.key, self.group, entry_id)

    async def close(self) -> None:
        """Destroy the group and drop the connection, whatever way the subscription ended.

        Shielded: the operation task can be cancelled again while this runs
        (the socket's handler tearing down), and a cleanup cut short at its
        first await leaks the group; seen in the churn scenario.
        """
        cleanup = asyncio.ensure_future(self._release())
        _CLEANUPS.add(cleanup)
        cleanup.add_done_callback(_CLEANUPS.discard)
        await asyncio.shield(cleanup)

    async def _release(self) -> None:
        try:
            await self.redis.xgroup_destroy(self.key, self.group)
        except Exception:
            logger.warning("could not destroy group %s", self.group, exc_info=True)
        finally:
            await self.redis.aclose()


# Cleanups in flight, referenced so a cancelled caller cannot let them be collected.
_CLEANUPS: set[asyncio.Future[None]] = set()


@strawberry.type
class Query:
    @strawberry.field
    def ok(self) -> bool:
        """GraphQL requires a query type; the benchmark never calls it."""
        return True


@strawberry.type
class Subscription:
    @strawberry.subscription
    async def events(self, info: Info) -> AsyncGenerator[Event, None]:
        """Every event of the caller's tenant, acknowledged one by one after sending."""
        reader = GroupReader(info.context["tenant"])
        try:
            await reader.open()
            async for entry_id, fields in reader.entries():
                try:
                    event = event_from_entry(entry_id, fields)
                except (KeyError, ValueError):
                    await reader.ack(entry_id)
                    continue
                yield event
                await reader.ack(entry_id)
        finally:
            await reader.close()


class NaiveRouter(GraphQLRouter[dict[str, Any], None]):
    """Authenticates connection_init with the same JWT the gateway accepts."""

    async def on_ws_connect(self, context: BaseContext | dict[str, Any]) -> None:
        assert isinstance(context, dict)  # the default FastAPI context is a dict
        token = token_from_init(context.get("connection_params"))
        if token is None:
            raise ConnectionRejectionError()
        try:
            claims = verify_token(SETTINGS.jwt_secret, token)
        except jwt.PyJWTError as exc:
            raise ConnectionRejectionError() from exc
        context["tenant"] = claims["tenant_id"]


def create_app() -> FastAPI:
    """The FastAPI app: GraphQL at /graphql (graphql-transport-ws), /healthz, /readyz."""
    probe = open_client(SETTINGS.redis_url)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await probe.aclose()

    app = FastAPI(lifespan=lifespan)
    schema = strawberry.Schema(query=Query, subscription=Subscription)
    app.include_router(
        NaiveRouter(schema, path=GRAPHQL_PATH, subscription_protocols=(SUBPROTOCOL,))
    )

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Response:
        try:
            await ping_all(probe)
        except Exception:  # noqa: BLE001 - any failure means not ready
            return Response(status_code=503)
        return Response(status_code=200)

    return app


app = create_app()


def main() -> None:
    uvicorn.run("bench.naive:app", **uvicorn_options(SETTINGS, parse_workers()))  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
