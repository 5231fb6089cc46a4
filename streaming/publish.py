"""Appending events as producers must write them (docs/publishing.md), for the CLI, demo and tests."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson

from . import keys
from .connections import AnyRedis

DEFAULT_MAXLEN = 1_000_000


def event_fields(
    tenant_id: str,
    event_type: str,
    payload: dict[str, Any],
    *,
    event_id: str | None = None,
    occurred_at: datetime | None = None,
) -> dict[str, str]:
    """The XADD fields of a valid event; ValueError on bad input."""
    keys.validate_tenant(tenant_id)
    if keys.EVENT_TYPE_PATTERN.fullmatch(event_type) is None:
        raise ValueError(f"Invalid event type {event_type!r}: expected [a-z][a-z0-9_.:-]{{0,63}}")
    if not isinstance(payload, dict):
        raise ValueError("The payload must be a JSON object")  # noqa: TRY004 (callers catch ValueError for bad input)
    fields = {"event_type": event_type, "tenant_id": tenant_id, "payload": orjson.dumps(payload).decode()}
    if event_id:
        fields["event_id"] = event_id
    if occurred_at is not None:
        fields["occurred_at"] = occurred_at.isoformat()
    return fields


async def publish(
    redis: AnyRedis,
    tenant_id: str,
    event_type: str,
    payload: dict[str, Any],
    *,
    event_id: str | None = None,
    maxlen: int | None = DEFAULT_MAXLEN,
) -> str:
    """XADD one event to the tenant's stream; returns its entry id."""
    fields = event_fields(tenant_id, event_type, payload, event_id=event_id)
    entry_id = await redis.xadd(keys.events_key(tenant_id), fields, maxlen=maxlen, approximate=True)  # type: ignore[arg-type]
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
