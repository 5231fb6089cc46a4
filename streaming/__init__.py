"""Redis side of the gateway: keys, the shared reader, cursors, dead letters.

Nothing in here knows GraphQL; `resolvers` turns its records into schema objects.
"""

from .entries import DeadLetter, Entry, Record
from .hub import Cursor, Hub, HubConfig

__all__ = ["Cursor", "DeadLetter", "Entry", "Hub", "HubConfig", "Record"]
