"""Error codes clients can rely on, carried in `extensions.code`."""

from __future__ import annotations

from enum import StrEnum

from graphql import GraphQLError


class ErrorCode(StrEnum):
    BAD_USER_INPUT = "BAD_USER_INPUT"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    FORBIDDEN = "FORBIDDEN"
    CURSOR_EXPIRED = "CURSOR_EXPIRED"
    DURABLE_TAKEN_OVER = "DURABLE_TAKEN_OVER"
    UNAVAILABLE = "UNAVAILABLE"
    SLOW_CONSUMER = "SLOW_CONSUMER"
    NOT_IMPLEMENTED = "NOT_IMPLEMENTED"


class GatewayError(GraphQLError):
    """A GraphQL error with a stable code and a message safe to show clients."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message, extensions={"code": code.value})
        self.code = code
