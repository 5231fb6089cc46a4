"""Fixtures: a real Redis (started here unless RAGLINE_TEST_REDIS_URL is set) and real gateways.

RAGLINE_TEST_CLUSTER=1 makes `redis_url` a local Redis Cluster (3 primaries, 1 replica
each: tests/cluster.py) instead of one server, so any suite can run against a cluster.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from cluster import LocalCluster, cluster_requested
from helpers import SECRET, GatewayServer, new_tenant, sync_redis
from ragline.gateway.embedded import RedisServer
from ragline.gateway.settings import Settings

pytest_plugins = ["session_logs"]  # the session's log must hold no token (tests/session_logs.py)


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def local_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A Redis Cluster shared by the session's tests; started only when one asks for it."""
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster")).start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def redis_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = os.environ.get("RAGLINE_TEST_REDIS_URL")
    if external:
        yield external
        return
    if cluster_requested():
        yield request.getfixturevalue("local_cluster").url
        return
    server = RedisServer.on_port(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server.url
    server.stop()


@pytest.fixture(scope="session")
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = sync_redis(redis_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def base_settings(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(
        redis_url=redis_url,
        data_dir=Path(tmp_path_factory.mktemp("data")),
        jwt_secret=SECRET,
        log_level="warning",
        janitor_interval=1.0,
    )


@pytest.fixture(scope="session")
def gateway(base_settings: Settings) -> Iterator[GatewayServer]:
    server = GatewayServer(base_settings).start()
    yield server
    server.stop()


@pytest.fixture
def make_gateway(base_settings: Settings) -> Iterator[Callable[..., GatewayServer]]:
    started: list[GatewayServer] = []

    def make(**overrides: object) -> GatewayServer:
        server = GatewayServer(base_settings.with_overrides(**overrides)).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def tenant() -> str:
    return new_tenant()
