"""Per-tenant figures of this process, read by the `stats` query and metrics."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass


@dataclass
class TenantCounters:
    connections: int = 0
    subscriptions: int = 0
    delivered: int = 0
    skipped: int = 0
    dead_lettered: int = 0


class Counters:
    """Counters by tenant id; a tenant's entry appears on first use."""

    def __init__(self) -> None:
        self._tenants: defaultdict[str, TenantCounters] = defaultdict(TenantCounters)

    def tenant(self, tenant_id: str) -> TenantCounters:
        return self._tenants[tenant_id]

    def tenants(self) -> dict[str, TenantCounters]:
        return dict(self._tenants)
