"""Settings shared by the two reference servers (naive and ceiling).

They read the same RAGLINE_* variables the gateway does, so the harness
starts every target the same way.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from ragline.gateway.wsprotocol import websocket_options


@dataclass(frozen=True)
class RefSettings:
    """Where a reference server listens and which Redis and secret it uses."""

    redis_url: str
    jwt_secret: str
    host: str
    port: int

    @classmethod
    def from_env(cls) -> RefSettings:
        """Read RAGLINE_*; the references have no embedded-Redis or dev-secret fallback."""
        return cls(
            redis_url=os.environ.get("RAGLINE_REDIS_URL", "redis://127.0.0.1:6379/0"),
            jwt_secret=os.environ["RAGLINE_JWT_SECRET"],
            host=os.environ.get("RAGLINE_HOST", "127.0.0.1"),
            port=int(os.environ.get("RAGLINE_PORT", "8000")),
        )


def parse_workers(argv: list[str] | None = None) -> int:
    """The `--workers N` flag, the same one `ragline serve` takes."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=1)
    return int(parser.parse_args(argv).workers)


def uvicorn_options(settings: RefSettings, workers: int) -> dict[str, object]:
    """One uvicorn configuration for both references, so only the app differs."""
    return {
        "host": settings.host,
        "port": settings.port,
        "workers": workers,
        "log_level": "warning",
        "access_log": False,
        **websocket_options(),  # the gateway's transport: uvicorn's sans-I/O protocol, lighter
        "backlog": 4096,
        "lifespan": "on",
    }
