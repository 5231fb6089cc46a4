"""Revoked tokens: who may no longer connect, and word of it to every gateway process.

A revocation covers the tokens of one user of a tenant, or of the whole tenant, issued
before a moment (an earlier `iat`, or none). It is written twice:

- as a key per scope (`keys.revoked_key`) holding the moment, which every authentication
  reads (one MGET, shared by the authentications of a tenant that arrive together: the
  tenant's key and its users' share the tenant's cluster slot). The key
  expires by itself `lifetime` seconds after the moment: the gateway refuses tokens that live
  longer than that (RAGLINE_MAX_TOKEN_LIFETIME, `gateway.auth`), so by then no token the
  revocation covers can still be valid;
- as an entry of `ragline:revocations` (trimmed to the last MAX_ENTRIES), which every
  process reads every few hundred milliseconds (`RevocationFollower`) to end the open
  connections it covers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from redis.commands.core import AsyncScript

from . import keys
from .batches import Batches
from .connections import REDIS_ERRORS, AnyRedis
from .replies import text

MAX_ENTRIES = 10_000
READ_COUNT = 1_000
START_SLACK = 5.0  # seconds of revocations before a follower's start it reads too (clock skew)
# Keep the later of two moments (two revocations of one scope from hosts whose clocks differ).
_KEEP_LATER = """
local old = redis.call('GET', KEYS[1])
local moment = ARGV[1]
if old and tonumber(old) > tonumber(moment) then moment = old end
local ttl = tonumber(moment) + tonumber(ARGV[2]) - tonumber(ARGV[1])
redis.call('SET', KEYS[1], moment, 'PX', string.format('%d', ttl))
return moment
"""


@dataclass(frozen=True)
class Revocation:
    """Tokens of `user_id` in `tenant_id` (every user when None) issued before `revoked_before`."""

    tenant_id: str
    user_id: str | None
    revoked_before: float  # unix seconds

    def covers(self, tenant_id: str, user_id: str, issued_at: float | None) -> bool:
        if tenant_id != self.tenant_id or (self.user_id is not None and self.user_id != user_id):
            return False
        return issued_at is None or issued_at < self.revoked_before


class Revocations:
    """Writes revocations and answers whether one covers a token."""

    def __init__(self, redis: AnyRedis, lifetime: float) -> None:
        self.redis = redis
        self.lifetime = lifetime
        self._keep_later: AsyncScript = redis.register_script(_KEEP_LATER)
        # The moments last read or written, by (tenant, user or None): what an
        # authentication goes by while Redis does not answer.
        self._known: dict[tuple[str, str | None], float] = {}
        self._reads: Batches[str, tuple[float | None, float | None]] = Batches(self._read)

    async def revoke(self, tenant_id: str, user_id: str | None, now: float | None = None) -> Revocation:
        """Revoke the scope's tokens issued before now (ValueError for an invalid id)."""
        key = keys.revoked_key(tenant_id, user_id)
        moment_ms = round((time.time() if now is None else now) * 1000)
        lifetime_ms = round(self.lifetime * 1000)
        kept = int(text(await self._keep_later(keys=[key], args=[moment_ms, lifetime_ms])))
        revocation = Revocation(tenant_id, user_id, kept / 1000)
        await self.redis.xadd(
            keys.REVOCATIONS_KEY,
            {"tenant_id": tenant_id, "user_id": user_id or "", "revoked_before": str(kept)},
            maxlen=MAX_ENTRIES, approximate=True,
        )
        self.learned(revocation)
        return revocation

    async def covering(self, tenant_id: str, user_id: str, issued_at: float | None) -> Revocation | None:
        """The revocation that covers a token of this identity, if any. Redis is asked each
        time (the authentications of a tenant that arrive together share one MGET); while
        it does not answer, the revocations this process last knew count."""
        scopes: list[str | None] = [None, user_id]
        moments: tuple[float | None, float | None]
        try:
            moments = await self._reads.ask(tenant_id, user_id)
        except REDIS_ERRORS:
            moments = (self._known.get((tenant_id, None)), self._known.get((tenant_id, user_id)))
        for scope, moment in zip(scopes, moments, strict=True):
            if moment is not None:
                revocation = Revocation(tenant_id, scope, moment)
                self.learned(revocation)
                if revocation.covers(tenant_id, user_id, issued_at):
                    return revocation
        return None

    async def _read(self, tenant_id: str, users: list[str]) -> list[tuple[float | None, float | None]]:
        """The tenant's moment and each user's, in one MGET (the keys share the tenant's slot)."""
        distinct = list(dict.fromkeys(users))
        names = [keys.revoked_key(tenant_id, None)] + [keys.revoked_key(tenant_id, user) for user in distinct]
        stored = [None if value is None else int(text(value)) / 1000 for value in await self.redis.mget(names)]
        by_user = dict(zip(distinct, stored[1:], strict=True))
        return [(stored[0], by_user[user]) for user in users]

    def close(self) -> None:
        """Cancel the reads on their way (at shutdown)."""
        self._reads.close()

    def learned(self, revocation: Revocation) -> None:
        """Remember a revocation (the latest moment of its scope), forgetting expired ones."""
        scope = (revocation.tenant_id, revocation.user_id)
        self._known[scope] = max(self._known.get(scope, 0.0), revocation.revoked_before)
        horizon = time.time() - self.lifetime
        for old in [s for s, moment in self._known.items() if moment < horizon]:
            del self._known[old]

    def follower(self) -> RevocationFollower:
        return RevocationFollower(self)


class RevocationFollower:
    """Reads the revocations written since it started (give or take START_SLACK), in order;
    whatever Redis was doing at the start (an outage delays the first read, loses nothing)."""

    def __init__(self, revocations: Revocations) -> None:
        self.revocations = revocations
        self._last = f"{round((time.time() - START_SLACK) * 1000)}-0"  # the last entry read

    async def read(self) -> list[Revocation]:
        """The revocations written since the previous read."""
        redis = self.revocations.redis
        reply: Any = await redis.xread({keys.REVOCATIONS_KEY: self._last}, count=READ_COUNT)
        found: list[Revocation] = []
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                self._last = text(entry_id)
                revocation = _parse(fields)
                if revocation is not None:
                    self.revocations.learned(revocation)
                    found.append(revocation)
        return found


def _parse(fields: dict[Any, Any]) -> Revocation | None:
    """An entry as `Revocations.revoke` writes it; None for anything else on the key."""
    values = {text(name): text(value) for name, value in fields.items()}
    tenant_id, user_id = values.get("tenant_id", ""), values.get("user_id", "")
    try:
        moment = int(values.get("revoked_before", "")) / 1000
    except ValueError:
        return None
    if not keys.is_valid_id(tenant_id) or (user_id and not keys.is_valid_id(user_id)):
        return None
    return Revocation(tenant_id, user_id or None, moment)


__all__ = ["Revocation", "RevocationFollower", "Revocations"]
