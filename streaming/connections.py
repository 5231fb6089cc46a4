"""Redis clients for one server or a Redis Cluster, chosen by the URL.

`redis://`, `rediss://` and `unix://` name one server. `redis+cluster://host:port[,host:port...]`
(`rediss+cluster://` for TLS) names a Redis Cluster by one or more of its nodes; the
client finds the others, follows the slot map, MOVED and ASK, and refreshes the map
after a failover. Everything else in `streaming/` takes either kind of client
(`AnyRedis`), so single-node and cluster deployments share one code path.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.asyncio.connection import SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisClusterException, RedisError

AnyRedis = Redis | RedisCluster
# What a Redis outage or a cluster reconfiguration raises; RedisClusterException
# (e.g. a slot not covered during a failover) is not a RedisError.
REDIS_ERRORS = (RedisError, RedisClusterException, OSError)
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
DEFAULT_PORT = 6379
_GATED: ContextVar[bool] = ContextVar("ragline_cluster_gated", default=False)


def is_cluster_url(url: str) -> bool:
    """Whether `url` names a Redis Cluster (`redis+cluster://` or `rediss+cluster://`)."""
    return url.split("://", 1)[0].lower() in CLUSTER_SCHEMES


def open_client(url: str, *, max_connections: int | None = None, **options: Any) -> AnyRedis:
    """A command client for `url`. With `max_connections`, a command waits for a free
    connection rather than failing: at most that many per process on one server, and
    at most that many per node on a cluster."""
    if is_cluster_url(url):
        return BoundedRedisCluster(**_cluster_kwargs(url), limit=max_connections, **options)
    if max_connections is None:
        return Redis.from_url(url, **options)
    pool = BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=None, **options)
    return Redis(connection_pool=pool)


def open_cluster_reads(url: str, **options: Any) -> RedisCluster:
    """The cluster reader's own client. It runs one pipeline per node at a time, so one
    connection per node is enough (and keeps redis-py's ASKING on the connection of
    the command it precedes); and it leaves retries to the reader: redis-py retries a
    failed pipeline by closing every node's connections first, which would stall the
    healthy nodes' reads whenever one node fails."""
    options["retry"] = Retry(NoBackoff(), retries=0)
    return RedisCluster(**_cluster_kwargs(url), max_connections=1, **options)


def _cluster_kwargs(url: str) -> dict[str, Any]:
    nodes, kwargs = parse_cluster_url(url)
    host, port = nodes[0]
    return {"host": host, "port": port, "startup_nodes": [ClusterNode(h, p) for h, p in nodes[1:]], **kwargs}


def open_single(url: str, **options: Any) -> Redis:
    """One connection to one server (the shared reader's, or a node's notifications)."""
    return Redis(connection_pool=ConnectionPool.from_url(url, max_connections=1, **options))


def parse_cluster_url(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """The seed nodes of a cluster URL and the connection options they share
    (credentials, TLS, query-string options such as `socket_timeout`)."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in CLUSTER_SCHEMES:
        raise ValueError(f"Not a cluster URL: {url!r}")
    hosts = parts.netloc.rpartition("@")[2]
    nodes = [_host_port(item) for item in hosts.split(",") if item.strip()]
    if not nodes:
        raise ValueError(f"No cluster node in {url!r}: expected {parts.scheme}://host:port[,host:port...]")
    options: dict[str, Any] = dict(parse_url(node_url(url, *nodes[0])))
    for name in ("host", "port", "path"):
        options.pop(name, None)
    if options.pop("db", 0) not in (0, None):
        raise ValueError("A Redis Cluster has only database 0")
    if options.pop("connection_class", None) is SSLConnection:
        options["ssl"] = True
    return nodes, options


def node_url(url: str, host: str, port: int) -> str:
    """A plain URL to one node of the cluster named by `url`, with the same credentials and options."""
    parts = urlsplit(url)
    base = CLUSTER_SCHEMES.get(parts.scheme.lower(), parts.scheme)
    credentials, at, _ = parts.netloc.rpartition("@")
    address = f"[{host}]" if ":" in host else host
    query = f"?{parts.query}" if parts.query else ""
    return f"{base}://{credentials}{at}{address}:{port}/0{query}"


def _host_port(item: str) -> tuple[str, int]:
    item = item.strip()
    if item.startswith("["):  # [::1]:7000
        host, _, rest = item[1:].partition("]")
        return host, int(rest.lstrip(":") or DEFAULT_PORT)
    host, _, port = item.partition(":")
    return host, int(port or DEFAULT_PORT)


class BoundedRedisCluster(RedisCluster):
    """A cluster client that never holds more than `limit` connections to a node.

    redis-py's cluster pool raises MaxConnectionsError when a node's connections are
    all busy instead of waiting, as `BlockingConnectionPool` does on one server; here a
    semaphore admits at most `limit` commands or pipelines at a time, and each of them
    uses at most one connection per node. Commands issued from inside an admitted one
    (redirections of a pipeline's commands) are not counted twice. The node pools get
    a little room above `limit` for a connection that is still being closed after an
    error while its replacement opens.
    """

    def __init__(self, *args: Any, limit: int | None = None, **kwargs: Any) -> None:
        if limit is not None:
            kwargs["max_connections"] = limit + 2
        super().__init__(*args, **kwargs)
        self._gate = asyncio.Semaphore(limit) if limit is not None else None

    @asynccontextmanager
    async def admitted(self) -> AsyncIterator[None]:
        if self._gate is None or _GATED.get():
            yield
            return
        async with self._gate:
            token = _GATED.set(True)
            try:
                yield
            finally:
                _GATED.reset(token)

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        async with self.admitted():
            return await super().execute_command(*args, **kwargs)

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> ClusterPipeline:
        if transaction or shard_hint:
            return super().pipeline(transaction, shard_hint)
        return _AdmittedPipeline(self)  # type: ignore[abstract]  # as redis-py's own pipeline()


class _AdmittedPipeline(ClusterPipeline):
    """A cluster pipeline that waits for the client's admission before it runs."""

    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> list[Any]:
        client = self.cluster_client
        assert isinstance(client, BoundedRedisCluster)
        async with client.admitted():
            return await super().execute(raise_on_error, allow_redirections)


async def queue_script(pipe: Any, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> None:
    """Queue `script` on a pipeline of either kind. A cluster pipeline refuses EVALSHA
    (unlike a plain one it cannot load the script first), so there it goes as EVAL,
    which Redis compiles once and caches the same way. All of a script's keys must
    share one hash slot: ours all carry the tenant's `{tag}`."""
    if isinstance(pipe, ClusterPipeline):
        pipe.eval(script.script, len(keys), *keys, *args)  # type: ignore[arg-type]
    else:
        await script(keys=list(keys), args=list(args), client=pipe)


async def ping_all(client: AnyRedis) -> bool:
    """PING every primary of a cluster (one server: just PING); raises when one is down."""
    if isinstance(client, RedisCluster):
        return bool(await client.ping(target_nodes=RedisCluster.PRIMARIES))
    return bool(await client.ping())


def same_slot_groups(client: AnyRedis, keys: Sequence[str]) -> list[list[str]]:
    """`keys` split so that each group may go in one multi-key command: a cluster
    refuses keys of different hash slots (CROSSSLOT) even on one node."""
    if not isinstance(client, RedisCluster):
        return [list(keys)] if keys else []
    groups: dict[int, list[str]] = {}
    for key in keys:
        groups.setdefault(client.keyslot(key), []).append(key)
    return list(groups.values())
