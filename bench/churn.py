"""Churn: ``clients`` clients each connect, read ``welcome`` and close, again and again, with the
same identity every time (a reconnect storm: each client's slot is given back and taken again).
Cycles per second over all of them, from the first connect to the last close."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from typing import Any

from bench.client import (
    OPEN_TIMEOUT_SECONDS,
    Barrier,
    Identity,
    Meter,
    error_name,
    open_ws,
    ready,
    run_processes,
)
from bench.servers import cpu_seconds


@dataclass(frozen=True, slots=True)
class ChurnJob:
    """``clients`` clients (numbered from ``first``) of one process, ``cycles`` each."""

    url: str
    identity: Identity
    first: int
    clients: int
    cycles: int
    deadline: float = 120.0


async def _churn(job: ChurnJob, barrier: Barrier) -> dict[str, Any]:
    tokens = job.identity.tokens(job.first, job.clients)
    errors: Counter[str] = Counter()
    done = 0
    await ready(barrier)
    meter = Meter()

    async def client(token: str) -> None:
        nonlocal done
        for _ in range(job.cycles):
            try:
                ws = await open_ws(job.url, token)
                try:
                    await asyncio.wait_for(ws.recv(), OPEN_TIMEOUT_SECONDS)
                finally:
                    await ws.close()
                done += 1
            except Exception as exc:
                errors[error_name(exc)] += 1

    await asyncio.wait_for(asyncio.gather(*(client(t) for t in tokens)), job.deadline)
    return {**meter.done(), "cycles": done, "errors": dict(errors)}


def churn_child(job: ChurnJob, barrier: Barrier) -> dict[str, Any]:
    return asyncio.run(_churn(job, barrier))


def run_churn(url: str, identity: Identity, *, clients: int, cycles: int, processes: int,
              server_pids: list[int] | None = None) -> dict[str, Any]:
    """``clients`` clients spread over ``processes`` client processes, ``cycles`` cycles each."""
    share = [clients // processes + (1 if k < clients % processes else 0) for k in range(processes)]
    jobs = [ChurnJob(url, identity, first=sum(share[:k]), clients=share[k], cycles=cycles)
            for k in range(processes)]
    pids = server_pids or []
    cpu0 = cpu_seconds(pids)
    parts = run_processes(churn_child, jobs, timeout=jobs[0].deadline + 60)
    server_cpu = cpu_seconds(pids) - cpu0
    errors: Counter[str] = Counter()
    for part in parts:
        errors.update(part["errors"])
    wall = max(p["end"] for p in parts) - min(p["start"] for p in parts)
    cycles_done = sum(p["cycles"] for p in parts)
    return {
        "clients": clients, "cycles": cycles_done, "errors": dict(errors),
        "per_s": cycles_done / wall if wall > 0 else 0.0,
        "server_cpu_ms_per_cycle": 1000 * server_cpu / cycles_done if cycles_done and pids else None,
        "client_cpu_pct": [round(100 * p["cpu"] / max(p["end"] - p["start"], 1e-9), 1) for p in parts],
    }
