"""The exported SDL and example operations match the live schema."""

from __future__ import annotations

from pathlib import Path

import pytest
from graphql import parse, validate

from ragline.resolvers.root import SCHEMA

GRAPHQL_DIR = Path(__file__).resolve().parent.parent / "graphql"


def test_exported_sdl_matches_the_live_schema() -> None:
    exported = (GRAPHQL_DIR / "schema.graphql").read_text()
    assert exported.strip() == SCHEMA.as_str().strip(), "run: ragline schema > graphql/schema.graphql"


def test_the_schema_has_the_contract_fields() -> None:
    sdl = SCHEMA.as_str()
    assert "events(types: [String!], after: ID, durable: String): Event!" in sdl
    assert "orderEvents(orderId: String, after: ID, durable: String): OrderEvent!" in sdl
    assert "scalar DateTime" in sdl and "scalar JSON" in sdl


@pytest.mark.parametrize("path", sorted((GRAPHQL_DIR / "operations").glob("*.graphql")), ids=lambda p: p.name)
def test_example_operations_validate_against_the_schema(path: Path) -> None:
    assert validate(SCHEMA._schema, parse(path.read_text())) == []


def test_graphql_folder_holds_no_python() -> None:
    assert list(GRAPHQL_DIR.rglob("*.py")) == []
