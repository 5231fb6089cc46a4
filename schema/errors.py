"""Error codes clients can rely on, carried in `extensions.code`, and what clients may see of other errors."""

from __future__ import annotations

from enum import StrEnum

from graphql import GraphQLError
from strawberry.exceptions import MissingQueryError
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError

MASKED_MESSAGE = "Unexpected error."


class ErrorCode(StrEnum):
    BAD_USER_INPUT = "BAD_USER_INPUT"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    FORBIDDEN = "FORBIDDEN"
    CURSOR_EXPIRED = "CURSOR_EXPIRED"
    DURABLE_TAKEN_OVER = "DURABLE_TAKEN_OVER"
    UNAVAILABLE = "UNAVAILABLE"
    SLOW_CONSUMER = "SLOW_CONSUMER"
    NOT_IMPLEMENTED = "NOT_IMPLEMENTED"
    RATE_LIMITED = "RATE_LIMITED"
    TOO_MANY_SUBSCRIPTIONS = "TOO_MANY_SUBSCRIPTIONS"
    TOO_MANY_CONNECTIONS = "TOO_MANY_CONNECTIONS"


class GatewayError(GraphQLError):
    """A GraphQL error with a stable code and a message safe to show clients."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message, extensions={"code": code.value})
        self.code = code


# Strawberry's words for a request it cannot run (no query, unknown operation, a query
# where a subscription is expected): the client's error, though not a GraphQLError.
_REQUEST_ERRORS = (GraphQLError, CannotGetOperationTypeError, InvalidOperationTypeError, MissingQueryError)


def is_internal(error: GraphQLError) -> bool:
    """An exception escaped a resolver; syntax, validation, request and coded errors are the client's."""
    original = error.original_error
    return original is not None and not isinstance(original, _REQUEST_ERRORS)


def masked(error: GraphQLError) -> GraphQLError:
    """The error as a client may see it: internal ones lose their text (it stays in the log)."""
    if not is_internal(error):
        return error
    return GraphQLError(MASKED_MESSAGE, nodes=error.nodes, source=error.source, positions=error.positions, path=error.path)
