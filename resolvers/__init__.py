"""Where Redis entries become GraphQL objects: subscriptions and the stats query."""

from .context import GatewayContext, Principal
from .events import open_events, open_order_events
from .stats import resolve_stats

__all__ = ["GatewayContext", "Principal", "open_events", "open_order_events", "resolve_stats"]
