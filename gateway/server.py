"""uvicorn, with a graceful drain before its own shutdown, for one or N workers.

uvicorn ends WebSockets abruptly (1012) on SIGTERM. We first stop accepting,
then complete every operation (cursors flushed, ephemeral groups removed)
and close each socket with 1001, and only then let uvicorn finish.
"""

from __future__ import annotations

import socket
from typing import Any

import uvicorn
from uvicorn.supervisors import Multiprocess, multiprocess

from .runtime import Runtime


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


class WorkerProcess(multiprocess.Process):
    """A uvicorn worker whose server drains like the single-process one."""

    @property
    def server(self) -> uvicorn.Server:
        if self._server is None:
            self._server = DrainingServer(config=self.config)
        return self._server


def run_workers(config: uvicorn.Config) -> None:
    """N processes sharing one listening socket (uvicorn's supervisor, our workers)."""
    # uvicorn's supervisor builds its workers from this module attribute; it has no other hook.
    multiprocess.Process = WorkerProcess  # type: ignore[misc]
    sock = config.bind_socket()
    Multiprocess(config, sockets=[sock]).run()


def _runtime_of(app: Any) -> Runtime | None:
    """The Runtime behind uvicorn's middleware wrappers (import-string apps)."""
    while app is not None:
        state = getattr(app, "state", None)
        if state is not None and hasattr(state, "runtime"):
            runtime: Runtime = state.runtime
            return runtime
        app = getattr(app, "app", None)
    return None
