"""Filtering subscribed events by their JSON payload: the `where: EventFilter` argument.

A filter is the dict graphql-core coerces from an `EventFilter` input object: a
node is either a combination (`and`/`or` of a list of nodes, `not` of one node)
or a condition (a dot-separated `path` into the payload and one operator).
`compile_filter` checks the whole filter and its limits once, when the client
subscribes, and turns it into a plain closure; that closure then runs for every
event of every subscription sharing the filter, so all the parsing (splitting
paths, telling list indexes from keys, sorting operands by kind) happens here
and evaluation only walks the payload and compares.

The semantics, briefly:

* A path walks dicts by key and lists either by index (a digits-only segment)
  or element-wise (any other segment, through nested lists too), so it can
  reach no value, one, or several.
* A condition holds when its operator holds for ANY value reached; on a path
  that reaches nothing only `exists: false` holds (so `ne` and `notIn` are
  false there, and `not` of such a condition is true).
* Equality is by JSON value: 1 == 1.0, but a bool is never a number; lists and
  objects compare element by element. Ordering compares numbers with numbers
  and strings with strings (ISO-8601 times order as strings), nothing else.

Every problem is a `FilterError` whose message names the place in the filter
(`where.or[2].path`), so the client can fix its query from the message alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

Predicate = Callable[[Any], bool]
"""A compiled filter, or a test of one reached value: True when it holds."""

MAX_CONDITIONS = 20
MAX_DEPTH = 5
MAX_VALUES = 100
MAX_SEGMENTS = 10
MAX_PATH_LENGTH = 256

_LOGICAL = ("and", "or", "not")
_ORDERINGS = ("gt", "gte", "lt", "lte")
_OPERATORS = ("eq", "ne", *_ORDERINGS, "in", "notIn", "contains", "beginsWith", "exists")
# The operators whose operand is any JSON value, JSON null included: a null there is an operand.
# Elsewhere a null is what graphql-core hands over for a field given as null: the same as absent.
_JSON_OPERATORS = frozenset({"eq", "ne", *_ORDERINGS, "contains"})
_FIELDS = frozenset({*_LOGICAL, "path", *_OPERATORS})
_SHAPE = "a filter needs exactly one of and, or, not, or a path with one operator"
_MISSING = object()

Step = tuple[str, int | None]
"""A path segment: the key, and the list index it means when it is all digits."""


class FilterError(ValueError):
    """An invalid `where` filter; `str(error)` is the whole message for the client."""


def compile_filter(where: dict[str, Any] | None, *, root: str = "where") -> Predicate | None:
    """The predicate over payloads for `where` (None: no filter); FilterError if invalid."""
    if where is None:
        return None
    compiler = _Compiler()
    predicate = compiler.node(where, root, 1)
    if compiler.conditions > MAX_CONDITIONS:
        raise FilterError(
            f"{root}: at most {MAX_CONDITIONS} conditions (this filter has {compiler.conditions})"
        )
    return predicate


class _Compiler:
    """One filter's compilation: counts the conditions seen so far."""

    def __init__(self) -> None:
        self.conditions = 0

    def node(self, node: Any, at: str, level: int) -> Predicate:
        if level > MAX_DEPTH:
            raise FilterError(f"{at}: nesting deeper than {MAX_DEPTH} levels")
        if not isinstance(node, dict):
            raise FilterError(f"{at}: must be an object")
        for key in node:
            if key not in _FIELDS:
                raise FilterError(f"{at}.{key}: unknown field")
        logical = [key for key in _LOGICAL if node.get(key) is not None]
        operators = [key for key in _OPERATORS if _given(node, key)]
        has_path = node.get("path") is not None
        if len(logical) + (has_path or bool(operators)) != 1:
            raise FilterError(f"{at}: {_SHAPE}")
        if logical == ["not"]:
            return _negation(self.node(node["not"], f"{at}.not", level + 1))
        if logical:
            return self.combination(node, logical[0], at, level)
        if not has_path:
            raise FilterError(f"{at}: {operators[0]} requires a path")
        if not operators:
            raise FilterError(f"{at}: path requires an operator")
        if len(operators) > 1:
            raise FilterError(f"{at}: a path takes exactly one operator, got {_listed(operators)}")
        self.conditions += 1
        return self.condition(node, operators[0], at)

    def combination(self, node: dict[str, Any], key: str, at: str, level: int) -> Predicate:
        children = node[key]
        if not isinstance(children, list) or not children:
            raise FilterError(f"{at}.{key}: must be a non-empty list")
        compiled = tuple(
            self.node(child, f"{at}.{key}[{i}]", level + 1) for i, child in enumerate(children)
        )
        return _conjunction(compiled) if key == "and" else _disjunction(compiled)

    def condition(self, node: dict[str, Any], operator: str, at: str) -> Predicate:
        steps = _steps(node["path"], f"{at}.path")
        operand = node[operator]
        where = f"{at}.{operator}"
        if operator == "exists":
            if not isinstance(operand, bool):
                raise FilterError(f"{where}: must be true or false")
            return _existence(steps, operand)
        return _any_reached(steps, _value_test(operator, operand, where))


