"""What a resolver may know about the request: who is asking, the hub, live control."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from strawberry.fastapi import BaseContext

from ..streaming.hub import Hub
from .metrics import DeliveryMetrics

if TYPE_CHECKING:
    from .control import LiveControl

ADMIN_ROLE = "admin"


@dataclass(frozen=True)
class Principal:
    """The verified identity behind a connection or request."""

    tenant_id: str
    user_id: str
    roles: frozenset[str] = frozenset()
    expires_at: float | None = None
    issued_at: float | None = None  # the token's `iat`, if it had one (revocations go by it)

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
    live: LiveControl | None = None  # presence, revocations, stats updates
    # On a WebSocket on /graphql: verify a new token for this connection and move its
    # expiry (refreshToken); a FORBIDDEN GatewayError when refused.
    refresh: Callable[[str], Awaitable[Principal]] | None = None

    def __post_init__(self) -> None:
        super().__init__()
