"""Values as redis-py hands them over (bytes: the clients do not decode), as text."""

from __future__ import annotations

from typing import Any


def text(value: Any, errors: str = "strict") -> str:
    """`value` as text.

    Strict (the default) for what the gateway named itself or Redis generated: entry
    ids, our keys and group names, our own hash values; invalid UTF-8 there is a bug.
    `errors="replace"` for what anyone else may have written (keys found by SCAN or
    named by a notification, groups listed by XINFO, a producer's field names), where
    bad bytes must not stop a loop. A producer's field values are decoded strictly by
    `entries.parse_record`, which turns a failure into a dead letter.
    """
    return value.decode("utf-8", errors) if isinstance(value, bytes) else str(value)
