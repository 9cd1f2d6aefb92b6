"""Client-side helpers: tokens, connections, percentiles, and load generators in child processes.

The load generators are Python (the ``websockets`` client) and can be the bottleneck, so every
workload runs in spawned child processes, started together on a barrier, each reporting the CPU
time it used so that a saturated client shows in the report.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import queue
import resource
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from app.tokens import mint

ALGORITHM = "HS256"
TOKEN_TTL_SECONDS = 3600.0
OPEN_TIMEOUT_SECONDS = 10.0

# The multiprocessing barrier type is created by a context; Any keeps the signature honest.
Barrier = Any


@dataclass(frozen=True, slots=True)
class Identity:
    """Who the clients of a workload are: ``<prefix>-<n>`` with these roles, signed by ``secret``."""

    secret: str
    prefix: str
    roles: tuple[str, ...]

    def token(self, n: int) -> str:
        return mint(self.secret, ALGORITHM, f"{self.prefix}-{n}", list(self.roles), TOKEN_TTL_SECONDS)

    def tokens(self, start: int, count: int) -> list[str]:
        return [self.token(n) for n in range(start, start + count)]


async def open_ws(url: str, token: str, *, local_addr: str | None = None,
                  timeout: float = OPEN_TIMEOUT_SECONDS) -> ClientConnection:
    """Connect with ``Authorization: Bearer``; no compression and no client pings (the server's
    pings are the configuration under test)."""
    extra: dict[str, Any] = {"local_addr": (local_addr, 0)} if local_addr else {}
    return await connect(
        url, additional_headers={"Authorization": f"Bearer {token}"}, compression=None,
        ping_interval=None, open_timeout=timeout, close_timeout=5, **extra,
    )


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def cpu_now() -> float:
    """CPU time (user + system) of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Meter:
    """Wall and CPU time of the measured part of one child process."""

    def __init__(self) -> None:
        self.wall0 = time.time()
        self.cpu0 = cpu_now()

    def done(self) -> dict[str, float]:
        return {"start": self.wall0, "end": time.time(), "cpu": cpu_now() - self.cpu0}


def error_name(exc: BaseException) -> str:
    """A short, stable label for a failed client operation (status code when there is one)."""
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return f"{type(exc).__name__}:{status}" if status else type(exc).__name__


def _child(fn: Callable[[Any, Barrier], dict[str, Any]], job: Any, barrier: Barrier,
           results: Any, index: int) -> None:
    try:
        results.put((index, fn(job, barrier), None))
    except BaseException:  # report everything: the parent turns it into a failed row
        barrier.abort()
        results.put((index, None, traceback.format_exc()))


def run_processes(fn: Callable[[Any, Barrier], dict[str, Any]], jobs: Sequence[Any],
                  timeout: float) -> list[dict[str, Any]]:
    """Run ``fn(job, barrier)`` in one spawned process per job; return their results in order.

    ``barrier`` (one party per job) lets the processes finish their setup and start measuring
    together. Every process is killed when this returns, on time or not; a failure or a timeout
    raises RuntimeError.
    """
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(jobs))
    results = ctx.Queue()
    procs = [ctx.Process(target=_child, args=(fn, job, barrier, results, i), daemon=True)
             for i, job in enumerate(jobs)]
    for proc in procs:
        proc.start()
    collected: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(collected) < len(jobs):
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"{fn.__name__}: no result within {timeout:.0f}s")
            try:
                index, result, failure = results.get(timeout=min(left, 1.0))
            except queue.Empty:
                if any(p.exitcode not in (None, 0) for p in procs):
                    raise RuntimeError(f"{fn.__name__}: a client process died") from None
                continue
            if failure is not None:
                raise RuntimeError(f"{fn.__name__} failed in a client process:\n{failure}")
            collected[index] = result
        return [collected[i] for i in range(len(jobs))]
    finally:
        for proc in procs:
            proc.join(timeout=2)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)


async def ready(barrier: Barrier, timeout: float = 120.0) -> None:
    """Wait, without blocking the event loop, until every process of the workload is ready."""
    await asyncio.to_thread(barrier.wait, timeout)
