"""The GraphQL object types and scalars of the public schema."""

from __future__ import annotations

from datetime import datetime
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
