"""The root types (`Query`, `Mutation`, `Subscription`) wired to the resolvers, and the schema built from them.

`app.py` serves `build_schema(...)` with the limits of `gateway.limits`; `SCHEMA`, without
extensions, is what `ragline schema` exports (graphql/schema.graphql): the same types.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import TypeVar

import strawberry
from graphql import GraphQLError
from strawberry.extensions import MaskErrors, SchemaExtension
from strawberry.schema.config import StrawberryConfig
from strawberry.types import ExecutionContext, Info
from strawberry.types.unset import UNSET

from ..schema.errors import is_internal
from ..schema.types import (
    SCALARS,
    Event,
    EventFilter,
    OrderEvent,
    Presence,
    PresenceChange,
    Revocation,
    Session,
    Stats,
)
from . import live
from .context import GatewayContext
from .events import open_events, open_order_events
from .stats import resolve_stats

T = TypeVar("T")


@strawberry.type
class Query:
    @strawberry.field(description="Live gateway figures for the caller's tenant (all tenants for admins).")  # type: ignore[untyped-decorator]
    async def stats(self, info: Info[GatewayContext, None]) -> Stats:
        return await resolve_stats(info.context)

    @strawberry.field(description="Who of the caller's tenant is connected now, on every gateway process.")  # type: ignore[untyped-decorator]
    async def presence(self, info: Info[GatewayContext, None]) -> Presence:
        return await live.resolve_presence(info.context)


@strawberry.type
class Mutation:
    @strawberry.mutation(
        description="Go on under a new token of the same tenant and user (over the WebSocket it refreshes)."
    )  # type: ignore[untyped-decorator]
    async def refresh_token(self, info: Info[GatewayContext, None], token: str) -> Session:
        return await live.refresh_token(info.context, token)

    @strawberry.mutation(
        description="Admins: end the user's connections (every user's when null) and refuse the tokens issued before now."
    )  # type: ignore[untyped-decorator]
    async def revoke(
        self,
        info: Info[GatewayContext, None],
        tenant_id: str,
        user_id: str | None = UNSET,
        reason: str | None = UNSET,
    ) -> Revocation:
        return await live.revoke(info.context, tenant_id, _given(user_id), _given(reason))


@strawberry.type
class Subscription:
    @strawberry.subscription(
        description='Every event of the caller\'s tenant; `types` takes exact names or prefixes ending in "*".'
    )  # type: ignore[untyped-decorator]
    async def events(
        self,
        info: Info[GatewayContext, None],
        types: list[str] | None = UNSET,
        where: EventFilter | None = UNSET,
        after: strawberry.ID | None = UNSET,
        durable: str | None = UNSET,
    ) -> AsyncIterator[Event]:
        return await open_events(info.context, _given(types), _where(where), _given(after), _given(durable))

    @strawberry.subscription(description="order_* events of the caller's tenant, optionally of one order.")  # type: ignore[untyped-decorator]
    async def order_events(
        self,
        info: Info[GatewayContext, None],
        order_id: str | None = UNSET,
        where: EventFilter | None = UNSET,
        after: strawberry.ID | None = UNSET,
        durable: str | None = UNSET,
    ) -> AsyncIterator[OrderEvent]:
        return await open_order_events(
            info.context, _given(order_id), _where(where), _given(after), _given(durable)
        )

    @strawberry.subscription(
        description="The `stats` figures at once, then every `intervalSeconds` (default 5, 1 to 3600)."
    )  # type: ignore[untyped-decorator]
    async def stats_updates(
        self, info: Info[GatewayContext, None], interval_seconds: int | None = UNSET
    ) -> AsyncIterator[Stats]:
        return await live.stats_updates(info.context, _given(interval_seconds))

    @strawberry.subscription(
        description="JOINED for each user of the caller's tenant present now, then JOINED and LEFT as they come and go."
    )  # type: ignore[untyped-decorator]
    async def presence_changes(self, info: Info[GatewayContext, None]) -> AsyncIterator[PresenceChange]:
        return await live.presence_changes(info.context)


def _given(value: T | None) -> T | None:
    """Arguments default to UNSET so the SDL shows no default; treat it as null."""
    return None if value is UNSET else value


def _where(value: EventFilter | None) -> dict[str, object] | None:
    """The filter in the form the planner gets it (`EventFilter.as_dict`)."""
    return None if value is UNSET or value is None else value.as_dict()


class GatewaySchema(strawberry.Schema):
    """Logs only unexpected errors: a client's bad input is not the server's problem."""

    def process_errors(self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None) -> None:
        unexpected = [e for e in errors if is_internal(e)]
        if unexpected:
            super().process_errors(unexpected, execution_context)


ExtensionFactory = Callable[[], SchemaExtension]


def build_schema(extensions: Sequence[ExtensionFactory] = ()) -> GatewaySchema:
    """The schema with `extensions` (factories: Strawberry makes one per operation).

    Errors from unexpected exceptions always reach clients masked (their text
    stays in the log); coded GatewayErrors and the client's own syntax or
    validation errors keep their messages."""
    factories: list[ExtensionFactory] = [*extensions, lambda: MaskErrors(should_mask_error=is_internal)]
    return GatewaySchema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        config=StrawberryConfig(scalar_map=SCALARS),  # type: ignore[arg-type]  # keyed by a NewType
        extensions=factories,
    )


SCHEMA = build_schema()

__all__ = ["SCHEMA", "build_schema"]
