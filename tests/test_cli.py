"""The `ragline` command as a user runs it: serve on the embedded Redis, token, publish."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import websockets

from helpers import EVENTS_QUERY, TRANSPORT_WS, ProtocolClient, close_of, connect, ready
from ragline.gateway.embedded import free_port

pytestmark = pytest.mark.anyio
RAGLINE = [sys.executable, "-c", "from ragline.gateway.cli import main; raise SystemExit(main())"]
ROOT = Path(__file__).resolve().parent.parent


def ragline(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([*RAGLINE, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAGLINE_")}
    env.update(RAGLINE_DATA_DIR=str(tmp_path / "data"), RAGLINE_PORT=str(free_port()))
    return env


@pytest.fixture
def served(cli_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[str, Path]]:
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        process = subprocess.Popen([*RAGLINE, "serve"], env=cli_env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{cli_env['RAGLINE_PORT']}"
    assert ready(int(cli_env["RAGLINE_PORT"]), process), log.read_text()
    yield base, log
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=20)


async def test_token_publish_and_a_subscription_work_together_on_the_embedded_redis(
    cli_env: dict[str, str], served: tuple[str, Path]
) -> None:
    base, log = served
    ws_url = base.replace("http", "ws") + "/graphql"
    token = ragline(cli_env, "token", "--tenant", "acme", "--user", "alice", "--ttl", "600")
    async with connect(ws_url, token=token) as client:
        await client.subscribe("1", EVENTS_QUERY)
        await asyncio.sleep(0.5)
        entry_id = ragline(cli_env, "publish", "--tenant", "acme", "--type", "order_created", "--payload", '{"order_id": "o-1"}')
        event = await client.next_data("1", "events")
    assert event["id"] == entry_id
    assert (event["type"], event["tenantId"], event["payload"]) == ("order_created", "acme", {"order_id": "o-1"})
    assert "embedded Redis" in log.read_text()


async def test_no_token_ever_appears_in_the_log(cli_env: dict[str, str], served: tuple[str, Path]) -> None:
    base, log = served
    ws_url = base.replace("http", "ws") + "/graphql"
    good = ragline(cli_env, "token", "--tenant", "acme", "--user", "alice")
    forged = good[:-4] + "AAAA"
    async with websockets.connect(f"{ws_url}?token={good}", subprotocols=[TRANSPORT_WS]) as ws:
        assert await ProtocolClient(ws, TRANSPORT_WS).init({}) == {"type": "connection_ack"}
    async with websockets.connect(ws_url, subprotocols=[TRANSPORT_WS]) as ws:
        client = ProtocolClient(ws, TRANSPORT_WS)
        await client.send({"type": "connection_init", "payload": {"authorization": f"Bearer {forged}"}})
        assert (await close_of(client))[0] == 4403
    async with httpx.AsyncClient() as http:
        await http.get(f"{base}/graphql", params={"query": "{ stats { connections } }", "token": good})
        await http.get(f"{base}/graphql", params={"query": "{ stats { connections } }", "token": forged})
        await http.post(f"{base}/graphql", json={"query": "{ stats { connections } }"}, headers={"Authorization": f"Bearer {forged}"})
    await asyncio.sleep(0.3)
    text = log.read_text()
    assert "/graphql?token=[redacted]" in text  # the access log line is there, the token is not
    for secret in (good, forged, good.split(".")[2], forged.split(".")[2]):
        assert secret not in text.replace(_banner_token(text), "")


def _banner_token(text: str) -> str:
    """The dev token printed on purpose in the start-up banner (stdout), not a log line."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("Dev token"):
            return lines[i + 1].strip()
    return "\0"
