"""The installed distribution claims one top-level name, `ragline`, beside anything else.

PyPI's `schema` package also ships `schema/__init__.py`: were our `schema/` folder installed at
the top of site-packages, pip would let one overwrite the other. Here the wheel is built and
installed into a fresh virtualenv next to PyPI's `schema`; both import, site-packages holds
nothing of ours but `ragline`, and the installed `ragline serve` serves.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from helpers import SECRET, make_token, ready
from ragline.gateway.embedded import free_port

ROOT = Path(__file__).resolve().parent.parent
OURS = frozenset({"app", "app.py", "gateway", "schema", "resolvers", "streaming"})


def run(*command: str | Path, **kwargs: object) -> str:
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=300, check=False, **kwargs)  # type: ignore[call-overload]
    assert done.returncode == 0, f"{command} failed:\n{done.stdout}\n{done.stderr}"
    return str(done.stdout)


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the built wheel and PyPI's `schema` installed into it; the
    wheel's dependencies come from the test run's own environment (a path, not an install)."""
    work = tmp_path_factory.mktemp("packaging")
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", work / "dist", ROOT)
    [wheel] = (work / "dist").glob("ragline_gateway-*.whl")
    run(sys.executable, "-m", "venv", work / "venv")
    python = work / "venv" / "bin" / "python"
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())
    ours = [path for path in sys.path if path.endswith("site-packages")]  # where our dependencies are
    (site / "test-run-dependencies.pth").write_text("".join(f"{path}\n" for path in ours))
    run(python, "-m", "pip", "install", "--quiet", "--no-deps", "schema", wheel)
    return work / "venv"


def test_the_wheel_installs_only_ragline_at_the_top_of_site_packages(venv: Path) -> None:
    python = venv / "bin" / "python"
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())
    top = {p.name for p in site.iterdir()}
    assert "ragline" in top
    assert not (top & OURS) - {"schema"}, sorted(top & OURS)
    assert not (site / "schema" / "types.py").exists(), "our schema/ landed in site-packages"


def test_pypi_schema_and_ragline_both_import_side_by_side(venv: Path, tmp_path: Path) -> None:
    python = venv / "bin" / "python"
    code = (
        "import schema, ragline.schema, ragline.app\n"
        "assert schema.Schema(int).validate(1) == 1  # PyPI's\n"
        "assert ragline.schema.__name__ == 'ragline.schema'\n"
        "print(schema.__file__); print(ragline.__file__)"
    )
    files = run(python, "-c", code, cwd=tmp_path).split()
    assert [Path(f).parent.parent.name for f in files] == ["site-packages", "site-packages"]


def test_the_installed_ragline_serves(venv: Path, redis_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAGLINE_")}
    env.update(RAGLINE_REDIS_URL=redis_url, RAGLINE_JWT_SECRET=SECRET, RAGLINE_PORT=str(port))
    with open(tmp_path / "serve.log", "w") as log:
        process = subprocess.Popen([venv / "bin" / "ragline", "serve"], env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        assert ready(port, process), (tmp_path / "serve.log").read_text()
        response = httpx.post(
            f"http://127.0.0.1:{port}/graphql",
            json={"query": "{ stats { subscriptions } }"},
            headers={"Authorization": f"Bearer {make_token('t-packaging')}"},
        )
        assert response.json() == {"data": {"stats": {"subscriptions": 0}}}
    finally:
        process.terminate()
        process.wait(timeout=20)
