"""The publisher process: appends events the way a producer does (XADD per contract).

Bursts go out through pipelines as fast as Redis takes them; the steady mode
paces appends against the clock and reports how far it ever fell behind its
schedule (its own bottleneck check). On a Redis Cluster the same pipelines go
through redis-py's cluster client, which splits each into one per node and
sends those concurrently. Every event's payload carries the phase name, so
the clients count only what belongs to the phase being measured; given a list
of stations (the filters scenario), each tenant's events also carry
`station`, cycling over the list, and the counts are kept per station too.
Run as `python -m bench.publisher`; driven over stdin (bench.rpc).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson

from bench import rpc
from bench.metrics import self_cpu_seconds
from bench.protocol import BENCH_CLIENT_PREFIX, STATION_FIELD, stream_key
from bench.servers import raise_nofile_limit
from ragline.streaming.connections import AnyRedis, open_client

logger = logging.getLogger(__name__)

EVENT_TYPE = "order_created"
PIPELINE_BATCH = 500
# The paced loop wakes at most this often; appends due meanwhile go in one pipeline.
MIN_TICK_S = 0.001


@dataclass
class Tally:
    """What one publishing call appended."""

    counts: dict[str, int] = field(default_factory=dict)
    # per tenant, per station: only when the events carry stations
    station_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    t_start: float = 0.0
    t_end: float = 0.0
    max_lag_s: float = 0.0
    cpu_start: float = field(default_factory=self_cpu_seconds)
    last_id: str | None = None  # the entry id of the last append (the storm waits for it)

    def report(self) -> dict[str, Any]:
        total = sum(self.counts.values())
        elapsed = max(self.t_end - self.t_start, 1e-9)
        return {
            "counts": self.counts,
            "station_counts": self.station_counts,
            "events": total,
            "commands": {"xadd": total},
            "t_start": self.t_start,
            "t_end": self.t_end,
            "rate": total / elapsed,
            "max_lag_s": self.max_lag_s,
            "cpu_s": self_cpu_seconds() - self.cpu_start,
            "last_id": self.last_id,
        }


class Publisher:
    """One Redis connection (one per node on a cluster) appending to the tenants' streams."""

    def __init__(self) -> None:
        self.redis: AnyRedis | None = None
        self.seq = 0
        self.trickle_task: asyncio.Task[Tally] | None = None
        self.trickle_stop = asyncio.Event()

    def fields(
        self, tenant: str, phase: str, pad: str, station: str | None = None
    ) -> dict[str, str]:
        """One event's fields; seq makes every payload distinct."""
        self.seq += 1
        payload: dict[str, Any] = {"order_id": f"o{self.seq}", "seq": self.seq, "phase": phase}
        if station is not None:
            payload[STATION_FIELD] = station
        if pad:
            payload["pad"] = pad
        return {
            "event_type": EVENT_TYPE,
            "tenant_id": tenant,
            "payload": orjson.dumps(payload).decode(),
            "event_id": str(uuid.uuid4()),
        }

    async def append(
        self,
        tenants: list[str],
        start: int,
        count: int,
        phase: str,
        pad: str,
        tally: Tally,
        stations: list[str] | None = None,
    ) -> None:
        """Append events start..start+count-1, tenant chosen round-robin, in pipelines;
        with `stations`, a tenant's k-th event of the call carries station k mod F."""
        assert self.redis is not None
        for batch_start in range(start, start + count, PIPELINE_BATCH):
            pipe = self.redis.pipeline(transaction=False)
            for n in range(batch_start, min(batch_start + PIPELINE_BATCH, start + count)):
                tenant = tenants[n % len(tenants)]
                station = None
                if stations:
                    station = stations[(n // len(tenants)) % len(stations)]
                    by_station = tally.station_counts.setdefault(tenant, {})
                    by_station[station] = by_station.get(station, 0) + 1
                pipe.xadd(stream_key(tenant), self.fields(tenant, phase, pad, station))  # type: ignore[arg-type]
                tally.counts[tenant] = tally.counts.get(tenant, 0) + 1
            replies = await pipe.execute()
            if replies:
                last = replies[-1]
                tally.last_id = last.decode() if isinstance(last, bytes) else str(last)

    async def paced(
        self,
        tenants: list[str],
        rate: float,
        total: int | None,
        phase: str,
        pad: str,
        stop: asyncio.Event | None = None,
    ) -> Tally:
        """Append at `rate` events/s until `total` (or until `stop` is set), tracking schedule lag.

        Stopped by an event rather than by cancellation, so a stop can never
        land in the middle of a pipeline and leave its count wrong.
        """
        tally = Tally(counts=dict.fromkeys(tenants, 0))
        tally.t_start = time.time()
        began = time.monotonic()
        sent = 0
        while (total is None or sent < total) and not (stop and stop.is_set()):
            elapsed = time.monotonic() - began
            due = int(elapsed * rate) + 1 - sent
            if total is not None:
                due = min(due, total - sent)
            if due > 0:
                tally.max_lag_s = max(tally.max_lag_s, elapsed - sent / rate)
                await self.append(tenants, sent, due, phase, pad, tally)
                sent += due
            await asyncio.sleep(max(MIN_TICK_S, sent / rate - (time.monotonic() - began)))
        tally.t_end = time.time()
        return tally


PUBLISHER = Publisher()


async def connect(url: str) -> dict[str, Any]:
    # Named on every node it connects to, so CLIENT LIST leaves it out.
    PUBLISHER.redis = open_client(url, client_name=f"{BENCH_CLIENT_PREFIX}publisher")
    await PUBLISHER.redis.ping()
    return {"pid": os.getpid()}


async def burst(
    tenants: list[str],
    events_per_tenant: int,
    phase: str,
    payload_bytes: int = 0,
    stations: list[str] | None = None,
) -> dict[str, Any]:
    """events_per_tenant events to every tenant, interleaved, as fast as Redis takes them
    (each tenant's cycling over `stations`, when given)."""
    tally = Tally()
    tally.t_start = time.time()
    await PUBLISHER.append(
        tenants, 0, events_per_tenant * len(tenants), phase, "x" * payload_bytes, tally, stations
    )
    tally.t_end = time.time()
    return tally.report()


async def steady(
    tenants: list[str], rate: float, seconds: float, phase: str, payload_bytes: int = 0
) -> dict[str, Any]:
    """`rate` events/s in total over the tenants for `seconds`."""
    total = max(1, int(rate * seconds))
    tally = await PUBLISHER.paced(tenants, rate, total, phase, "x" * payload_bytes)
    return tally.report()


async def prime(tenants: list[str], stations: list[str] | None = None) -> dict[str, Any]:
    """One event per tenant (per tenant and station, given `stations`: a filtered
    subscription sees only its station's), to find out when every subscription is live."""
    tally = Tally()
    tally.t_start = time.time()
    per_tenant = len(stations) if stations else 1
    await PUBLISHER.append(tenants, 0, per_tenant * len(tenants), "prime", "", tally, stations)
    tally.t_end = time.time()
    return tally.report()


async def trickle_start(tenants: list[str], rate: float, phase: str = "trickle") -> dict[str, Any]:
    """Keep appending in the background (for churn cycles that wait for one event)."""
    PUBLISHER.trickle_stop = asyncio.Event()
    PUBLISHER.trickle_task = asyncio.create_task(
        PUBLISHER.paced(tenants, rate, None, phase, "", PUBLISHER.trickle_stop)
    )
    return {"started": True}


async def trickle_stop() -> dict[str, Any]:
    task, PUBLISHER.trickle_task = PUBLISHER.trickle_task, None
    if task is None:
        return {"events": 0, "commands": {}}
    PUBLISHER.trickle_stop.set()
    return (await task).report()


HANDLERS: dict[str, rpc.Handler] = {
    "connect": connect,
    "burst": burst,
    "steady": steady,
    "prime": prime,
    "trickle_start": trickle_start,
    "trickle_stop": trickle_stop,
}


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s publisher %(levelname)s %(message)s"
    )
    raise_nofile_limit()
    asyncio.run(rpc.serve(HANDLERS))


if __name__ == "__main__":
    main()
