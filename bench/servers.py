"""Start and stop the processes under test: the harness's own Redis and the targets.

A target is just a name and a command line (see TARGETS); every target gets
the same environment (RAGLINE_REDIS_URL, RAGLINE_JWT_SECRET, RAGLINE_HOST,
RAGLINE_PORT) and is ready when GET /readyz answers 200. That is what lets the
gateway and the reference servers run in one invocation under one load.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.protocol import READY_PATH

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"


class ServerFailed(RuntimeError):
    """A process under test exited or never became ready."""


def free_port() -> int:
    """A currently unused loopback TCP port (the race with other programs is accepted)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def raise_nofile_limit() -> None:
    """Lift the soft open-file limit to the hard one (10,000 sockets need it)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def spawn(
    argv: list[str],
    log_path: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    own_group: bool = False,
) -> subprocess.Popen[bytes]:
    """Start a process with its output going to log_path.

    The open-file limit is inherited: the orchestrator raises its own soft
    limit first (raise_nofile_limit), so no preexec hook is needed (those are
    unsafe once threads exist). own_group gives the process a session of its
    own, so it is signalled together with its workers.
    """
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=log, stderr=log, start_new_session=own_group
        )


def bench_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for every process the harness starts: bench importable, logs unbuffered."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


@dataclass(frozen=True)
class TargetSpec:
    """How to start one server under test.

    `argv` may use `{python}`; `workers_argv` (with `{workers}`) is appended
    only when more than one worker is asked for, so a target without a
    `--workers` flag still runs single-process.
    """

    name: str
    argv: tuple[str, ...]
    workers_argv: tuple[str, ...] = ("--workers", "{workers}")

    def command(self, workers: int) -> list[str]:
        """The concrete command line for this many worker processes."""
        parts = list(self.argv) + (list(self.workers_argv) if workers > 1 else [])
        argv = [p.format(python=sys.executable, workers=workers) for p in parts]
        return [_find_program(argv[0]) or argv[0], *argv[1:]]

    def missing_reason(self) -> str | None:
        """Why this target cannot start here, or None when its program exists."""
        program = self.command(1)[0]
        if os.path.isabs(program):
            return None if os.access(program, os.X_OK) else f"{program} not executable"
        return f"{program!r} not found next to {sys.executable} nor on PATH"


def _find_program(program: str) -> str | None:
    """Look next to the running interpreter first (a venv's console scripts), then PATH."""
    if os.sep in program:
        return program
    beside = Path(sys.executable).parent / program
    if beside.exists():
        return str(beside)
    return shutil.which(program)


TARGETS: dict[str, TargetSpec] = {
    "gateway": TargetSpec("gateway", ("ragline", "serve")),
    "naive": TargetSpec("naive", ("{python}", "-m", "bench.naive")),
    "ceiling": TargetSpec("ceiling", ("{python}", "-m", "bench.ceiling")),
}


def parse_target(text: str) -> TargetSpec:
    """`NAME=COMMAND` from the command line; COMMAND may use {python} and {workers}."""
    name, sep, command = text.partition("=")
    if not sep or not name or not command:
        raise ValueError(f"Expected NAME=COMMAND, but got {text!r}")
    return TargetSpec(name.strip(), tuple(shlex.split(command)), workers_argv=())


class RedisServer:
    """The harness's own throwaway redis-server on a free loopback port."""

    def __init__(self, executable: str, log_dir: Path) -> None:
        self.executable = executable
        self.port = free_port()
        self._log_dir = log_dir
        self._dir = Path(tempfile.mkdtemp(prefix="bench-redis-"))
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self._proc
        return self._proc.pid

    def start(self) -> None:
        """Start without persistence; maxclients high enough for the naive server at 10k subs."""
        argv = [
            self.executable,
            "--port",
            str(self.port),
            "--bind",
            LOOPBACK,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self._dir),
            "--maxclients",
            "19000",
            "--protected-mode",
            "yes",
            "--loglevel",
            "warning",
            "--tcp-backlog",
            "4096",
        ]
        self._proc = spawn(argv, self._log_dir / "redis.log")
        _wait_for_port(self.port, self._proc, timeout=10)
        logger.info("redis-server pid=%s on %s", self._proc.pid, self.url)

    def stop(self) -> None:
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        shutil.rmtree(self._dir, ignore_errors=True)


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerFailed(f"process exited with {proc.returncode} before listening on {port}")
        try:
            socket.create_connection((LOOPBACK, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise ServerFailed(f"nothing listening on port {port} after {timeout}s")


@dataclass
class TargetServer:
    """One running target process (and its worker children)."""

    spec: TargetSpec
    workers: int
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    data_dir: Path
    started_at: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def ws_url(self) -> str:
        return f"ws://{LOOPBACK}:{self.port}/graphql"

    @property
    def http_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"


async def start_target(
    spec: TargetSpec,
    workers: int,
    redis_url: str,
    secret: str,
    log_dir: Path,
    label: str,
    extra_env: dict[str, str] | None = None,
) -> TargetServer:
    """Start a target and wait until /readyz answers 200; `extra_env` adds settings of one
    scenario (the storm raises the gateway's per-tenant connection limit)."""
    port = free_port()
    data_dir = Path(tempfile.mkdtemp(prefix="bench-target-"))
    env = bench_env(
        {
            **(extra_env or {}),
            "RAGLINE_REDIS_URL": redis_url,
            "RAGLINE_JWT_SECRET": secret,
            "RAGLINE_HOST": LOOPBACK,
            "RAGLINE_PORT": str(port),
            "RAGLINE_DATA_DIR": str(data_dir),
        }
    )
    argv = spec.command(workers)
    log_path = log_dir / f"{label}.log"
    logger.info(
        "starting %s: %s (port %s)%s",
        spec.name,
        shlex.join(argv),
        port,
        "".join(f" {k}={v}" for k, v in sorted((extra_env or {}).items())),
    )
    proc = spawn(argv, log_path, env=env, cwd=data_dir, own_group=True)
    server = TargetServer(spec, workers, port, proc, log_path, data_dir)
    try:
        await wait_ready(server, timeout=90)
    except BaseException:
        await stop_target(server)
        raise
    return server


async def wait_ready(server: TargetServer, timeout: float) -> None:
    """Poll GET /readyz; fail fast if the process dies."""
    deadline = time.monotonic() + timeout
    url = server.http_url + READY_PATH
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise ServerFailed(
                f"{server.spec.name} exited with {server.proc.returncode}; see {server.log_path}"
            )
        if await asyncio.to_thread(_http_ok, url):
            logger.info(
                "%s ready after %.1fs", server.spec.name, time.monotonic() - server.started_at
            )
            return
        await asyncio.sleep(0.2)
    raise ServerFailed(f"{server.spec.name} not ready after {timeout}s; see {server.log_path}")


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


async def stop_target(server: TargetServer, timeout: float = 15.0) -> None:
    """SIGTERM the target's process group, SIGKILL it if it lingers."""
    if server.proc.poll() is None:
        _signal_group(server.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while server.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if server.proc.poll() is None:
            logger.warning("%s ignored SIGTERM for %ss, killing", server.spec.name, timeout)
            _signal_group(server.pid, signal.SIGKILL)
            server.proc.wait()
    shutil.rmtree(server.data_dir, ignore_errors=True)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal the session we created for this target (its own pid is the group id)."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def select_targets(names: Sequence[str], extra: Sequence[TargetSpec]) -> list[TargetSpec]:
    """Resolve --servers names against the built-in and --target specs, in order given."""
    known = dict(TARGETS)
    known.update({spec.name: spec for spec in extra})
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"Unknown server(s) {unknown}; known: {sorted(known)}")
    return [known[n] for n in names]
