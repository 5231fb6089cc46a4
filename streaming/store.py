"""The Redis commands the streaming core needs, and nothing else.

Everything here takes tenant ids and group names and builds keys through
`keys`, so the hub and subscriptions never format a key themselves.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from . import keys
from .entries import DeadLetter, Record, parse_record

logger = logging.getLogger(__name__)

# Copy a bad entry to the DLQ once, however many readers meet it.
_DEAD_LETTER_SCRIPT = """
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[1]) then
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 3))
  return 1
end
return 0
"""
DLQ_SEEN_TTL_SECONDS = 7 * 24 * 3600
DLQ_MAXLEN = 100_000
ZERO_ID = "0-0"


class RedisStore:
    """Stream reads, cursor (consumer group) moves and dead-lettering."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._dead_letter = redis.register_script(_DEAD_LETTER_SCRIPT)

    async def stream_end(self, tenant_id: str) -> str:
        """Id of the newest entry, or 0-0 for an empty or missing stream."""
        newest = await self.redis.xrevrange(keys.events_key(tenant_id), count=1)
        return _text(newest[0][0]) if newest else ZERO_ID

    async def stream_start(self, tenant_id: str) -> str | None:
        oldest = await self.redis.xrange(keys.events_key(tenant_id), count=1)
        return _text(oldest[0][0]) if oldest else None

    async def read_after(self, tenant_id: str, after: str, count: int) -> list[Record]:
        """Up to `count` entries strictly after `after`, parsed."""
        raw = await self.redis.xrange(keys.events_key(tenant_id), min=f"({after}", count=count)
        return [parse_record(tenant_id, _text(entry_id), fields) for entry_id, fields in raw]

    async def create_group(self, tenant_id: str, group: str, at: str) -> None:
        await self.redis.xgroup_create(keys.events_key(tenant_id), group, id=at, mkstream=True)

    async def group_position(self, tenant_id: str, group: str) -> str | None:
        """The group's last-delivered id, or None when the group does not exist."""
        try:
            groups = await self.redis.xinfo_groups(keys.events_key(tenant_id))
        except ResponseError:
            return None
        for info in groups:
            if _text(info["name"]) == group:
                return _text(info["last-delivered-id"])
        return None

    async def destroy_group(self, tenant_id: str, group: str) -> None:
        await self.redis.xgroup_destroy(keys.events_key(tenant_id), group)

    async def move_groups(self, moves: Iterable[tuple[str, str, str]]) -> list[Any]:
        """Set each (tenant, group, id) cursor in one pipelined round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for tenant_id, group, entry_id in moves:
                pipe.xgroup_setid(keys.events_key(tenant_id), group, entry_id)
            return list(await pipe.execute(raise_on_error=False))

    async def dead_letter(self, tenant_id: str, record: DeadLetter) -> bool:
        """Copy `record` to the tenant's DLQ; True when this call wrote it."""
        fields = {**record.fields, "reason": record.reason, "original_id": record.id}
        flat = [part for pair in fields.items() for part in pair]
        written = await self._dead_letter(
            keys=[keys.dlq_key(tenant_id), keys.dlq_seen_key(tenant_id, record.id)],
            args=[DLQ_SEEN_TTL_SECONDS, DLQ_MAXLEN, *flat],
        )
        return bool(written)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
