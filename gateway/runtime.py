"""The per-process resources behind the app: Redis clients, the hub, the secret."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from redis.backoff import ExponentialBackoff

from ..resolvers.context import Principal
from ..resolvers.control import LiveControl
from ..streaming.bridge import Bridge, BridgeConfig, default_consumer
from ..streaming.connections import REDIS_ERRORS, AnyRedis, open_client
from ..streaming.hub import Hub, HubConfig, new_process_id
from ..streaming.janitor import Janitor, JanitorConfig
from ..streaming.presence import PresenceBoard
from ..streaming.readers import StreamReader, open_reader
from ..streaming.revocations import Revocation, Revocations
from .auth import Authenticator, AuthError, AuthFailure
from .embedded import RedisServer, ensure_embedded
from .limits import ConnectionLimits
from .metrics import CountingRetry, GatewayMetrics
from .settings import Settings
from .watchdog import WriteWatch

logger = logging.getLogger(__name__)
DEV_SECRET_FILE = "jwt-secret"
# Fail fast on a dead Redis: the hub retries with its own backoff.
_CONNECTION: dict[str, Any] = {
    "retry": CountingRetry(ExponentialBackoff(cap=0.5, base=0.05), retries=2),  # counted in /metrics
    "socket_connect_timeout": 5,
    # With a socket_timeout, redis-py wraps each send in asyncio.wait_for, which on
    # Python 3.11 can swallow a cancellation (gh-86296) and leak a subscription's group.
    "socket_timeout": None,
}


class Drainable(Protocol):
    """A client connection (`gateway.connection.Connection`): it can end its operations and
    close for shutdown, and end itself when a revocation covers its token."""

    async def drain(self) -> None: ...

    def revoked(self, revocation: Revocation) -> bool: ...


def resolve_secret(settings: Settings) -> tuple[str, bool]:
    """The JWT secret and whether it is the generated development one."""
    if settings.jwt_secret is not None:
        return settings.jwt_secret, False
    path = settings.data_dir / DEV_SECRET_FILE
    if not path.exists():
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(48))
    return path.read_text().strip(), True


def resolve_redis_url(settings: Settings) -> tuple[str, RedisServer | None]:
    """RAGLINE_REDIS_URL, or the embedded Redis (started if needed)."""
    if settings.redis_url is not None:
        return settings.redis_url, None
    return ensure_embedded(settings.data_dir)


async def run_bridge(url: str, consumer: str) -> None:
    """The bridge on connections of its own (its blocking reads must not hold the
    gateway's pool), until cancelled."""
    client = open_client(url, client_name=f"ragline-bridge:{consumer}", **_CONNECTION)
    try:
        await Bridge(client, BridgeConfig(consumer=consumer)).run()
    finally:
        await client.aclose()


@dataclass
class Runtime:
    """Started by the app's lifespan; owns every connection and task it makes."""

    settings: Settings
    secret: str
    authenticator: Authenticator
    process_id: str = field(default_factory=new_process_id)
    hub: Hub | None = None
    redis: AnyRedis | None = None
    janitor: Janitor | None = None
    live: LiveControl | None = None  # presence, revocations, stats updates (resolvers.live)
    connections: set[Drainable] = field(default_factory=set)  # every open connection (gateway.connection)
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)
    writes: WriteWatch = field(init=False)  # every connection's write deadline
    limits: ConnectionLimits = field(init=False)  # connections per user and per tenant, on every transport
    _reader: StreamReader | None = None
    _embedded: RedisServer | None = None
    _janitor_task: asyncio.Task[None] | None = None
    _revocations_task: asyncio.Task[None] | None = None
    _bridge_task: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self.writes = WriteWatch(self.settings.slow_consumer_timeout)
        self.limits = ConnectionLimits.from_settings(self.settings)

    @classmethod
    def from_settings(cls, settings: Settings) -> Runtime:
        secret, is_dev = resolve_secret(settings)
        if is_dev:
            logger.warning(
                "RAGLINE_JWT_SECRET is unset: using the development secret in %s",
                Path(settings.data_dir) / DEV_SECRET_FILE,
            )
        return cls(settings, secret, Authenticator.from_settings(settings, secret))

    async def start(self) -> None:
        url, self._embedded = resolve_redis_url(self.settings)
        if self.settings.redis_url is None:
            logger.info("RAGLINE_REDIS_URL is unset: using the embedded Redis at %s", url)
        name = f"ragline-gateway:{self.process_id}"  # visible in CLIENT LIST (of each node, on a cluster)
        # One server or a cluster (redis+cluster://): the command pool is bounded per node either way.
        max_connections = self.settings.redis_max_connections
        self.redis = open_client(url, max_connections=max_connections, client_name=name, **_CONNECTION)
        self._reader = open_reader(url, self.redis, client_name=f"{name}:reader", **_CONNECTION)
        self.hub = Hub(self.redis, self._reader, self._hub_config())
        self.janitor = Janitor(self.redis, self._janitor_config(), self.hub.figures)
        settings = self.settings
        self.live = LiveControl(
            self.hub,
            PresenceBoard(self.redis, self.process_id, interval=settings.control_interval),
            Revocations(self.redis, settings.max_token_lifetime + settings.jwt_leeway),
        )
        try:
            await self.janitor.beat()
        except REDIS_ERRORS as error:
            logger.error("Redis unreachable at start-up (%s); the gateway will keep retrying", error)
        await self.hub.start()
        self._janitor_task = asyncio.create_task(self.janitor.run(), name="ragline-janitor")
        self._revocations_task = asyncio.create_task(self._follow_revocations(), name="ragline-revocations")
        if self.settings.bridge:
            self._bridge_task = asyncio.create_task(run_bridge(url, default_consumer()), name="ragline-bridge")

    async def authenticate(self, token: str | None) -> Principal:
        """The principal behind `token`, on every transport: verified (`Authenticator`), and
        not covered by a revocation. AuthError when refused (counted by reason)."""
        principal = await self.authenticator.authenticate(token)
        if self.live is not None:
            revocation = await self.live.revocations.covering(
                principal.tenant_id, principal.user_id, principal.issued_at
            )
            if revocation is not None:
                self.authenticator.refused(AuthFailure.REVOKED)
                raise AuthError("token revoked", AuthFailure.REVOKED)
        return principal

    async def _follow_revocations(self) -> None:
        """Every RAGLINE_CONTROL_INTERVAL: end the connections that new revocations cover."""
        assert self.live is not None
        follower = self.live.revocations.follower()
        while True:
            try:
                for revocation in await follower.read():
                    ended = sum(connection.revoked(revocation) for connection in list(self.connections))
                    if ended:
                        logger.info("ended %s connections of tenant %s: revoked", ended, revocation.tenant_id)
            except REDIS_ERRORS as error:
                logger.debug("revocations not read: %s", error)
            await asyncio.sleep(self.settings.control_interval)

    def _hub_config(self) -> HubConfig:
        return HubConfig(
            process_id=self.process_id,
            ack_interval=self.settings.ack_interval,
        )

    def _janitor_config(self) -> JanitorConfig:
        return JanitorConfig(
            process_id=self.process_id,
            orphan_timeout=self.settings.orphan_timeout,
            interval=self.settings.janitor_interval,
            durable_ttl=self.settings.durable_ttl,
        )

    async def drain(self) -> None:
        """Graceful shutdown: refuse new subscriptions, complete the open ones, close sockets with 1001."""
        if self.hub is not None:
            self.hub.accepting = False
        connections = list(self.connections)
        if not connections:
            return
        logger.info("draining %s connections", len(connections))
        done, pending = await asyncio.wait(
            [asyncio.create_task(c.drain()) for c in connections], timeout=self.settings.shutdown_timeout
        )
        for task in pending:
            task.cancel()
        if pending:
            logger.warning("%s connections did not drain within %ss", len(pending), self.settings.shutdown_timeout)
        for task in done:
            error = None if task.cancelled() else task.exception()
            if error is not None:
                logger.warning("drain failed", exc_info=error)

    async def stop(self) -> None:
        if self._bridge_task is not None:
            self._bridge_task.cancel()
            with suppress(asyncio.CancelledError):
                await self._bridge_task
        for task in (self._janitor_task, self._revocations_task):
            if task is not None:
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
        if self.live is not None:
            await self.live.close()
        if self.hub is not None:
            await self.hub.close()
        if self.janitor is not None:
            with suppress(*REDIS_ERRORS):
                await self.janitor.retire()
        for client in (self.redis, self._reader):
            if client is not None:
                await client.aclose()
        if self._embedded is not None:
            self._embedded.stop()
            self._embedded = None
