"""uvicorn, with a graceful drain before its own shutdown.

uvicorn ends WebSockets abruptly (1012) on SIGTERM. We first stop accepting,
then complete every operation (cursors flushed, ephemeral groups removed)
and close each socket with 1001, and only then let uvicorn finish.
"""

from __future__ import annotations

import socket

import uvicorn

from .runtime import Runtime


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, runtime: Runtime) -> None:
        super().__init__(config)
        self.runtime = runtime

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        await self.runtime.drain()
        await super().shutdown(sockets)
