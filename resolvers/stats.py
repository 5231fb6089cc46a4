"""The `stats` query: figures of every gateway process, scoped to what the caller may see."""

from __future__ import annotations

from ..schema.types import Stats
from .context import GatewayContext, Principal
from .events import require_principal
from .figures import visible_stats


async def resolve_stats(context: GatewayContext) -> Stats:
    principal = require_principal(context)
    hub = context.hub
    assert hub is not None
    return await visible_stats(hub, visibility(principal))


def visibility(principal: Principal) -> str | None:
    """What the caller's figures cover: its tenant, or every tenant (None) for admins."""
    return None if principal.is_admin else principal.tenant_id
