"""Idle connections: resident memory per authenticated connection, and the most one worker holds.

A child process opens the connections and keeps them open (no client pings; the server's pings
are answered by the client library) while this process reads the servers' ``VmRSS`` from
``/proc``; it closes them when told to, or when it is killed.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.protocol import State

from bench.client import OPEN_TIMEOUT_SECONDS, Identity, error_name, open_ws
from bench.servers import rss_kib

SETTLE_SECONDS = 1.5
MAX_CONSECUTIVE_FAILURES = 200


RETRIES = 3


@dataclass(frozen=True, slots=True)
class HoldJob:
    """Open ``count`` connections, ``concurrency`` handshakes at a time, spread over the source
    addresses ``sources`` (each 127.0.0.x holds ~28k ephemeral ports); stop early after
    ``MAX_CONSECUTIVE_FAILURES`` failures in a row or at ``deadline`` seconds."""

    url: str
    identity: Identity
    count: int
    concurrency: int
    sources: tuple[str, ...] = ()
    deadline: float = 120.0


async def _hold(job: HoldJob, pipe: Connection) -> None:
    held: list[ClientConnection] = []
    errors: Counter[str] = Counter()
    streak = 0
    next_index = iter(range(job.count))
    started = time.monotonic()

    async def worker() -> None:
        nonlocal streak
        for n in next_index:
            if streak >= MAX_CONSECUTIVE_FAILURES or time.monotonic() - started > job.deadline:
                return
            source = job.sources[n % len(job.sources)] if job.sources else None
            # A connect storm overflows the listen backlog now and then (EAGAIN, a reset): such
            # an attempt is counted as an error and tried again, a few times, after a pause.
            for attempt in range(RETRIES + 1):
                try:
                    ws = await open_ws(job.url, job.identity.token(n), local_addr=source)
                    await asyncio.wait_for(ws.recv(), OPEN_TIMEOUT_SECONDS)
                    held.append(ws)
                    streak = 0
                    break
                except Exception as exc:
                    errors[error_name(exc)] += 1
                    if attempt == RETRIES:
                        streak += 1
                    else:
                        await asyncio.sleep(0.2 * (attempt + 1))

    await asyncio.gather(*(worker() for _ in range(job.concurrency)))
    opening = time.monotonic() - started
    await asyncio.sleep(SETTLE_SECONDS)
    alive = sum(1 for ws in held if ws.state is State.OPEN)
    pipe.send({"opened": len(held), "alive": alive, "errors": dict(errors), "open_s": opening})
    await asyncio.to_thread(pipe.poll, job.deadline + 300)  # until told to let go


def hold_child(job: HoldJob, pipe: Connection) -> None:
    """Child process entry; the process exits (dropping every connection) when told to."""
    asyncio.run(_hold(job, pipe))


def measure_idle(job: HoldJob, pids: Callable[[], list[int]]) -> dict[str, Any]:
    """RSS (sum over ``pids()``) before and after ``job``'s connections are open and settled."""
    ctx = multiprocessing.get_context("spawn")
    parent_end, child_end = ctx.Pipe()
    time.sleep(SETTLE_SECONDS)
    before = rss_kib(pids())
    proc = ctx.Process(target=hold_child, args=(job, child_end), daemon=True)
    proc.start()
    try:
        if not parent_end.poll(job.deadline + 60):
            raise RuntimeError("idle connections: the client did not report in time")
        held: dict[str, Any] = parent_end.recv()
        after = rss_kib(pids())
        parent_end.send("release")
    finally:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=5)
    time.sleep(SETTLE_SECONDS)  # let the server notice the closes before the next row
    alive = int(held["alive"])
    return {
        **held,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "per_conn_kib": (after - before) / alive if alive else float("nan"),
    }
