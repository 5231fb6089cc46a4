"""The reference in docs/ builds as a site: `mkdocs build --strict`, every page in the nav.

Strict mode turns mkdocs.yml's `validation` warnings into a failed build: a link to a page or
anchor that does not exist, a page left out of the nav, a snippet file that is missing.
The build fetches nothing (no plugins that download, `theme.font: false`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from mkdocs.config import load_config

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def nav_pages(entries: list[Any]) -> list[str]:
    """The page paths of a (nested) mkdocs nav."""
    pages: list[str] = []
    for entry in entries:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        pages.extend(nav_pages(value) if isinstance(value, list) else [value])
    return pages


def test_the_docs_build_with_strict_mode(tmp_path: Path) -> None:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's end-of-life banner, not ours
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, f"mkdocs build --strict failed:\n{build.stdout}{build.stderr}"
    assert (tmp_path / "site" / "clients" / "index.html").exists()


def test_every_docs_page_is_in_the_nav_and_every_nav_entry_is_a_page() -> None:
    in_nav = nav_pages(load_config(str(ROOT / "mkdocs.yml")).nav or [])
    on_disk = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    assert sorted(in_nav) == on_disk
    assert len(set(in_nav)) == len(in_nav), "a page is listed twice in the nav"


def test_the_docs_home_opens_as_the_readme_does() -> None:
    opening = (ROOT / "README.md").read_text().split("\n## ", 1)[0]
    assert (DOCS / "index.md").read_text().startswith(opening), (
        "docs/index.md drifted from the README's opening"
    )


CLOSE_TABLES = {"/graphql": DOCS / "errors.md", "/ws": DOCS / "migrating.md"}


def table_rows(page: Path) -> list[str]:
    return [line for line in page.read_text(encoding="utf-8").splitlines() if line.startswith("| ")]


def test_the_close_code_tables_list_the_catalogue_with_what_a_client_should_do() -> None:
    """docs/errors.md (/graphql) and docs/migrating.md (/ws) say each close of gateway/closes.py:
    its code, its reason word for word, and whether to retry."""
    from ragline.gateway.closes import CATALOGUE

    for endpoint, endings in CATALOGUE.items():
        rows = table_rows(CLOSE_TABLES[endpoint])
        for ending in endings:
            documented = [
                row for row in rows
                if row.startswith(f"| {int(ending.code)} |") and f"`{ending.reason}`" in row and ending.retry in row
            ]
            assert documented, f"{endpoint}: no row for {int(ending.code)} `{ending.reason}` ({ending.retry})"
