"""The `stats` query: this process's figures, scoped to what the caller may see."""

from __future__ import annotations

from collections import defaultdict

from schema.types import Stats, TenantStats

from .context import GatewayContext
from .events import require_principal


def resolve_stats(context: GatewayContext) -> Stats:
    principal = require_principal(context)
    hub = context.hub
    assert hub is not None
    pending: defaultdict[str, int] = defaultdict(int)
    for subscription in hub.subscriptions():
        pending[subscription.tenant_id] += subscription.buffered + subscription.unacked
    counters = hub.counters.tenants()
    visible = sorted(counters) if principal.is_admin else [principal.tenant_id]
    tenants = [
        TenantStats(
            tenant_id=tenant_id,
            connections=counters[tenant_id].connections if tenant_id in counters else 0,
            subscriptions=counters[tenant_id].subscriptions if tenant_id in counters else 0,
            events_delivered=counters[tenant_id].delivered if tenant_id in counters else 0,
            pending=pending[tenant_id],
            dead_lettered=counters[tenant_id].dead_lettered if tenant_id in counters else 0,
        )
        for tenant_id in visible
    ]
    return Stats(
        connections=sum(t.connections for t in tenants),
        subscriptions=sum(t.subscriptions for t in tenants),
        events_delivered=sum(t.events_delivered for t in tenants),
        pending=sum(t.pending for t in tenants),
        dead_lettered=sum(t.dead_lettered for t in tenants),
        redis_available=hub.available,
        tenants=tenants,
    )
