"""Stream entries parsed and validated once, as plain data.

The reader turns raw `XREAD` fields into an `Entry` (deliverable) or a
`DeadLetter` (bad producer data, with the reason); everything downstream
works on these and never sees raw Redis replies.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from .keys import EVENT_TYPE_PATTERN, parse_stream_id
from .replies import text


@dataclass(frozen=True, slots=True)
class Entry:
    """A valid event of one tenant's stream."""

    id: str
    sort_key: tuple[int, int]
    event_type: str
    tenant_id: str
    payload: dict[str, Any]
    event_id: str | None
    occurred_at: datetime


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An entry that cannot be delivered; it is moved to the tenant's DLQ."""

    id: str
    sort_key: tuple[int, int]
    reason: str
    fields: dict[str, str]


Record = Entry | DeadLetter


def parse_record(tenant_id: str, entry_id: str, raw: dict[Any, Any]) -> Record:
    """Validate one raw entry of `tenant_id`'s stream."""
    sort_key = parse_stream_id(entry_id)
    try:
        fields = {text(k): text(v) for k, v in raw.items()}
    except UnicodeDecodeError:  # the dead letter keeps a readable copy; the entry stays in the stream
        lossy = {text(k, "replace"): text(v, "replace") for k, v in raw.items()}
        return DeadLetter(entry_id, sort_key, "a field is not UTF-8", lossy)
    reason = _problem(tenant_id, fields)
    if reason is not None:
        return DeadLetter(entry_id, sort_key, reason, fields)
    try:
        payload = orjson.loads(fields["payload"])
    except orjson.JSONDecodeError:
        return DeadLetter(entry_id, sort_key, "payload is not JSON", fields)
    if not isinstance(payload, dict):
        return DeadLetter(entry_id, sort_key, "payload is not a JSON object", fields)
    occurred_at = _occurred_at(fields.get("occurred_at"), sort_key)
    if occurred_at is None:
        return DeadLetter(entry_id, sort_key, "occurred_at is not ISO-8601", fields)
    return Entry(
        id=entry_id,
        sort_key=sort_key,
        event_type=fields["event_type"],
        tenant_id=tenant_id,
        payload=payload,
        event_id=fields.get("event_id") or None,
        occurred_at=occurred_at,
    )


def _problem(tenant_id: str, fields: dict[str, str]) -> str | None:
    for name in ("event_type", "tenant_id", "payload"):
        if name not in fields:
            return f"missing field {name}"
    if EVENT_TYPE_PATTERN.fullmatch(fields["event_type"]) is None:
        return "invalid event_type"
    if fields["tenant_id"] != tenant_id:
        return "tenant_id does not match the stream's tenant"
    return None


def _occurred_at(value: str | None, sort_key: tuple[int, int]) -> datetime | None:
    if not value:
        return datetime.fromtimestamp(sort_key[0] / 1000, tz=UTC)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
