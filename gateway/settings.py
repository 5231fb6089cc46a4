"""All configuration, read once from `RAGLINE_*` environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from types import NoneType, UnionType
from typing import Any, get_args, get_type_hints

from ..streaming.hub import HubConfig
from ..streaming.janitor import JanitorConfig

FORBIDDEN_ALGORITHMS = frozenset({"none", ""})
MIN_HS_KEY_BYTES = 32
LOG_FORMATS = frozenset({"plain", "json"})
MIN_FRAME_BYTES = 1024


class SettingsError(ValueError):
    """A RAGLINE_* variable has a value the gateway cannot run with."""


@dataclass(frozen=True)
class Settings:
    """Every field maps to `RAGLINE_<FIELD>`; see the README's configuration table."""

    redis_url: str | None = None            # unset: embedded Redis under data_dir
    data_dir: Path = Path(".ragline")
    host: str = "127.0.0.1"
    port: int = 8000
    jwt_secret: str | None = None           # unset: a development secret in data_dir
    jwt_algorithms: tuple[str, ...] = ("HS256",)
    jwt_public_key_file: Path | None = None  # PEM for RS*/ES*/PS* algorithms
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_leeway: float = 0.0
    jwt_jwks_url: str | None = None         # JWKS for RS*/ES*/PS* keys, instead of a key file
    jwt_jwks_ttl: float = 300.0             # seconds a fetched JWKS is used before a refetch
    jwt_jwks_min_refresh: float = 30.0      # least seconds between refetches (unknown kids)
    max_token_lifetime: float = 86400.0     # longest accepted token (exp - iat); revocations expire after it
    control_interval: float = 0.5           # seconds between reads of revocations and of presence
    allowed_origins: tuple[str, ...] = ()
    init_timeout: float = 5.0               # seconds to send connection_init
    ping_interval: float = 30.0             # seconds between server pings; 0 turns them off
    ping_timeout: float = 20.0              # seconds a ping may wait for its pong
    max_frame_bytes: int = 64 * 1024        # largest inbound WebSocket message
    max_subscriptions_per_connection: int = 20
    max_connections_per_user: int = 100     # WebSockets per (tenant, user) per process; 0: no limit
    max_connections_per_tenant: int = 2000  # WebSockets per tenant per process; 0: no limit
    subscribe_rate: float = 10.0            # subscribe/complete messages per second per connection
    subscribe_burst: int = 40               # ... allowed in a burst; 0 rate: no limit
    max_query_depth: int = 10
    max_query_tokens: int = 1000
    max_query_aliases: int = 15
    introspection: bool = True              # off in production, with GraphiQL
    redis_max_connections: int = 6          # command pool; the reader has one more (10 per node on a cluster)
    # the streaming core's own defaults
    ack_interval: float = HubConfig.ack_interval           # seconds between cursor flushes
    durable_ttl: float = JanitorConfig.durable_ttl         # idle durable cursors expire after this
    janitor_interval: float = JanitorConfig.interval       # seconds between sweeps for orphaned groups
    orphan_timeout: float = JanitorConfig.orphan_timeout   # a process silent this long counts as dead
    shutdown_timeout: float = 8.0           # SIGTERM: seconds to complete operations
    slow_consumer_timeout: float = 30.0     # a frame unwritten this long ends the subscription
    log_level: str = "info"
    log_format: str = "plain"               # or "json": one object per line
    graphiql: bool = True
    demo: bool = False                      # run the demo producer (tenant "demo")
    # seed-compat endpoints
    ws_heartbeat: float = 30.0              # seconds between /ws heartbeats; 0 turns them off
    ws_orders_heartbeat: float = 45.0       # seconds between /ws/orders heartbeats; 0 turns them off
    sse_heartbeat: float = 15.0             # seconds between SSE heartbeat comments; 0 turns them off
    # bridge from the shared streams (streaming/bridge.py)
    bridge: bool = False                    # `ragline serve` also runs the bridge (`--bridge`)

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build `Settings` from the environment: each field from `RAGLINE_<FIELD>`, its
    default where that is unset or empty; raises SettingsError with the variable's name."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for spec in fields(Settings):
        raw = env.get(_variable(spec.name))
        if raw:
            values[spec.name] = _parse(spec.name, raw)
    settings = Settings(**values)
    validate(settings)
    return settings


