"""Event throughput: agents publish as fast as they can, one dashboard watching them all counts
what arrives. Run against hubs with the event history on and off (same run) to show its cost:
each event is numbered, kept and trimmed in the engine before it is published."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection

from bench.client import Barrier, Identity, Meter, open_ws, ready, run_processes

PAYLOAD_BYTES = 128
READY_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class EventsJob:
    """``agents`` agents on ``agent_url`` send ``count`` events in all; one dashboard on
    ``dashboard_url`` subscribed to ``*`` receives them."""

    agent_url: str
    dashboard_url: str
    agent: Identity
    viewer: Identity
    agents: int
    count: int
    deadline: float = 120.0


async def _events(job: EventsJob, barrier: Barrier) -> dict[str, Any]:
    viewer = await open_ws(job.dashboard_url, job.viewer.token(0))
    await viewer.recv()  # welcome
    await viewer.send(json.dumps({"type": "subscribe", "agents": "*", "id": 1}))
    while json.loads(await asyncio.wait_for(viewer.recv(), READY_TIMEOUT_SECONDS))["type"] != "subscribed":
        pass
    agents: list[ClientConnection] = []
    for n in range(job.agents):
        ws = await open_ws(job.agent_url, job.agent.token(n))
        await ws.recv()  # welcome
        agents.append(ws)
    received = 0
    done = asyncio.Event()

    async def count() -> None:
        nonlocal received
        async for raw in viewer:
            if '"type":"event"' in str(raw):
                received += 1
                if received >= job.count:
                    done.set()

    reader = asyncio.create_task(count())
    await ready(barrier)
    meter = Meter()
    started = time.perf_counter()
    text = json.dumps({"type": "event", "payload": {"data": "x" * PAYLOAD_BYTES}})

    async def publish(ws: ClientConnection, events: int) -> None:
        for _ in range(events):
            await ws.send(text)

    share = [job.count // job.agents + (1 if k < job.count % job.agents else 0) for k in range(job.agents)]
    await asyncio.gather(*(publish(ws, n) for ws, n in zip(agents, share, strict=True)))
    with contextlib.suppress(TimeoutError):
        # Past the deadline what is missing counts as missing (and lowers the rate).
        await asyncio.wait_for(done.wait(), job.deadline)
    elapsed = time.perf_counter() - started
    reader.cancel()
    for ws in [viewer, *agents]:
        await ws.close()
    return {**meter.done(), "events": job.count, "received": received,
            "missing": job.count - received, "per_s": received / elapsed if elapsed > 0 else 0.0}


def events_child(job: EventsJob, barrier: Barrier) -> dict[str, Any]:
    return asyncio.run(_events(job, barrier))


def run_events(job: EventsJob) -> dict[str, Any]:
    """Events/s from the first send to the last receipt (one client process)."""
    [result] = run_processes(events_child, [job], timeout=job.deadline + 60)
    return result
