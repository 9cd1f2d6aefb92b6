"""The fault schedule: what breaks when, and how each fault is applied and lifted.

One *cycle* holds every fault once; a run repeats it while it fits in the first part of the run
(the rest is quiet, so that memory and the final counts are measured after the last fault). Each
fault returns the :class:`~bench.soak.invariants.Fault` it was, with its real start and end.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bench.soak.invariants import Fault

if TYPE_CHECKING:
    from bench.soak.run import Soak

PARTITION_SECONDS = 12.0
LATENCY_SECONDS = 20.0
LATENCY_MS_EACH_WAY = 10.0  # 20 ms added to every round trip on the Redis link
DB_OUTAGE_SECONDS = 10.0


@dataclass(frozen=True)
class Step:
    offset: float
    """Seconds after the cycle's start."""
    name: str
    apply: Callable[[Soak], Coroutine[Any, Any, Fault]]


async def kill_worker(soak: Soak) -> Fault:
    hub = soak.hubs[0]
    start = time.time()
    pid = await asyncio.to_thread(hub.kill_worker)
    back = await asyncio.to_thread(hub.wait_workers)
    return Fault("kill -9 of a hub worker", "worker_kill", hub.host.name, start, time.time(),
                 f"pid {pid}; {'respawned' if back else 'NOT respawned'}")


async def drain_hub(soak: Soak) -> Fault:
    hub = soak.hubs[-1]
    start = time.time()
    code = await asyncio.to_thread(hub.drain)
    back = await asyncio.to_thread(hub.restart)
    return Fault("SIGTERM drain of a hub host", "drain", hub.host.name, start, time.time(),
                 f"exit code {code}; {'restarted' if back else 'NOT restarted'}")


async def kill_redis_primary(soak: Soak) -> Fault:
    start = time.time()
    killed, promoted = await asyncio.to_thread(soak.redis.kill_primary)
    return Fault("Redis primary killed (Sentinel promotes)", "redis_primary_kill", "redis", start,
                 time.time(), f"port {killed} killed; {promoted} promoted")


async def partition(soak: Soak) -> Fault:
    host = soak.hubs[0].host
    if host.netns is None:
        return _skipped("partition hub host <-> Redis", "partition", host.name)
    link = soak.redis_links[host.name]
    start = time.time()
    await link.partition(True)
    try:
        await asyncio.sleep(PARTITION_SECONDS)
    finally:
        await link.partition(False)
    return Fault("partition hub host <-> Redis", "partition", host.name, start, time.time(),
                 f"{PARTITION_SECONDS:.0f} s, traffic held both ways")


async def latency(soak: Soak) -> Fault:
    if soak.hubs[0].host.netns is None:
        return _skipped("20 ms on the Redis link", "latency", "all")
    start = time.time()
    await asyncio.gather(*(link.set_delay(LATENCY_MS_EACH_WAY) for link in soak.redis_links.values()))
    try:
        await asyncio.sleep(LATENCY_SECONDS)
    finally:
        await asyncio.gather(*(link.set_delay(0) for link in soak.redis_links.values()))
    return Fault("20 ms on the Redis link", "latency", "all", start, time.time(),
                 f"{LATENCY_MS_EACH_WAY * 2:.0f} ms added per round trip, both hosts")


async def database_down(soak: Soak) -> Fault:
    start = time.time()
    await asyncio.gather(*(link.refuse(True) for link in soak.db_links.values()))
    try:
        await asyncio.sleep(DB_OUTAGE_SECONDS)
    finally:
        await asyncio.gather(*(link.refuse(False) for link in soak.db_links.values()))
    return Fault("database unreachable", "database", "all", start, time.time(),
                 f"{DB_OUTAGE_SECONDS:.0f} s, connections reset and refused")


def _skipped(name: str, kind: str, host: str) -> Fault:
    now = time.time()
    return Fault(name, kind, host, now, now, skipped="needs network namespaces (running on loopback)")


# Faults that touch Redis are a lease (30 s) apart, so that each is judged on its own: the soak's
# first runs overlapped a failover and a partition and found users above the limit (see
# docs/operations.md, "Soak and chaos"). Latency and the database outage overlap on purpose.
CYCLE = (
    Step(0, "worker_kill", kill_worker),
    Step(5, "drain", drain_hub),
    Step(15, "redis_primary_kill", kill_redis_primary),
    Step(40, "partition", partition),
    Step(56, "latency", latency),
    Step(60, "database", database_down),
)
CYCLE_SECONDS = 80.0
"""A cycle's length: the last fault has ended and the hubs have settled."""


def plan(warmup: float, duration: float, quiet_fraction: float = 0.35) -> list[tuple[float, Step]]:
    """Every step of every cycle that fits before the quiet tail, as (offset from the run's
    start, step). At least one full cycle, whatever the duration."""
    steps = []
    start = warmup
    last_start = max(warmup, duration * (1 - quiet_fraction) - CYCLE_SECONDS)
    while True:
        steps += [(start + step.offset, step) for step in CYCLE]
        start += CYCLE_SECONDS
        if start > last_start:
            return steps
