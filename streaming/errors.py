"""Named failures of the streaming core; the resolvers map each to an error code."""


class StreamingError(Exception):
    """Base of every error a subscription can end with."""


class InvalidCursor(StreamingError):
    """The `after` id is not a stream id."""


class CursorExpired(StreamingError):
    """Entries after the requested position were trimmed from the stream."""


class DurableTakenOver(StreamingError):
    """A newer subscription took over this durable cursor."""


class Unavailable(StreamingError):
    """Redis cannot be reached, so the subscription cannot continue."""


class SlowConsumer(StreamingError):
    """The client fell too far behind the stream."""