def validate(settings: Settings) -> None:
    """Refuse, at start-up, settings the gateway would run badly or unsafely with."""
    _validate_jwt(settings)
    if not 0 < settings.port < 65536:
        raise SettingsError("RAGLINE_PORT must be between 1 and 65535")
    if settings.ping_interval < 0 or (settings.ping_interval > 0 and settings.ping_timeout <= 0):
        raise SettingsError("RAGLINE_PING_INTERVAL must be >= 0 and RAGLINE_PING_TIMEOUT > 0")
    if settings.max_frame_bytes < MIN_FRAME_BYTES:
        raise SettingsError(f"RAGLINE_MAX_FRAME_BYTES must be at least {MIN_FRAME_BYTES}")
    if settings.log_format not in LOG_FORMATS:
        raise SettingsError("RAGLINE_LOG_FORMAT must be 'plain' or 'json'")
    for name in ("max_connections_per_user", "max_connections_per_tenant", "subscribe_rate", "subscribe_burst"):
        if getattr(settings, name) < 0:
            raise SettingsError(f"{_variable(name)} must be >= 0")
    if settings.max_token_lifetime <= 0 or settings.control_interval <= 0:
        raise SettingsError("RAGLINE_MAX_TOKEN_LIFETIME and RAGLINE_CONTROL_INTERVAL must be > 0")
    for name in ("max_subscriptions_per_connection", "max_query_depth", "max_query_tokens", "max_query_aliases"):
        if getattr(settings, name) < 1:
            raise SettingsError(f"{_variable(name)} must be >= 1")


def _validate_jwt(settings: Settings) -> None:
    """`none` never; HS* secrets of at least 32 bytes; RS/ES/PS need exactly one key source."""
    if any(a.lower() in FORBIDDEN_ALGORITHMS for a in settings.jwt_algorithms):
        raise SettingsError("RAGLINE_JWT_ALGORITHMS must not allow 'none'")
    short = settings.jwt_secret is not None and len(settings.jwt_secret.encode()) < MIN_HS_KEY_BYTES
    if short and any(a.startswith("HS") for a in settings.jwt_algorithms):
        raise SettingsError(f"RAGLINE_JWT_SECRET must be at least {MIN_HS_KEY_BYTES} bytes")
    if settings.jwt_public_key_file is not None and settings.jwt_jwks_url is not None:
        raise SettingsError("set RAGLINE_JWT_PUBLIC_KEY_FILE or RAGLINE_JWT_JWKS_URL, not both")
    asymmetric = [a for a in settings.jwt_algorithms if not a.startswith("HS")]
    if asymmetric and settings.jwt_public_key_file is None and settings.jwt_jwks_url is None:
        raise SettingsError(
            f"RAGLINE_JWT_ALGORITHMS allows {asymmetric[0]}: set RAGLINE_JWT_PUBLIC_KEY_FILE or RAGLINE_JWT_JWKS_URL"
        )


def _variable(name: str) -> str:
    return f"RAGLINE_{name.upper()}"


def _parse(name: str, raw: str) -> object:
    """The value of field `name` written as `raw`, by the field's type."""
    kind = _TYPES[name]
    if kind is bool:
        return raw.lower() not in {"0", "false", "no", "off"}
    if kind is int or kind is float:
        try:
            return kind(raw)
        except ValueError:
            raise SettingsError(f"{_variable(name)} must be a number, got {raw!r}") from None
    if kind == tuple[str, ...]:
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    if name in _CASE_INSENSITIVE:
        return raw.lower()
    return kind(raw)  # str or Path


def _field_type(hint: Any) -> Any:
    """`Path | None` -> `Path`: unset is the default, never a value."""
    if isinstance(hint, UnionType):
        return next(arg for arg in get_args(hint) if arg is not NoneType)
    return hint


_TYPES = {name: _field_type(hint) for name, hint in get_type_hints(Settings).items()}
_CASE_INSENSITIVE = frozenset({"log_level", "log_format"})
