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
    assert "events(types: [String!], where: EventFilter, after: ID, durable: String): Event!" in sdl
    assert "orderEvents(orderId: String, where: EventFilter, after: ID, durable: String): OrderEvent!" in sdl
    fields = "and: [EventFilter!] or: [EventFilter!] not: EventFilter path: String eq: JSON ne: JSON gt: JSON gte: JSON"
    fields += " lt: JSON lte: JSON in: [JSON!] notIn: [JSON!] contains: JSON beginsWith: String exists: Boolean"
    event_filter = sdl.split("input EventFilter {", 1)[1].split("}", 1)[0]
    assert " ".join(line.strip() for line in event_filter.splitlines() if ":" in line and '"' not in line) == fields
    assert "scalar DateTime" in sdl and "scalar JSON" in sdl


@pytest.mark.parametrize("path", sorted((GRAPHQL_DIR / "operations").glob("*.graphql")), ids=lambda p: p.name)
def test_example_operations_validate_against_the_schema(path: Path) -> None:
    assert validate(SCHEMA._schema, parse(path.read_text())) == []


def test_graphql_folder_holds_no_python() -> None:
    assert list(GRAPHQL_DIR.rglob("*.py")) == []
