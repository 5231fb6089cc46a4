"""The per-process resources behind the app: Redis clients, the hub, the secret."""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis

from streaming.hub import Hub, HubConfig, new_process_id

from .auth import Authenticator
from .embedded import RedisServer, ensure_embedded
from .settings import Settings

logger = logging.getLogger(__name__)
DEV_SECRET_FILE = "jwt-secret"


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


@dataclass
class Runtime:
    """Started by the app's lifespan; owns every connection and task it makes."""

    settings: Settings
    secret: str
    authenticator: Authenticator
    process_id: str = field(default_factory=new_process_id)
    hub: Hub | None = None
    redis: Redis | None = None
    _reader: Redis | None = None
    _embedded: RedisServer | None = None

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
        name = f"ragline-gateway:{self.process_id}"  # visible in CLIENT LIST
        pool = BlockingConnectionPool.from_url(
            url, max_connections=self.settings.redis_max_connections, timeout=None, client_name=name
        )
        self.redis = Redis(connection_pool=pool)
        reader_pool = ConnectionPool.from_url(url, max_connections=1, client_name=f"{name}:reader")
        self._reader = Redis(connection_pool=reader_pool)
        config = HubConfig(process_id=self.process_id, ack_interval=self.settings.ack_interval)
        self.hub = Hub(self.redis, self._reader, config)
        await self.hub.start()

    async def stop(self) -> None:
        if self.hub is not None:
            await self.hub.close()
        for client in (self.redis, self._reader):
            if client is not None:
                await client.aclose()
        if self._embedded is not None:
            self._embedded.stop()
            self._embedded = None
