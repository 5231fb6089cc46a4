"""The gateway with the real JavaScript GraphQL clients: graphql-ws, subscriptions-transport-ws,
Apollo Client, urql, graphql-sse, and graphql-http's GraphQL-over-HTTP audit.

The suites live in tests/clients (`node --test`); each runs against a gateway and Redis
started here, publishes with XADD itself and checks ids, counts and codes. They need
Node.js 20 or newer (graphql-ws 6 does) and are skipped, with the reason shown, without
it. Dependencies are installed with `npm ci` from the committed lockfile, only when
the lockfile changed since the last install (a stamp in node_modules says which).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from helpers import SECRET, GatewayServer, issued

CLIENTS = Path(__file__).resolve().parent / "clients"
SUITES = sorted(path.name for path in CLIENTS.glob("*.test.mjs"))
MIN_NODE = 20
INSTALL_STAMP = "node_modules/.ragline-lock-sha256"


def node_skip_reason() -> str | None:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        return f"Node.js >= {MIN_NODE} with npm not found: the client-library tests in tests/clients need it"
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    match = re.match(r"v(\d+)", version)
    if match is None or int(match.group(1)) < MIN_NODE:
        return f"Node.js {version} is too old: the client-library tests in tests/clients need >= {MIN_NODE}"
    return None


def npm_ci() -> None:
    """`npm ci` unless node_modules was installed from this very lockfile."""
    digest = hashlib.sha256((CLIENTS / "package-lock.json").read_bytes()).hexdigest()
    stamp = CLIENTS / INSTALL_STAMP
    if stamp.exists() and stamp.read_text() == digest:
        return
    done = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund"], cwd=CLIENTS, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, f"npm ci failed in {CLIENTS}:\n{done.stdout}\n{done.stderr}"
    stamp.write_text(digest)


@contextmanager
def installed_clients() -> Iterator[None]:
    """node_modules, installed and left alone while we use it: test runs sharing this work
    tree (a developer's and an editor's, say) install one at a time and never under another."""
    key = hashlib.sha256(str(CLIENTS).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"ragline-clients-{key}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        npm_ci()
        fcntl.flock(lock, fcntl.LOCK_SH)
        yield


@pytest.fixture(scope="module")
def node_env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    reason = node_skip_reason()
    if reason is not None:
        pytest.skip(reason)
    with installed_clients():
        gateway: GatewayServer = request.getfixturevalue("gateway")  # started only when Node is there
        redis_url: str = request.getfixturevalue("redis_url")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "NODE_"))}
        token_log = tmp_path_factory.mktemp("node") / "tokens.txt"
        token_log.touch()
        env.update(
            GATEWAY_URL=gateway.http_url, GATEWAY_REDIS_URL=redis_url, GATEWAY_JWT_SECRET=SECRET,
            GATEWAY_TOKEN_LOG=str(token_log),
        )
        yield env


@pytest.mark.parametrize("suite", SUITES)
def test_client_library_suite_passes(suite: str, node_env: dict[str, str]) -> None:
    done = subprocess.run(
        ["node", "--test", "--test-reporter=spec", suite],
        cwd=CLIENTS, env=node_env, capture_output=True, text=True, timeout=120, check=False,
    )
    for token in Path(node_env["GATEWAY_TOKEN_LOG"]).read_text().split():
        issued(token)  # the session's leak check looks for these too
    print(done.stdout)  # pytest -rP (or -s) shows it, e.g. the graphql-http audit's SHOULD results
    assert done.returncode == 0, f"{suite} failed:\n{done.stdout}\n{done.stderr}"
