"""What a resolver may know about the request: who is asking, and the hub."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from strawberry.fastapi import BaseContext

from ..streaming.hub import Hub
from .metrics import DeliveryMetrics

ADMIN_ROLE = "admin"


@dataclass(frozen=True)
class Principal:
    """The verified identity behind a connection or request."""

    tenant_id: str
    user_id: str
    roles: frozenset[str] = frozenset()
    expires_at: float | None = None

    @property
    def is_admin(self) -> bool:
        return ADMIN_ROLE in self.roles


@dataclass
class GatewayContext(BaseContext):
    """Strawberry context: the principal is set once authentication passed."""

    hub: Hub | None = None
    principal: Principal | None = None
    delivery: DeliveryMetrics | None = None  # per-event figures for /metrics
    connection_params: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        super().__init__()
