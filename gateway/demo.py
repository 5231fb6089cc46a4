"""A small producer so a first run shows order events flowing at once."""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import uuid

from ..streaming import keys
from ..streaming.connections import REDIS_ERRORS, AnyRedis
from ..streaming.publish import publish

logger = logging.getLogger(__name__)
DEMO_TENANT = "demo"
DEMO_USER = "dev"
_STEPS = (("order_created", "pending"), ("order_updated", "preparing"), ("order_completed", "completed"))


async def run_demo(redis: AnyRedis, tenant_id: str = DEMO_TENANT, interval: float = 2.0) -> None:
    """Publish an order's life (created, updated, completed) every few seconds, forever."""
    logger.info("demo producer publishing order events for tenant %s", tenant_id)
    me = uuid.uuid4().hex
    for number in itertools.count(1):
        order_id = f"ord-{number:04d}"
        for event_type, status in _STEPS:
            payload = {"order_id": order_id, "status": status, "total": round(random.uniform(5, 80), 2)}
            try:
                if await _is_the_producer(redis, me, interval):
                    await publish(redis, tenant_id, event_type, payload)
            except REDIS_ERRORS as error:
                logger.warning("demo producer could not publish: %s", error)
            await asyncio.sleep(interval)


async def _is_the_producer(redis: AnyRedis, me: str, interval: float) -> bool:
    """With several workers, one of them publishes (a lock that the holder renews)."""
    ttl = max(1, int(interval * 3))
    if await redis.set(keys.DEMO_LOCK_KEY, me, nx=True, ex=ttl):
        return True
    if await redis.get(keys.DEMO_LOCK_KEY) == me.encode():
        await redis.expire(keys.DEMO_LOCK_KEY, ttl)
        return True
    return False
