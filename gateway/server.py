"""uvicorn, with a graceful drain before its own shutdown, for one process or N workers.

uvicorn ends WebSockets abruptly (1012) on SIGTERM. We first stop accepting,
then complete every operation (cursors flushed, ephemeral groups removed)
and close each socket with 1001, and only then let uvicorn finish.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import threading
from contextlib import suppress
from multiprocessing.context import SpawnProcess
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE

from .runtime import Runtime

logger = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, runtime: Runtime | None = None) -> None:
        super().__init__(config)
        self.runtime = runtime

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        runtime = self.runtime or _runtime_of(self.config.loaded_app)
        if runtime is not None:
            await runtime.drain()
        await super().shutdown(sockets)


_SPAWN = multiprocessing.get_context("spawn")


def run_workers(config: uvicorn.Config) -> None:
    """`config.workers` processes serving one listening socket, each a DrainingServer: a
    worker that dies is replaced; SIGTERM or SIGINT drains every worker, then returns.

    The gateway's own supervisor, not uvicorn's: uvicorn's builds plain `Server`s (no drain)
    and has no hook for another server class. It keeps uvicorn's model (the socket bound
    here, each worker started with `spawn`), without uvicorn's health pings, SIGHUP restarts
    and SIGTTIN/SIGTTOU resizing."""
    sock = config.bind_socket()
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    workers = [_start_worker(config, sock) for _ in range(config.workers)]
    logger.info("started %s workers", len(workers))
    while not stop.wait(0.5):
        for index, worker in enumerate(workers):
            if worker.is_alive():
                continue
            worker.join()
            if worker.exitcode == STARTUP_FAILURE:  # the app cannot start: every restart would fail alike
                logger.error("a worker could not start the app (see above): stopping")
                stop.set()
                break
            logger.warning("worker %s died (exit code %s): starting another", worker.pid, worker.exitcode)
            workers[index] = _start_worker(config, sock)
    for worker in workers:
        if worker.is_alive() and worker.pid is not None:
            os.kill(worker.pid, signal.SIGTERM)  # each drains, as a single process does
    for worker in workers:
        worker.join()
    sock.close()


def _start_worker(config: uvicorn.Config, sock: socket.socket) -> SpawnProcess:
    worker = _SPAWN.Process(target=_serve_worker, args=(config, [sock]))
    worker.start()
    return worker


def _serve_worker(config: uvicorn.Config, sockets: list[socket.socket]) -> None:
    """A worker process: uvicorn's logging, then a draining server on the shared socket."""
    config.configure_logging()
    with suppress(KeyboardInterrupt):  # the terminal's Ctrl-C reaches every worker too
        DrainingServer(config).run(sockets=sockets)


def _runtime_of(app: Any) -> Runtime | None:
    """The Runtime behind uvicorn's middleware wrappers (import-string apps)."""
    while app is not None:
        state = getattr(app, "state", None)
        if state is not None and hasattr(state, "runtime"):
            runtime: Runtime = state.runtime
            return runtime
        app = getattr(app, "app", None)
    return None
