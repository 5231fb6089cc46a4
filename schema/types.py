"""The GraphQL object types and scalars of the public schema."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import NewType

import strawberry
from strawberry.scalars import JSON

Long = NewType("Long", int)
SCALARS = {
    Long: strawberry.scalar(
        name="Long",
        serialize=int,
        parse_value=int,
        description="A 64-bit integer, for counters that outgrow Int.",
    )
}


@strawberry.type(description="One event of the caller's tenant stream.")
class Event:
    id: strawberry.ID = strawberry.field(
        description='The stream entry id, e.g. "1732650000000-0": the resume cursor.'
    )
    type: str
    tenant_id: str
    event_id: str | None = strawberry.field(description="The producer's own id, if it gave one.")
    occurred_at: datetime
    payload: JSON


@strawberry.type(description="An order_* event, with the order fields lifted out of the payload.")
class OrderEvent:
    id: strawberry.ID
    type: str
    order_id: str
    status: str | None
    occurred_at: datetime
    payload: JSON


@strawberry.type(description="Live figures of one tenant in the gateway.")
class TenantStats:
    tenant_id: str
    connections: int = strawberry.field(description="Open authenticated connections.")
    subscriptions: int = strawberry.field(description="Live subscriptions.")
    events_delivered: Long = strawberry.field(description="Events written to clients.")
    pending: int = strawberry.field(
        description="Entries read for live subscriptions but not yet written to their clients."
    )
    dead_lettered: Long = strawberry.field(description="Bad entries moved to the tenant's DLQ.")


@strawberry.type(description="Gateway figures: the caller's tenant, or every tenant for admins.")
class Stats:
    connections: int
    subscriptions: int
    events_delivered: Long
    pending: int
    dead_lettered: Long
    redis_available: bool = strawberry.field(description="Whether Redis answers right now.")
    tenants: list[TenantStats] = strawberry.field(description="Per-tenant figures, by tenant id.")


@strawberry.input(
    description=(
        "A condition on the event's payload, or a combination of conditions. A filter\n"
        "holds either exactly one of `and`, `or`, `not`, or a `path` with exactly one operator."
    )
)
class EventFilter:
    and_: list[EventFilter] | None = strawberry.field(name="and", default=strawberry.UNSET)
    or_: list[EventFilter] | None = strawberry.field(name="or", default=strawberry.UNSET)
    not_: EventFilter | None = strawberry.field(name="not", default=strawberry.UNSET)
    path: str | None = strawberry.field(
        default=strawberry.UNSET,
        description='Dotted path into the payload: "status", "customer.tier", "items.sku", "items.0.sku".',
    )
    eq: JSON | None = strawberry.UNSET
    ne: JSON | None = strawberry.UNSET
    gt: JSON | None = strawberry.UNSET
    gte: JSON | None = strawberry.UNSET
    lt: JSON | None = strawberry.UNSET
    lte: JSON | None = strawberry.UNSET
    in_: list[JSON] | None = strawberry.field(name="in", default=strawberry.UNSET)
    not_in: list[JSON] | None = strawberry.field(name="notIn", default=strawberry.UNSET)
    contains: JSON | None = strawberry.field(
        default=strawberry.UNSET,
        description="A string that contains this substring, or a list that contains this value.",
    )
    begins_with: str | None = strawberry.field(name="beginsWith", default=strawberry.UNSET)
    exists: bool | None = strawberry.UNSET

    def as_dict(self) -> dict[str, object]:
        """The filter as graphql-core hands it to the planner: GraphQL names, omitted fields
        absent, a null given present (the form `resolvers.where` compiles)."""
        found: dict[str, object] = {}
        for field in self.__strawberry_definition__.fields:  # type: ignore[attr-defined]
            value = getattr(self, field.python_name)
            if value is strawberry.UNSET:
                continue
            if isinstance(value, EventFilter):
                value = value.as_dict()
            elif isinstance(value, list) and field.python_name in ("and_", "or_"):
                value = [child.as_dict() for child in value]
            found[field.graphql_name or field.python_name] = value
        return found


@strawberry.type(description="The identity and expiry of a connection after `refreshToken`.")
class Session:
    tenant_id: str
    user_id: str
    expires_at: datetime = strawberry.field(description="When the connection's token now expires.")


@strawberry.type(description="A revocation: tokens of the user (every user when null) issued before `revokedBefore`.")
class Revocation:
    tenant_id: str
    user_id: str | None
    revoked_before: datetime


@strawberry.type(description="A user with at least one open authenticated connection.")
class PresenceUser:
    user_id: str
    connections: int = strawberry.field(description="Open connections of the user, on every gateway process.")
    since: datetime = strawberry.field(description="When the user's earliest open connection opened.")


@strawberry.type(description="Who of the caller's tenant is connected, on any gateway process.")
class Presence:
    tenant_id: str
    connections: int
    users: list[PresenceUser] = strawberry.field(description="By user id.")


@strawberry.enum(description="What happened to a user's presence.")
class PresenceChangeKind(Enum):
    JOINED = "JOINED"
    LEFT = "LEFT"


@strawberry.type(description="A user's first connection opened (JOINED), or its last one closed (LEFT).")
class PresenceChange:
    kind: PresenceChangeKind
    user_id: str
    connections: int = strawberry.field(description="The user's open connections now (0 when LEFT).")
    at: datetime
