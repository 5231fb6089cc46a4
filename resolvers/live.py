"""Live control's resolvers: `refreshToken`, `revoke`, `presence`, `presenceChanges`,
`statsUpdates`, on what the process shares (`resolvers.control.LiveControl`)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from ..schema.errors import ErrorCode, GatewayError
from ..schema.types import (
    Presence,
    PresenceChange,
    PresenceChangeKind,
    PresenceUser,
    Revocation,
    Session,
    Stats,
)
from ..streaming import keys
from ..streaming.connections import REDIS_ERRORS
from ..streaming.presence import Change, Listener
from .context import GatewayContext, Principal
from .control import LiveControl
from .events import require_principal
from .stats import visibility

logger = logging.getLogger(__name__)
DEFAULT_STATS_INTERVAL = 5
STATS_INTERVALS = range(1, 3601)
UNAVAILABLE = "The gateway cannot reach Redis right now; retry later"


def _live(context: GatewayContext) -> LiveControl:
    assert context.live is not None, "the runtime sets `live` on every context"
    return context.live


def _time(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


# -- resolvers ----------------------------------------------------------------


async def stats_updates(context: GatewayContext, interval_seconds: int | None) -> AsyncIterator[Stats]:
    principal = require_principal(context)
    interval = DEFAULT_STATS_INTERVAL if interval_seconds is None else interval_seconds
    if interval not in STATS_INTERVALS:
        raise GatewayError(ErrorCode.BAD_USER_INPUT, "intervalSeconds must be between 1 and 3600")
    return _live(context).stats_updates(visibility(principal), interval)


async def resolve_presence(context: GatewayContext) -> Presence:
    principal = require_principal(context)
    try:
        snapshot = await _live(context).presence.snapshot(principal.tenant_id)
    except REDIS_ERRORS:
        raise GatewayError(ErrorCode.UNAVAILABLE, UNAVAILABLE) from None
    users = [
        PresenceUser(user_id=user.user_id, connections=user.connections, since=_time(user.since))
        for user in sorted(snapshot.users.values(), key=lambda user: user.user_id)
    ]
    return Presence(tenant_id=principal.tenant_id, connections=sum(u.connections for u in users), users=users)


async def presence_changes(context: GatewayContext) -> AsyncIterator[PresenceChange]:
    """The caller's tenant: JOINED per user present now, then the changes. The first
    snapshot is read before the subscription starts, so an unreachable Redis is its error."""
    principal = require_principal(context)
    try:
        listener = await _live(context).presence.listen(principal.tenant_id)
    except REDIS_ERRORS:
        raise GatewayError(ErrorCode.UNAVAILABLE, UNAVAILABLE) from None
    return _presence_changes(listener)


async def _presence_changes(listener: Listener) -> AsyncIterator[PresenceChange]:
    try:
        async for change in listener:
            yield _presence_change(change)
    finally:
        await listener.close()


def _presence_change(change: Change) -> PresenceChange:
    kind = PresenceChangeKind(change.kind.value)
    return PresenceChange(kind=kind, user_id=change.user_id, connections=change.connections, at=_time(change.at))


async def refresh_token(context: GatewayContext, token: str) -> Session:
    """Over the WebSocket it refreshes (`context.refresh`, set by the socket)."""
    if context.refresh is None:
        raise GatewayError(ErrorCode.BAD_USER_INPUT, "refreshToken needs a WebSocket connection")
    require_principal(context)
    principal = await context.refresh(token)
    assert principal.expires_at is not None  # `exp` is a required claim
    return Session(tenant_id=principal.tenant_id, user_id=principal.user_id, expires_at=_time(principal.expires_at))


async def revoke(context: GatewayContext, tenant_id: str, user_id: str | None, reason: str | None) -> Revocation:
    admin = require_principal(context)
    if not admin.is_admin:
        raise GatewayError(ErrorCode.FORBIDDEN, "revoke needs the admin role")
    for name, value in (("tenantId", tenant_id), ("userId", user_id)):
        if value is not None and not keys.is_valid_id(value):
            raise GatewayError(ErrorCode.BAD_USER_INPUT, f"{name} must match [A-Za-z0-9_.-]{{1,64}}")
    try:
        revocation = await _live(context).revocations.revoke(tenant_id, user_id)
    except REDIS_ERRORS:
        raise GatewayError(ErrorCode.UNAVAILABLE, UNAVAILABLE) from None
    log_revocation(admin, tenant_id, user_id, reason)
    return Revocation(
        tenant_id=revocation.tenant_id, user_id=revocation.user_id, revoked_before=_time(revocation.revoked_before)
    )


def log_revocation(by: Principal | str, tenant_id: str, user_id: str | None, reason: str | None) -> None:
    """Who revoked whom and why (never a token)."""
    who = by if isinstance(by, str) else f"admin {by.user_id} of tenant {by.tenant_id}"
    whom = f"user {user_id} of tenant {tenant_id}" if user_id is not None else f"every user of tenant {tenant_id}"
    logger.warning("revocation: %s revoked the tokens of %s; reason: %s", who, whom, reason or "(none given)")


__all__ = ["log_revocation"]
