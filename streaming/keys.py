"""Every Redis key and consumer-group name the gateway uses, built in one place.

Tenant ids reach a key name only through these functions, and only after
`validate_tenant` accepted them, so no input can address another tenant's keys.
"""

from __future__ import annotations

import re

PREFIX = "ragline"
ID_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")
EVENT_TYPE_PATTERN = re.compile(r"[a-z][a-z0-9_.:-]{0,63}")
STREAM_ID_PATTERN = re.compile(r"(\d{1,20})-(\d{1,20})")

EVENTS_KIND = "events"
ORDERS_KIND = "orders"
_GROUP_PREFIXES = {EVENTS_KIND: "ragline-ws-", ORDERS_KIND: "ragline-ws-orders-"}
EPHEMERAL_MARK = "e"
DURABLE_MARK = "d"


def is_valid_id(value: str) -> bool:
    """True when `value` may be used as a tenant, user or durable name."""
    return ID_PATTERN.fullmatch(value) is not None


def validate_tenant(tenant_id: str) -> str:
    if not is_valid_id(tenant_id):
        raise ValueError(f"Invalid tenant id {tenant_id!r}")
    return tenant_id


def validate_user(user_id: str) -> str:
    if not is_valid_id(user_id):
        raise ValueError(f"Invalid user id {user_id!r}")
    return user_id


def events_key(tenant_id: str) -> str:
    """The tenant's event stream; the braces keep a tenant on one cluster slot."""
    return f"{PREFIX}:{{{validate_tenant(tenant_id)}}}:events"


def dlq_key(tenant_id: str) -> str:
    return f"{PREFIX}:{{{validate_tenant(tenant_id)}}}:dlq"


def dlq_seen_key(tenant_id: str, entry_id: str) -> str:
    """Marks an entry as dead-lettered so several readers write it once."""
    return f"{PREFIX}:{{{validate_tenant(tenant_id)}}}:dlq-seen:{entry_id}"


def durable_registry_key(tenant_id: str) -> str:
    """Hash: durable group name -> last activity (unix seconds) and owner."""
    return f"{PREFIX}:{{{validate_tenant(tenant_id)}}}:durable"


def process_key(process_id: str) -> str:
    """Liveness key of a gateway process; its ephemeral groups die with it."""
    return f"{PREFIX}:process:{process_id}"


def revoked_key(tenant_id: str, user_id: str | None) -> str:
    """A revocation: the whole tenant's tokens (`user_id` None) or one user's, issued before
    the time it holds (unix milliseconds); it expires once no token it covers can be valid."""
    base = f"{PREFIX}:{{{validate_tenant(tenant_id)}}}:revoked"
    return base if user_id is None else f"{base}:{validate_user(user_id)}"


def presence_key(tenant_id: str) -> str:
    """Hash: `<process id>|<user id>` -> `<connections>:<since, unix ms>`, one field per
    process that has connections of that user."""
    return f"{PREFIX}:{{{validate_tenant(tenant_id)}}}:presence"


def tenant_from_presence_key(key: str) -> str | None:
    match = re.fullmatch(rf"{PREFIX}:\{{({ID_PATTERN.pattern})\}}:presence", key)
    return match.group(1) if match else None


# Every revocation, for every process to close the connections it covers (one key: one slot).
REVOCATIONS_KEY = f"{PREFIX}:revocations"
PROCESS_PATTERN = f"{PREFIX}:process:*"
JANITOR_LOCK_KEY = f"{PREFIX}:janitor:lock"
DEMO_LOCK_KEY = f"{PREFIX}:demo:producer"


def tenant_from_events_key(key: str) -> str | None:
    match = re.fullmatch(rf"{PREFIX}:\{{({ID_PATTERN.pattern})\}}:events", key)
    return match.group(1) if match else None


def ephemeral_group(kind: str, tenant_id: str, process_id: str, subscription_id: str) -> str:
    return f"{_GROUP_PREFIXES[kind]}{validate_tenant(tenant_id)}:{EPHEMERAL_MARK}:{process_id}:{subscription_id}"


def durable_group(kind: str, tenant_id: str, user_id: str, name: str) -> str:
    return f"{_GROUP_PREFIXES[kind]}{validate_tenant(tenant_id)}:{DURABLE_MARK}:{user_id}:{name}"


def parse_group(group: str, tenant_id: str) -> tuple[str, list[str]] | None:
    """Split one of our group names into (mark, parts); None for foreign groups."""
    for prefix in _GROUP_PREFIXES.values():
        head = f"{prefix}{tenant_id}:"
        if group.startswith(head):
            mark, _, rest = group[len(head):].partition(":")
            return mark, rest.split(":")
    return None


def parse_stream_id(value: str) -> tuple[int, int]:
    """'1732650000000-0' -> (1732650000000, 0); ValueError when malformed."""
    match = STREAM_ID_PATTERN.fullmatch(value)
    if match is None:
        raise ValueError(f"Malformed stream id {value!r}")
    return int(match.group(1)), int(match.group(2))


# The bridge (streaming/bridge.py): RAGline's older producers write every tenant's
# events to a few shared streams; the bridge moves them into the per-tenant ones.
SHARED_STREAM_NAMES = ("orders", "notifications", "system")
BRIDGE_GROUP = "ragline-bridge"
BRIDGE_DLQ_KEY = f"{PREFIX}:bridge:dlq"


def shared_stream_key(name: str) -> str:
    """A shared stream of the older producers, e.g. `ragline:stream:orders`."""
    return f"{PREFIX}:stream:{name}"


def bridge_marker_key(tenant_id: str, source: str, entry_id: str) -> str:
    """Marks shared-stream entry `source`/`entry_id` as copied; in the tenant's cluster
    slot, so one script can check it and append to the tenant's stream."""
    return f"{PREFIX}:{{{validate_tenant(tenant_id)}}}:bridged:{source}:{entry_id}"


def bridge_dlq_seen_key(source: str, entry_id: str) -> str:
    """Marks an entry as dead-lettered by the bridge. Its hash tag is the DLQ's whole
    name, which hashes to the DLQ's own cluster slot."""
    return f"{{{BRIDGE_DLQ_KEY}}}:seen:{source}:{entry_id}"
