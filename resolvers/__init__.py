"""Where Redis entries become GraphQL objects: the subscriptions, the stats query,
and the root types with the schema assembled from them (`root`).

Imports go one way, down:

    app.py, gateway/
           │
       resolvers/
        │       │
   streaming/  schema/

`streaming` knows no GraphQL and `schema` no Redis; neither imports the other.
"""

from .context import GatewayContext, Principal
from .events import open_events, open_order_events
from .stats import resolve_stats

__all__ = ["GatewayContext", "Principal", "open_events", "open_order_events", "resolve_stats"]
