"""Per-connection and per-document limits: what one client may cost the gateway.

Each limit is a setting (README, "Limits") answered with a specific code: an
error with `RATE_LIMITED` or `TOO_MANY_SUBSCRIPTIONS` or a close with 4429
(each counted in `ragline_limit_refusals_total{limit}`), or the validation
error of the document limit a query broke.

The document limits are Strawberry extensions; the shared fast path
(`resolvers.shared.Planner`) parses and validates documents itself, so it is
given the very same rules and token limit (`planner_options`): a document
refused on one path is refused on the other, with the same message.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import partial
from typing import TypeVar

from graphql import ASTValidationRule, specified_rules
from strawberry.extensions import (
    AddValidationRules,
    DisableIntrospection,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    QueryDepthLimiter,
    SchemaExtension,
)
from strawberry.schema.validation_rules.maybe_null import MaybeNullValidationRule
from strawberry.schema.validation_rules.one_of import OneOfInputValidationRule

from ..resolvers.context import Principal
from ..schema.errors import ErrorCode, GatewayError
from . import closes
from .settings import Settings

ExtensionFactory = Callable[[], SchemaExtension]
K = TypeVar("K")


class Limit(StrEnum):
    """The `limit` label of `ragline_limit_refusals_total`."""

    SUBSCRIBE_RATE = "subscribe_rate"
    SUBSCRIPTIONS = "subscriptions_per_connection"
    USER_CONNECTIONS = "connections_per_user"
    TENANT_CONNECTIONS = "connections_per_tenant"


class TokenBucket:
    """`rate` operations per second with bursts of `burst`; a rate of 0 means no limit."""

    __slots__ = ("_burst", "_rate", "_stamp", "_tokens")

    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._burst = float(max(burst, 1))
        self._tokens = self._burst
        self._stamp = time.monotonic()

    def take(self) -> bool:
        """Spend one token; False (nothing spent) when none is left."""
        if self._rate <= 0:
            return True
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


def rate_limited(settings: Settings) -> GatewayError:
    return GatewayError(
        ErrorCode.RATE_LIMITED,
        f"Too many subscribe/complete messages: at most {settings.subscribe_rate:g} per second "
        f"(bursts of {settings.subscribe_burst}); retry later",
    )


def too_many_subscriptions(settings: Settings) -> GatewayError:
    return GatewayError(
        ErrorCode.TOO_MANY_SUBSCRIPTIONS,
        f"Subscription limit reached: at most {settings.max_subscriptions_per_connection} per connection",
    )


class ConnectionRefused(Exception):
    """A connection over a limit: a WebSocket closes as `ending` says (legacy graphql-ws
    sends `connection_error` with the reason first); an HTTP stream answers 429."""

    def __init__(self, reason: str, limit: Limit) -> None:
        super().__init__(reason)
        self.reason = reason
        self.limit = limit
        self.ending = closes.too_many_connections(reason)




@dataclass
class ConnectionLimits:
    """Open WebSockets per (tenant, user) and per tenant in this process."""

    per_user: int
    per_tenant: int
    _users: dict[tuple[str, str], int] = field(default_factory=dict)
    _tenants: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(settings.max_connections_per_user, settings.max_connections_per_tenant)

    def acquire(self, principal: Principal) -> None:
        """Count the connection in, or raise ConnectionRefused (nothing counted)."""
        user = (principal.tenant_id, principal.user_id)
        if self.per_user and self._users.get(user, 0) >= self.per_user:
            raise ConnectionRefused(f"Too many connections for this user (at most {self.per_user})", Limit.USER_CONNECTIONS)
        if self.per_tenant and self._tenants.get(principal.tenant_id, 0) >= self.per_tenant:
            raise ConnectionRefused(f"Too many connections for this tenant (at most {self.per_tenant})", Limit.TENANT_CONNECTIONS)
        self._users[user] = self._users.get(user, 0) + 1
        self._tenants[principal.tenant_id] = self._tenants.get(principal.tenant_id, 0) + 1

    def release(self, principal: Principal) -> None:
        """Count an acquired connection out; empty entries go, so the maps stay small."""
        _decrement(self._users, (principal.tenant_id, principal.user_id))
        _decrement(self._tenants, principal.tenant_id)


def _decrement(counts: dict[K, int], key: K) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)


def schema_extensions(settings: Settings) -> list[ExtensionFactory]:
    """The document limits as Strawberry extension factories (one instance per operation)."""
    factories: list[ExtensionFactory] = [
        partial(MaxTokensLimiter, max_token_count=settings.max_query_tokens),
        partial(QueryDepthLimiter, max_depth=settings.max_query_depth),
        partial(MaxAliasesLimiter, max_alias_count=settings.max_query_aliases),
    ]
    if not settings.introspection:
        factories.append(DisableIntrospection)
    return factories


@dataclass(frozen=True)
class PlannerOptions:
    """What `resolvers.shared.Planner` needs to refuse exactly what Strawberry refuses."""

    rules: tuple[type[ASTValidationRule], ...]
    max_tokens: int | None


def planner_options(extensions: Sequence[ExtensionFactory]) -> PlannerOptions:
    """The validation rules and token limit Strawberry applies with `extensions`:
    graphql-core's specified rules, the extensions' rules, then Strawberry's own two."""
    instances = [make() for make in extensions]
    added = [rule for e in instances if isinstance(e, AddValidationRules) for rule in e.validation_rules]
    tokens = [e.max_token_count for e in instances if isinstance(e, MaxTokensLimiter)]
    rules = (*specified_rules, *added, MaybeNullValidationRule, OneOfInputValidationRule)
    return PlannerOptions(rules, min(tokens) if tokens else None)