# ---------------------------------------------------------------- checking


def _given(node: dict[str, Any], operator: str) -> bool:
    return operator in node and (node[operator] is not None or operator in _JSON_OPERATORS)


def _listed(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _steps(path: Any, where: str) -> tuple[Step, ...]:
    if not isinstance(path, str):
        raise FilterError(f"{where}: must be a string")
    if len(path) > MAX_PATH_LENGTH:
        raise FilterError(f"{where}: at most {MAX_PATH_LENGTH} characters (got {len(path)})")
    segments = path.split(".")
    if len(segments) > MAX_SEGMENTS:
        raise FilterError(f"{where}: at most {MAX_SEGMENTS} segments (got {len(segments)})")
    if "" in segments:
        raise FilterError(f"{where}: empty segment")
    return tuple((s, int(s) if s.isascii() and s.isdigit() else None) for s in segments)


def _check_json(value: Any, where: str) -> None:
    """Refuse anything JSON cannot carry; iterative, so no operand is too deep to check."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                raise FilterError(f"{where}: must be a JSON value")
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, dict):
            if not all(isinstance(key, str) for key in item):
                raise FilterError(f"{where}: must be a JSON value")
            pending.extend(item.values())
        elif item is not None and not isinstance(item, str | int):  # bool is an int
            raise FilterError(f"{where}: must be a JSON value")


# ---------------------------------------------------------------- walking


def _fan(value: Any, steps: tuple[Step, ...], start: int) -> list[Any]:
    """Every value reached from `value` by the path's steps from `start` on."""
    values = [value]
    for key, index in steps[start:]:
        found: list[Any] = []
        for item in values:
            _step(item, key, index, found)
        if not found:
            return found
        values = found
    return values


def _step(value: Any, key: str, index: int | None, found: list[Any]) -> None:
    if isinstance(value, dict):
        if key in value:
            found.append(value[key])
    elif isinstance(value, list):
        if index is not None:
            if index < len(value):
                found.append(value[index])
            return
        lists = [value]  # element-wise, through lists nested in lists
        while lists:
            for item in lists.pop():
                if isinstance(item, dict):
                    if key in item:
                        found.append(item[key])
                elif isinstance(item, list):
                    lists.append(item)


# ---------------------------------------------------------------- predicates


# Both predicates walk plain dicts inline (most payloads, most paths) and hand the walk to
# `_fan` only at the first value that is not a dict: a list to fan out over, or a dead end.


def _any_reached(steps: tuple[Step, ...], test: Predicate) -> Predicate:
    keys = tuple(key for key, _ in steps)

    def holds(payload: Any) -> bool:
        current = payload
        for position, key in enumerate(keys):
            if not isinstance(current, dict):
                for value in _fan(current, steps, position):
                    if test(value):
                        return True
                return False
            current = current.get(key, _MISSING)
            if current is _MISSING:
                return False
        return test(current)

    return holds


def _existence(steps: tuple[Step, ...], expected: bool) -> Predicate:
    keys = tuple(key for key, _ in steps)

    def holds(payload: Any) -> bool:
        current = payload
        for position, key in enumerate(keys):
            if not isinstance(current, dict):
                return bool(_fan(current, steps, position)) is expected
            current = current.get(key, _MISSING)
            if current is _MISSING:
                return not expected
        return expected

    return holds


def _negation(child: Predicate) -> Predicate:
    return lambda payload: not child(payload)


def _conjunction(children: tuple[Predicate, ...]) -> Predicate:
    if len(children) == 1:
        return children[0]

    def holds(payload: Any) -> bool:
        for child in children:
            if not child(payload):
                return False
        return True

    return holds


def _disjunction(children: tuple[Predicate, ...]) -> Predicate:
    if len(children) == 1:
        return children[0]

    def holds(payload: Any) -> bool:
        for child in children:
            if child(payload):
                return True
        return False

    return holds


# ---------------------------------------------------------------- value tests


def _value_test(operator: str, operand: Any, where: str) -> Predicate:
    """The test of one reached value for `operator`, with its operand checked and sorted."""
    if operator in ("in", "notIn"):
        if not isinstance(operand, list):
            raise FilterError(f"{where}: must be a list")
        if len(operand) > MAX_VALUES:
            raise FilterError(f"{where}: at most {MAX_VALUES} values (got {len(operand)})")
        for i, item in enumerate(operand):
            _check_json(item, f"{where}[{i}]")
        member = _membership(operand)
        return member if operator == "in" else _negation(member)
    if operator == "beginsWith":
        if not isinstance(operand, str):
            raise FilterError(f"{where}: must be a string")
        return lambda value: isinstance(value, str) and value.startswith(operand)
    _check_json(operand, where)
    if operator in ("eq", "ne"):
        equal = _equality(operand)
        return equal if operator == "eq" else _negation(equal)
    if operator == "contains":
        return _containment(operand)
    return _ordering(operator, operand)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _json_equal(left: Any, right: Any) -> bool:
    """Equality by JSON value (1 == 1.0, True != 1); iterative, so depth costs no stack."""
    pending = [(left, right)]
    while pending:
        a, b = pending.pop()
        if isinstance(a, bool) or isinstance(b, bool):
            if a is not b:
                return False
        elif _is_number(a):
            if not (_is_number(b) and a == b):
                return False
        elif isinstance(a, str):
            if not (isinstance(b, str) and a == b):
                return False
        elif a is None:
            if b is not None:
                return False
        elif isinstance(a, list):
            if not isinstance(b, list) or len(a) != len(b):
                return False
            pending.extend(zip(a, b))
        elif isinstance(a, dict):
            if not isinstance(b, dict) or a.keys() != b.keys():
                return False
            pending.extend((a[key], b[key]) for key in a)
        else:
            return False
    return True


def _equality(operand: Any) -> Predicate:
    """`value == operand` by JSON value, specialised to the operand's kind."""
    if operand is None:
        return lambda value: value is None
    if isinstance(operand, bool):
        return lambda value: value is operand
    if _is_number(operand):
        return lambda value: _is_number(value) and value == operand
    if isinstance(operand, str):
        return lambda value: isinstance(value, str) and value == operand
    return lambda value: _json_equal(value, operand)


def _membership(operands: list[Any]) -> Predicate:
    """`value in operands` by JSON value: scalars by hashing (per kind), the rest one by one."""
    has_null = any(item is None for item in operands)
    bools = frozenset(item for item in operands if isinstance(item, bool))
    numbers = frozenset(item for item in operands if _is_number(item))
    strings = frozenset(item for item in operands if isinstance(item, str))
    others = tuple(item for item in operands if isinstance(item, list | dict))

    def holds(value: Any) -> bool:
        if value is None:
            return has_null
        if isinstance(value, bool):
            return value in bools
        if isinstance(value, int | float):
            return value in numbers
        if isinstance(value, str):
            return value in strings
        if isinstance(value, list | dict):
            return any(_json_equal(value, other) for other in others)
        return False

    return holds


def _containment(operand: Any) -> Predicate:
    """A substring of a string value, or an element (by JSON value) of a list value."""
    element = _equality(operand)
    substring = isinstance(operand, str)

    def holds(value: Any) -> bool:
        if isinstance(value, list):
            return any(element(item) for item in value)
        return substring and isinstance(value, str) and operand in value

    return holds


def _ordering(operator: str, operand: Any) -> Predicate:
    """gt/gte/lt/lte: numbers with numbers, strings with strings, anything else never."""
    if _is_number(operand):
        kind: Callable[[Any], bool] = _is_number
    elif isinstance(operand, str):
        kind = _is_string
    else:
        return _never
    if operator == "gt":
        return lambda value: kind(value) and value > operand
    if operator == "gte":
        return lambda value: kind(value) and value >= operand
    if operator == "lt":
        return lambda value: kind(value) and value < operand
    return lambda value: kind(value) and value <= operand


def _is_string(value: Any) -> bool:
    return isinstance(value, str)


def _never(value: Any) -> bool:
    return False
