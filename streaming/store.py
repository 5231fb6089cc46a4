"""The Redis commands the streaming core needs, and nothing else.

Everything here takes tenant ids and group names and builds keys through
`keys`, so the hub and subscriptions never format a key themselves. The client
may be one server's or a Redis Cluster's: every command names one tenant's keys,
which share the tenant's hash slot, and pipelines are split by node.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import orjson
from redis.exceptions import ResponseError

from . import keys
from .batches import Batches
from .connections import AnyRedis, queue_script
from .entries import DeadLetter, Record, parse_record
from .replies import text

logger = logging.getLogger(__name__)

# Append to a stream once per marker key (SET NX), however many writers try: dead
# letters here, bridged copies in bridge.py. Callers keep both keys in one cluster slot.
APPEND_ONCE_SCRIPT = """
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[1]) then
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 3))
  return 1
end
return 0
"""
DLQ_SEEN_TTL_SECONDS = 7 * 24 * 3600
DLQ_MAXLEN = 100_000  # entries kept in a dead-letter stream: the tenants' and the bridge's
ZERO_ID = "0-0"

# Move one tenant's cursors in one call (its keys share a slot, so it runs on a cluster):
# ARGV = now, then (group, id, owner) per move, owner '' for an ephemeral group. Returns
# per move 1 (moved), 0 (a durable name another subscription now holds: not moved) or -1
# (an ephemeral group that is gone: the caller recreates it unless it is ending). A durable
# group that Redis lost (a restart without persistence) is recreated here; the registry
# keeps each durable position too (`pos:<group>`), so a resume reads it in O(1).
_MOVE_SCRIPT = """
local owners, asked = {}, {}
for i = 2, #ARGV, 3 do
  if ARGV[i + 2] ~= '' then
    asked[#asked + 1] = 'owner:' .. ARGV[i]
  end
end
if #asked > 0 then
  local held = redis.call('HMGET', KEYS[2], unpack(asked))
  for j = 1, #asked do
    owners[asked[j]] = held[j]
  end
end
local results, fields = {}, {}
for i = 2, #ARGV, 3 do
  local group, id, owner = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local result = 1
  if owner == '' then
    if not pcall(redis.call, 'XGROUP', 'SETID', KEYS[1], group, id) then
      result = -1
    end
  elseif owners['owner:' .. group] ~= owner then
    result = 0
  else
    if not pcall(redis.call, 'XGROUP', 'SETID', KEYS[1], group, id) then
      redis.call('XGROUP', 'CREATE', KEYS[1], group, id, 'MKSTREAM')
    end
    fields[#fields + 1] = 'seen:' .. group
    fields[#fields + 1] = ARGV[1]
    fields[#fields + 1] = 'pos:' .. group
    fields[#fields + 1] = id
  end
  results[#results + 1] = result
end
if #fields > 0 then
  redis.call('HSET', KEYS[2], unpack(fields))
end
return results
"""
MOVES_PER_CALL = 500  # a call holds Redis for ~1 ms; unpack() stays far below Lua's stack limit
# Claim durable names and read where their cursors are, with what the stream still holds,
# in one call per tenant (a resume costs the same however many subscriptions the stream
# has, and a storm of resumes shares the calls: `streaming.batches`). ARGV = now, then
# (group, owner) per name. Returns {positions, first entry id or false, last generated id,
# max deleted id or false}, a position (or false when there is no such cursor yet) per
# name. The position is the registry's copy, which every move writes; for a group recorded
# before positions were, XINFO GROUPS is read once (O(groups)), and only when such a group
# exists (XINFO CONSUMERS costs O(its consumers): none).
_OPEN_DURABLE_SCRIPT = """
local claims, asked = {}, {}
for i = 2, #ARGV, 2 do
  claims[#claims + 1] = 'owner:' .. ARGV[i]
  claims[#claims + 1] = ARGV[i + 1]
  claims[#claims + 1] = 'seen:' .. ARGV[i]
  claims[#claims + 1] = ARGV[1]
  asked[#asked + 1] = 'pos:' .. ARGV[i]
end
redis.call('HSET', KEYS[2], unpack(claims))
local positions = redis.call('HMGET', KEYS[2], unpack(asked))
local unrecorded = nil
for j = 1, #asked do
  local group = ARGV[2 * j]
  if not positions[j] and pcall(redis.call, 'XINFO', 'CONSUMERS', KEYS[1], group) then
    unrecorded = unrecorded or {}
    unrecorded[group] = j
  end
end
if unrecorded then
  for _, info in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
    local fields = {}
    for i = 1, #info, 2 do
      fields[info[i]] = info[i + 1]
    end
    local j = unrecorded[fields['name']]
    if j then
      positions[j] = fields['last-delivered-id']
    end
  end
end
local ok, info = pcall(redis.call, 'XINFO', 'STREAM', KEYS[1])
if not ok then
  return {positions, false, '0-0', false}
end
local stream = {}
for i = 1, #info, 2 do
  stream[info[i]] = info[i + 1]
end
local first = stream['first-entry']
return {positions, type(first) == 'table' and first[1] or false,
        stream['last-generated-id'], stream['max-deleted-entry-id'] or false}
"""
OPENS_PER_CALL = 500  # names claimed by one call: ~2,000 arguments, far below Lua's stack limit
# Give up a durable name, if we still hold it, leaving the cursor at its final position in
# the same step: a flush of this subscription still on its way (an older position) then
# finds the name released and moves nothing, whenever it lands.
_RELEASE_DURABLE_SCRIPT = """
if redis.call('HGET', KEYS[2], 'owner:' .. ARGV[1]) ~= ARGV[2] then
  redis.call('HSET', KEYS[2], 'seen:' .. ARGV[1], ARGV[3])
  return 0
end
if not pcall(redis.call, 'XGROUP', 'SETID', KEYS[1], ARGV[1], ARGV[4]) then
  redis.call('XGROUP', 'CREATE', KEYS[1], ARGV[1], ARGV[4], 'MKSTREAM')
end
redis.call('HDEL', KEYS[2], 'owner:' .. ARGV[1])
redis.call('HSET', KEYS[2], 'seen:' .. ARGV[1], ARGV[3], 'pos:' .. ARGV[1], ARGV[4])
return 1
"""


@dataclass(frozen=True)
class StreamBounds:
    """What the stream still holds, to tell whether a cursor has expired."""

    first: str | None            # oldest entry, None when empty or missing
    last_generated: str          # newest id ever added (0-0 when missing)
    max_deleted: str | None      # newest id ever trimmed or deleted (Redis >= 7 only)


class RedisStore:
    """Stream reads, cursor (consumer group) moves and dead-lettering."""

    def __init__(self, redis: AnyRedis) -> None:
        self.redis = redis
        self._dead_letter = redis.register_script(APPEND_ONCE_SCRIPT)
        self._move = redis.register_script(_MOVE_SCRIPT)
        self._release_durable = redis.register_script(_RELEASE_DURABLE_SCRIPT)
        self._open_durable = redis.register_script(_OPEN_DURABLE_SCRIPT)
        self._opens: Batches[tuple[str, str], tuple[str | None, StreamBounds]] = Batches(
            self._open_durables, OPENS_PER_CALL
        )

    async def stream_end(self, tenant_id: str) -> str:
        """Id of the newest entry, or 0-0 for an empty or missing stream."""
        newest = await self.redis.xrevrange(keys.events_key(tenant_id), count=1)
        return text(newest[0][0]) if newest else ZERO_ID

    async def bounds(self, tenant_id: str) -> StreamBounds:
        try:
            info = await self.redis.xinfo_stream(keys.events_key(tenant_id))
        except ResponseError:  # no such key
            return StreamBounds(None, ZERO_ID, None)
        first = info.get("first-entry")
        deleted = info.get("max-deleted-entry-id")
        return StreamBounds(
            first=text(first[0]) if first else None,
            last_generated=text(info["last-generated-id"]),
            max_deleted=text(deleted) if deleted is not None else None,
        )

    async def read_after(self, tenant_id: str, after: str, count: int) -> list[Record]:
        """Up to `count` entries strictly after `after`, parsed."""
        raw: Any = await self.redis.xrange(keys.events_key(tenant_id), min=f"({after}", count=count)
        return [parse_record(tenant_id, text(entry_id), fields) for entry_id, fields in raw]

    async def create_group(self, tenant_id: str, group: str, at: str) -> None:
        await self.redis.xgroup_create(keys.events_key(tenant_id), group, id=at, mkstream=True)

    async def open_durable(self, tenant_id: str, group: str, owner: str) -> tuple[str | None, StreamBounds]:
        """Make `owner` the subscription holding a durable name (older ones see they lost it);
        its cursor's position (None when there is no such cursor yet) and the stream's bounds.
        The names a tenant's subscriptions open meanwhile are claimed by the same call."""
        return await self._opens.ask(tenant_id, (group, owner))

    async def _open_durables(
        self, tenant_id: str, names: list[tuple[str, str]]
    ) -> list[tuple[str | None, StreamBounds]]:
        script_keys = [keys.events_key(tenant_id), keys.durable_registry_key(tenant_id)]
        args: list[Any] = [int(time.time())]
        for group, owner in names:
            args += [group, owner]
        positions, first, last, deleted = await self._open_durable(keys=script_keys, args=args)
        bounds = StreamBounds(
            first=text(first) if first else None,
            last_generated=text(last),
            max_deleted=text(deleted) if deleted else None,
        )
        return [((text(position) if position else None), bounds) for position in positions]

    def close(self) -> None:
        """Cancel the calls on their way (at shutdown)."""
        self._opens.close()

    async def create_durable(self, tenant_id: str, group: str, at: str) -> None:
        """Create a durable group at `at`, its position recorded in the registry."""
        await self.create_group(tenant_id, group, at)
        await self.redis.hset(keys.durable_registry_key(tenant_id), f"pos:{group}", at)

    async def destroy_group(self, tenant_id: str, group: str) -> None:
        await self.redis.xgroup_destroy(keys.events_key(tenant_id), group)

    async def move_groups(
        self, moves: Iterable[Move], recreate: Callable[[int], bool] = lambda index: True
    ) -> list[bool]:
        """Set every cursor: one script call per tenant (per `MOVES_PER_CALL` moves), all
        in one pipelined round trip; False where a durable cursor now belongs to another
        subscription. An ephemeral group that vanished is recreated at its cursor where
        `recreate(index)` says so (not for a subscription that is ending: its group was
        destroyed on purpose)."""
        moves = list(moves)
        by_tenant: dict[str, list[int]] = {}
        for index, move in enumerate(moves):
            by_tenant.setdefault(move.tenant_id, []).append(index)
        calls: list[list[int]] = []
        now = int(time.time())
        async with self.redis.pipeline(transaction=False) as pipe:
            for tenant_id, indexes in by_tenant.items():
                script_keys = [keys.events_key(tenant_id), keys.durable_registry_key(tenant_id)]
                for start in range(0, len(indexes), MOVES_PER_CALL):
                    call = indexes[start : start + MOVES_PER_CALL]
                    args: list[Any] = [now]
                    for index in call:
                        move = moves[index]
                        args += [move.group, move.entry_id, move.owner or ""]
                    await queue_script(pipe, self._move, script_keys, args)
                    calls.append(call)
            replies = await pipe.execute()
        results = [1] * len(moves)
        for call, reply in zip(calls, replies, strict=True):
            for index, result in zip(call, reply, strict=True):
                results[index] = int(result)
        for index, result in enumerate(results):
            if result == -1 and recreate(index):
                move = moves[index]
                logger.warning("group %s was gone; recreating it at %s", move.group, move.entry_id)
                with suppress(ResponseError):  # BUSYGROUP: recreated meanwhile
                    await self.create_group(move.tenant_id, move.group, move.entry_id)
        return [result != 0 for result in results]

    async def process_figures(self) -> dict[str, dict[str, dict[str, int]]]:
        """Every live process's published figures, by process id. On a cluster the
        SCAN runs on every primary, and the GETs are pipelined per node (their keys
        have no common slot, so one MGET cannot fetch them)."""
        names = [text(k, "replace") async for k in self.redis.scan_iter(match=keys.PROCESS_PATTERN, count=500)]
        values: list[Any] = []
        if names:
            async with self.redis.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.get(name)
                values = await pipe.execute()
        found: dict[str, dict[str, dict[str, int]]] = {}
        for name, value in zip(names, values, strict=True):
            try:
                figures = orjson.loads(value) if value else None
            except orjson.JSONDecodeError:
                figures = None
            if isinstance(figures, dict):
                found[name.rsplit(":", 1)[1]] = figures
        return found

    async def release_durable(self, tenant_id: str, group: str, owner: str, position: str) -> None:
        """Leave the durable cursor at `position` and give up the name, in one step."""
        script_keys = [keys.events_key(tenant_id), keys.durable_registry_key(tenant_id)]
        await self._release_durable(keys=script_keys, args=[group, owner, int(time.time()), position])

    async def durable_owners(self, names: list[tuple[str, str]]) -> list[str | None]:
        """Current owner of each (tenant, group) durable name: one HMGET per tenant."""
        by_tenant: dict[str, list[int]] = {}
        for index, (tenant_id, _) in enumerate(names):
            by_tenant.setdefault(tenant_id, []).append(index)
        async with self.redis.pipeline(transaction=False) as pipe:
            for tenant_id, indexes in by_tenant.items():
                pipe.hmget(keys.durable_registry_key(tenant_id), [f"owner:{names[i][1]}" for i in indexes])
            replies = await pipe.execute()
        owners: list[str | None] = [None] * len(names)
        for indexes, reply in zip(by_tenant.values(), replies, strict=True):
            for index, owner in zip(indexes, reply, strict=True):
                owners[index] = None if owner is None else text(owner)
        return owners

    async def dead_letter(self, tenant_id: str, record: DeadLetter) -> bool:
        """Copy `record` to the tenant's DLQ; True when this call wrote it."""
        fields = {**record.fields, "reason": record.reason, "original_id": record.id}
        flat = [part for pair in fields.items() for part in pair]
        written = await self._dead_letter(
            keys=[keys.dlq_key(tenant_id), keys.dlq_seen_key(tenant_id, record.id)],
            args=[DLQ_SEEN_TTL_SECONDS, DLQ_MAXLEN, *flat],
        )
        return bool(written)


@dataclass(frozen=True, slots=True)
class Move:
    """Move `group` to `entry_id`; `owner` is set for durable cursors."""

    tenant_id: str
    group: str
    entry_id: str
    owner: str | None = None
