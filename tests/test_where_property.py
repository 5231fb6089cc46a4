"""`where` payload filters (resolvers/where.py) against a reference reading of their semantics.

The property: for random payloads and random valid filters, the compiled predicate
agrees with `reference`, a deliberately naive evaluator written from the rules
alone (walk the path recursively, collect every value reached, `any()` over them).
Seeds are fixed, so a failure reproduces; it prints the filter and the payload.
The example tests pin each limit's and each malformed filter's exact message, and
the corners of the semantics (null, 1 == 1.0, True != 1, lists). No Redis, no app.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from ragline.resolvers.where import (
    MAX_CONDITIONS,
    MAX_DEPTH,
    MAX_PATH_LENGTH,
    MAX_SEGMENTS,
    MAX_VALUES,
    FilterError,
    compile_filter,
)

# ---------------------------------------------------------------- the reference


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def ref_equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if _number(a) and _number(b):
        return bool(a == b)
    if isinstance(a, str) and isinstance(b, str):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(ref_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return set(a) == set(b) and all(ref_equal(a[k], b[k]) for k in a)
    return a is None and b is None


def ref_walk(value: Any, segments: list[str]) -> list[Any]:
    if not segments:
        return [value]
    head, rest = segments[0], segments[1:]
    if isinstance(value, dict):
        return ref_walk(value[head], rest) if head in value else []
    if isinstance(value, list):
        if head.isdigit():
            index = int(head)
            return ref_walk(value[index], rest) if index < len(value) else []
        return [found for item in value for found in ref_walk(item, segments)]
    return []


def ref_test(op: str, operand: Any, value: Any) -> bool:
    if op == "eq":
        return ref_equal(value, operand)
    if op == "ne":
        return not ref_equal(value, operand)
    if op == "in":
        return any(ref_equal(value, item) for item in operand)
    if op == "notIn":
        return not any(ref_equal(value, item) for item in operand)
    if op in ("gt", "gte", "lt", "lte"):
        comparable = (_number(value) and _number(operand)) or (
            isinstance(value, str) and isinstance(operand, str)
        )
        if not comparable:
            return False
        if op == "gt":
            return bool(value > operand)
        if op == "gte":
            return bool(value >= operand)
        if op == "lt":
            return bool(value < operand)
        return bool(value <= operand)
    if op == "contains":
        if isinstance(value, str) and isinstance(operand, str):
            return operand in value
        if isinstance(value, list):
            return any(ref_equal(item, operand) for item in value)
        return False
    if op == "beginsWith":
        return isinstance(value, str) and value.startswith(operand)
    raise AssertionError(op)


def reference(node: dict[str, Any], payload: Any) -> bool:
    if "and" in node:
        return all(reference(child, payload) for child in node["and"])
    if "or" in node:
        return any(reference(child, payload) for child in node["or"])
    if "not" in node:
        return not reference(node["not"], payload)
    (op,) = [key for key in node if key != "path"]
    values = ref_walk(payload, node["path"].split("."))
    if op == "exists":
        return bool(values) is node["exists"]
    return any(ref_test(op, node[op], value) for value in values)


# ---------------------------------------------------------------- random data
# Paths and operands are mostly drawn from the payload itself (then perturbed: 1 -> 1.0 or
# True, a string cut to a prefix or a substring, a dict's keys reordered), so that paths
# reach values, often several through lists, and comparisons are true about half the time.

KEYS = ["a", "b", "c", "items", "sku", "0", "status"]
TIMES = ["2024-01-01T00:00:00Z", "2024-06-15T12:30:00Z", "2025-01-01T00:00:00Z"]
STRINGS = ["", "x", "ab", "abc", "paid", "shipped", "sku-1", "sku-2", *TIMES]
OPERATORS = ["eq", "ne", "gt", "gte", "lt", "lte", "in", "notIn", "contains", "beginsWith"]


def scalar(rng: random.Random) -> Any:
    kind = rng.randrange(7)
    if kind == 0:
        return rng.randint(-2, 3)
    if kind == 1:
        return float(rng.randint(-2, 3)) + rng.choice([0.0, 0.0, 0.5])
    if kind == 2:
        return rng.choice([True, False])
    if kind == 3:
        return None
    return rng.choice(STRINGS)


def json_value(rng: random.Random, depth: int) -> Any:
    roll = rng.random()
    if depth <= 0 or roll < 0.35:
        return scalar(rng)
    if roll < 0.55:
        return [json_value(rng, depth - 1) for _ in range(rng.randint(0, 3))]
    if roll < 0.75:
        return records(rng, depth - 1)
    keys = rng.sample(KEYS, rng.randint(0, 4))
    return {key: json_value(rng, depth - 1) for key in keys}


def records(rng: random.Random, depth: int) -> list[Any]:
    """Like `items: [{sku, status}, ...]`: objects with mostly the same keys, maybe in lists."""
    keys = rng.sample(KEYS, 3)
    found: list[Any] = [
        {key: json_value(rng, depth - 1) for key in keys if rng.random() < 0.8}
        for _ in range(rng.randint(1, 4))
    ]
    if rng.random() < 0.2:
        found.append(list(found))
    return found


def payload(rng: random.Random) -> dict[str, Any]:
    keys = rng.sample(KEYS, rng.randint(1, 5))
    return {key: json_value(rng, 4) for key in keys}


def subvalues(value: Any) -> list[Any]:
    found = [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        for item in value:
            found.extend(subvalues(item))
    return found


def path(rng: random.Random, data: Any) -> str:
    """A walk into `data` (a key, an index or a key of some element), sometimes astray."""
    segments: list[str] = []
    current = data
    for _ in range(rng.randint(1, 4)):
        if rng.random() < 0.05:
            segments.append(rng.choice(KEYS))
        elif isinstance(current, dict) and current:
            segments.append(rng.choice(list(current)))
            current = current[segments[-1]]
            continue
        elif isinstance(current, list) and current and rng.random() < 0.3:
            index = rng.randint(0, len(current))  # one past the end, sometimes
            segments.append(str(index))
            current = current[index] if index < len(current) else None
            continue
        elif isinstance(current, list):
            inner = [v for v in subvalues(current) if isinstance(v, dict) and v]
            if not inner:
                segments.append(rng.choice(KEYS))
                break
            current = rng.choice(inner)
            segments.append(rng.choice(list(current)))
            current = current[segments[-1]]
            continue
        elif not segments or rng.random() < 0.2:  # nothing to walk into: step astray
            segments.append(rng.choice(KEYS + ["1"]))
        break
    return ".".join(segments)


def perturbed(rng: random.Random, value: Any) -> Any:
    roll = rng.random()
    if _number(value) and roll < 0.5:
        whole = int(value)
        return rng.choice([whole, float(whole), bool(whole), value + 0.5, value - 1])
    if isinstance(value, bool) and roll < 0.3:
        return int(value)
    if isinstance(value, str) and value and roll < 0.5:
        start = rng.randint(0, len(value) - 1)
        return value[start : rng.randint(start, len(value))]
    if isinstance(value, str) and roll < 0.7:
        return rng.choice(STRINGS)
    if isinstance(value, dict) and roll < 0.5:
        return dict(reversed(list(value.items())))
    if isinstance(value, list) and value and roll < 0.3:
        return [perturbed(rng, item) for item in value]
    return value


def operand(rng: random.Random, reached: list[Any]) -> Any:
    if reached and rng.random() < 0.7:
        return perturbed(rng, rng.choice(reached))
    return json_value(rng, 1) if rng.random() < 0.2 else scalar(rng)


def condition(rng: random.Random, data: Any) -> dict[str, Any]:
    node: dict[str, Any] = {"path": path(rng, data)}
    if rng.random() < 0.1:
        node["exists"] = rng.choice([True, False])
        return node
    op = rng.choice(OPERATORS)
    reached = ref_walk(data, node["path"].split("."))
    for _ in range(5 if op == "contains" else 0):  # contains: rather a path to a list
        if any(isinstance(value, list) for value in reached):
            break
        node["path"] = path(rng, data)
        reached = ref_walk(data, node["path"].split("."))
    if op == "contains" or rng.random() < 0.3:  # a list's elements, a dict's values
        reached = [v for value in reached for v in subvalues(value)]
    if op in ("in", "notIn"):
        node[op] = [operand(rng, reached) for _ in range(rng.randint(0, 5))]
    elif op == "beginsWith":
        strings = [v for v in reached if isinstance(v, str)] or STRINGS
        node[op] = rng.choice(strings)[: rng.randint(0, 4)] + rng.choice(["", "", "", "z"])
    else:
        node[op] = operand(rng, reached)
    return node


def where(rng: random.Random, data: Any, level: int = 1) -> dict[str, Any]:
    if level >= 3 or rng.random() < 0.5:
        return condition(rng, data)
    kind = rng.choice(["and", "or", "not"])
    if kind == "not":
        return {"not": where(rng, data, level + 1)}
    return {kind: [where(rng, data, level + 1) for _ in range(rng.randint(1, 3))]}


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_compiled_filters_agree_with_the_reference(seed: int) -> None:
    rng = random.Random(seed)
    outcomes = []
    for _ in range(400):
        data = payload(rng)
        filter_ = where(rng, data)
        expected = reference(filter_, data)
        predicate = compile_filter(filter_)
        assert predicate is not None
        got = predicate(data)
        assert got == expected, (
            f"filter {json.dumps(filter_)} on payload {json.dumps(data)}: "
            f"got {got}, the reference says {expected}"
        )
        outcomes.append(expected)
    assert 0.15 < sum(outcomes) / len(outcomes) < 0.85  # both answers are exercised


# ---------------------------------------------------------------- semantics


def holds(filter_: dict[str, Any], data: Any) -> bool:
    predicate = compile_filter(filter_)
    assert predicate is not None
    return bool(predicate(data))


def test_no_filter_is_none() -> None:
    assert compile_filter(None) is None


def test_eq_null_is_json_null_and_not_a_missing_key() -> None:
    assert holds({"path": "x", "eq": None}, {"x": None})
    assert not holds({"path": "x", "eq": None}, {"x": 0})
    assert not holds({"path": "x", "eq": None}, {})
    assert holds({"path": "x", "exists": True}, {"x": None})
    assert holds({"path": "x", "ne": None}, {"x": False})


def test_numbers_by_value_but_bool_is_not_a_number() -> None:
    assert holds({"path": "n", "eq": 1}, {"n": 1.0})
    assert holds({"path": "n", "in": [2.0, "1", 1]}, {"n": 1.0})
    assert not holds({"path": "n", "eq": 1}, {"n": True})
    assert not holds({"path": "n", "eq": True}, {"n": 1})
    assert not holds({"path": "n", "in": [1, 0]}, {"n": True})
    assert not holds({"path": "n", "gt": 0}, {"n": True})
    assert holds({"path": "n", "ne": 1}, {"n": True})
    assert holds({"path": "n", "eq": [1, {"a": 2}]}, {"n": [1.0, {"a": 2.0}]})
    assert not holds({"path": "n", "eq": [1, {"a": 2}]}, {"n": [True, {"a": 2}]})


def test_ordering_within_a_kind_only() -> None:
    assert holds({"path": "at", "gte": "2024-06-01T00:00:00Z"}, {"at": "2024-06-15T12:30:00Z"})
    assert holds({"path": "n", "lt": 2.5}, {"n": 2})
    assert not holds({"path": "n", "lt": 3}, {"n": "2"})
    assert not holds({"path": "n", "gte": None}, {"n": None})


def test_contains_and_begins_with() -> None:
    assert holds({"path": "s", "contains": "ip"}, {"s": "shipped"})
    assert holds({"path": "tags", "contains": 1}, {"tags": ["a", 1.0]})
    assert not holds({"path": "tags", "contains": 1}, {"tags": [[1]]})
    assert not holds({"path": "tags", "contains": "ku"}, {"tags": ["sku-1"]})  # elements: equal
    assert not holds({"path": "n", "contains": 1}, {"n": 1})
    assert holds({"path": "s", "beginsWith": "sku-"}, {"s": "sku-1"})
    assert not holds({"path": "s", "beginsWith": "1"}, {"s": 1})


def test_list_fan_in() -> None:
    data = {"items": [{"sku": "a"}, {"sku": "b"}, "x", {"other": 1}]}
    assert holds({"path": "items.sku", "eq": "b"}, data)
    assert not holds({"path": "items.sku", "eq": "c"}, data)
    assert holds({"path": "items.sku", "ne": "a"}, data)  # "b" is not "a": any value reached
    assert not holds({"path": "items.nothing", "exists": True}, data)
    assert holds({"path": "items.sku", "exists": True}, {"items": [{"sku": None}]})
    assert holds({"path": "items.sku", "eq": 2}, {"items": [{"sku": 1}, {"sku": 2.0}]})


def test_list_index() -> None:
    data = {"items": [{"sku": "a"}, {"sku": "b"}]}
    assert holds({"path": "items.0.sku", "eq": "a"}, data)
    assert not holds({"path": "items.0.sku", "eq": "b"}, data)
    assert holds({"path": "items.2.sku", "exists": False}, data)
    assert holds({"path": "items.1", "eq": {"sku": "b"}}, data)


def test_numeric_segment_is_a_key_on_a_dict() -> None:
    assert holds({"path": "m.0", "eq": "zero"}, {"m": {"0": "zero"}})
    assert not holds({"path": "m.0", "exists": True}, {"m": {"1": "one"}})


def test_lists_nested_in_lists_are_walked_element_wise() -> None:
    data = {"items": [[{"sku": "a"}], [[{"sku": "b"}]], {"sku": "c"}]}
    for sku in ("a", "b", "c"):
        assert holds({"path": "items.sku", "eq": sku}, data)
    assert holds({"path": "items.1.0.0.sku", "eq": "b"}, data)


def test_a_missing_path() -> None:
    data = {"a": 1}
    assert holds({"path": "b", "exists": False}, data)
    assert not holds({"path": "b", "exists": True}, data)
    assert not holds({"path": "b", "ne": 1}, data)
    assert not holds({"path": "b", "notIn": [1]}, data)
    assert holds({"not": {"path": "b", "eq": 1}}, data)
    assert not holds({"path": "a.b", "exists": True}, data)  # nothing inside a number


def test_null_means_absent_except_for_json_operands() -> None:
    assert holds({"path": "x", "eq": 1, "in": None, "and": None, "exists": None}, {"x": 1})
    assert holds({"and": [{"path": "x", "exists": True}], "or": None, "path": None}, {"x": 1})


# ---------------------------------------------------------------- messages


def cond(n: int = 0) -> dict[str, Any]:
    return {"path": f"k{n}", "eq": n}


def nested(levels: int) -> dict[str, Any]:
    node: dict[str, Any] = cond()
    for _ in range(levels - 1):
        node = {"not": node}
    return node


# One test for the whole table: each test costs the suite's per-test teardown (a gc.collect()).
REFUSALS: list[tuple[Any, str]] = [
    ({}, "where: a filter needs exactly one of and, or, not, or a path with one operator"),
    (
        {"or": [cond(), cond(), {"and": [cond()], "not": cond()}]},
        "where.or[2]: a filter needs exactly one of and, or, not, or a path with one operator",
    ),
    (
        {"and": [cond()], "path": "a", "eq": 1},
        "where: a filter needs exactly one of and, or, not, or a path with one operator",
    ),
    (
        {"not": cond(), "eq": None},
        "where: a filter needs exactly one of and, or, not, or a path with one operator",
    ),
    (
        {"and": [cond(), {"path": "a", "eq": 1, "gt": 0}]},
        "where.and[1]: a path takes exactly one operator, got eq and gt",
    ),
    (
        {"path": "a", "eq": 1, "gt": 0, "exists": True},
        "where: a path takes exactly one operator, got eq, gt and exists",
    ),
    ({"and": [cond(), {"path": "a"}]}, "where.and[1]: path requires an operator"),
    ({"gt": 1}, "where: gt requires a path"),
    ({"path": None, "eq": None}, "where: eq requires a path"),
    (
        {"or": [cond(n) for n in range(MAX_CONDITIONS)] + [{"not": cond()}]},
        "where: at most 20 conditions (this filter has 21)",
    ),
    (
        {"and": [{"or": [{"not": {"and": [{"or": [cond()]}]}}]}]},
        "where.and[0].or[0].not.and[0].or[0]: nesting deeper than 5 levels",
    ),
    (nested(MAX_DEPTH + 1), "where.not.not.not.not.not: nesting deeper than 5 levels"),
    ({"path": "a", "in": list(range(101))}, "where.in: at most 100 values (got 101)"),
    ({"path": "a", "notIn": [None] * 150}, "where.notIn: at most 100 values (got 150)"),
    ({"path": ".".join("a" * 11), "exists": True}, "where.path: at most 10 segments (got 11)"),
    ({"path": "a" * 300, "exists": True}, "where.path: at most 256 characters (got 300)"),
    ({"path": "", "exists": True}, "where.path: empty segment"),
    ({"path": "a..b", "exists": True}, "where.path: empty segment"),
    ({"not": {"path": ".a", "exists": True}}, "where.not.path: empty segment"),
    ({"path": "a.", "exists": True}, "where.path: empty segment"),
    ({"path": 3, "exists": True}, "where.path: must be a string"),
    ({"path": "a", "beginsWith": 1}, "where.beginsWith: must be a string"),
    ({"path": "a", "exists": "yes"}, "where.exists: must be true or false"),
    ({"path": "a", "in": "abc"}, "where.in: must be a list"),
    ({"and": []}, "where.and: must be a non-empty list"),
    ({"or": cond()}, "where.or: must be a non-empty list"),
    ({"and": [None]}, "where.and[0]: must be an object"),
    ({"not": [cond()]}, "where.not: must be an object"),
    ({"path": "a", "eq": {1, 2}}, "where.eq: must be a JSON value"),
    ({"path": "a", "in": [1, float("nan")]}, "where.in[1]: must be a JSON value"),
    ({"path": "a", "eq": 1, "size": 2}, "where.size: unknown field"),
]


def test_refusals_name_the_problem_and_the_place() -> None:
    wrong = []
    for filter_, message in REFUSALS:
        try:
            compile_filter(filter_)
        except FilterError as refused:
            if str(refused) != message:
                wrong.append(f"{filter_!r}: {str(refused)!r}, expected {message!r}")
        else:
            wrong.append(f"{filter_!r}: accepted, expected {message!r}")
    assert not wrong, "\n".join(wrong)


def test_limits_are_inclusive() -> None:
    assert compile_filter({"and": [cond(n) for n in range(MAX_CONDITIONS)]}) is not None
    assert compile_filter(nested(MAX_DEPTH)) is not None
    assert compile_filter({"path": "a", "in": list(range(MAX_VALUES))}) is not None
    assert compile_filter({"path": ".".join("a" * MAX_SEGMENTS), "exists": True}) is not None
    assert compile_filter({"path": "a" * MAX_PATH_LENGTH, "exists": True}) is not None


def test_the_root_names_the_place() -> None:
    with pytest.raises(FilterError, match=r"^orderEvents\.where\.not: must be an object$"):
        compile_filter({"not": 1}, root="orderEvents.where")
    with pytest.raises(FilterError, match=r"^filter: must be an object$"):
        not_an_object: Any = []
        compile_filter(not_an_object, root="filter")
