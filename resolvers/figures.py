"""The `Stats` figures of one tenant or of every tenant, summed over every gateway process."""

from __future__ import annotations

from ..schema.types import Long, Stats, TenantStats
from ..streaming.hub import Hub


async def visible_stats(hub: Hub, tenant_id: str | None) -> Stats:
    """The figures of `tenant_id`, or of every tenant when None."""
    figures = await hub.all_figures()
    visible = sorted(figures) if tenant_id is None else [tenant_id]
    tenants = [_tenant_stats(tenant_id, figures.get(tenant_id, {})) for tenant_id in visible]
    return Stats(
        connections=sum(t.connections for t in tenants),
        subscriptions=sum(t.subscriptions for t in tenants),
        events_delivered=Long(sum(t.events_delivered for t in tenants)),
        pending=sum(t.pending for t in tenants),
        dead_lettered=Long(sum(t.dead_lettered for t in tenants)),
        redis_available=hub.available,
        tenants=tenants,
    )


def _tenant_stats(tenant_id: str, row: dict[str, int]) -> TenantStats:
    return TenantStats(
        tenant_id=tenant_id,
        connections=row.get("connections", 0),
        subscriptions=row.get("subscriptions", 0),
        events_delivered=Long(row.get("delivered", 0)),
        pending=row.get("pending", 0),
        dead_lettered=Long(row.get("dead_lettered", 0)),
    )
