"""Event throughput: agents publish as fast as they can, dashboards subscribed to ``*`` count what
arrives. With one dashboard, against hubs with the event history on and off (same run), it shows
the history's cost: each event is numbered, kept and trimmed in the engine before it is published.
With many dashboards spread over client processes (and server processes), it is the sustained
fan-out delivery rate: deliveries per second from the first send to the last receipt."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, replace
from typing import Any

from websockets.asyncio.client import ClientConnection

from bench.client import Barrier, Identity, Meter, open_ws, ready, run_processes

PAYLOAD_BYTES = 128
READY_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class EventsJob:
    """``agents`` agents on ``agent_url`` send ``count`` events in all; ``viewers`` dashboards on
    ``dashboard_url`` subscribed to ``*`` (numbered from ``first_viewer``) each receive them."""

    agent_url: str
    dashboard_url: str
    agent: Identity
    viewer: Identity
    agents: int
    count: int
    viewers: int = 1
    first_viewer: int = 0
    deadline: float = 120.0


async def _watch(ws: ClientConnection) -> None:
    await ws.send(json.dumps({"type": "subscribe", "agents": "*", "id": 1}))
    while json.loads(await asyncio.wait_for(ws.recv(), READY_TIMEOUT_SECONDS))["type"] != "subscribed":
        pass


async def _events(job: EventsJob, barrier: Barrier) -> dict[str, Any]:
    viewers: list[ClientConnection] = []
    for n in range(job.first_viewer, job.first_viewer + job.viewers):
        ws = await open_ws(job.dashboard_url, job.viewer.token(n))
        await ws.recv()  # welcome
        await _watch(ws)
        viewers.append(ws)
    agents: list[ClientConnection] = []
    for n in range(job.agents):
        ws = await open_ws(job.agent_url, job.agent.token(n))
        await ws.recv()  # welcome
        agents.append(ws)
    received = 0
    expected = job.count * job.viewers
    done = asyncio.Event()
    if not expected:
        done.set()

    async def count(viewer: ClientConnection) -> None:
        nonlocal received
        async for raw in viewer:
            if '"type":"event"' in str(raw):
                received += 1
                if received >= expected:
                    done.set()

    readers = [asyncio.create_task(count(ws)) for ws in viewers]
    await ready(barrier)
    meter = Meter()
    started = time.perf_counter()
    text = json.dumps({"type": "event", "payload": {"data": "x" * PAYLOAD_BYTES}})

    async def publish(ws: ClientConnection, events: int) -> None:
        for _ in range(events):
            await ws.send(text)

    agents_n = max(job.agents, 1)
    share = [job.count // agents_n + (1 if k < job.count % agents_n else 0) for k in range(job.agents)]
    await asyncio.gather(*(publish(ws, n) for ws, n in zip(agents, share, strict=True)))
    with contextlib.suppress(TimeoutError):
        # Past the deadline what is missing counts as missing (and lowers the rate).
        await asyncio.wait_for(done.wait(), job.deadline)
    elapsed = time.perf_counter() - started
    figures = meter.done()
    # The readers keep reading while the sockets close: a reader cancelled first leaves what the
    # hub still sends (presence of the agents leaving) unread, the client stops reading at
    # max_queue, never sees the close frame, and each close waited its close_timeout (found as
    # 5 s steps in the measured wall time).
    await asyncio.gather(*(ws.close() for ws in [*viewers, *agents]))
    for task in readers:
        task.cancel()
    return {**figures, "events": job.count, "received": received,
            "missing": expected - received, "per_s": received / elapsed if elapsed > 0 else 0.0}


def events_child(job: EventsJob, barrier: Barrier) -> dict[str, Any]:
    return asyncio.run(_events(job, barrier))


def run_events(job: EventsJob) -> dict[str, Any]:
    """Events/s from the first send to the last receipt (one client process)."""
    [result] = run_processes(events_child, [job], timeout=job.deadline + 60)
    return result


def run_fanout_rate(job: EventsJob, dashboard_urls: list[str], processes: int) -> dict[str, Any]:
    """Sustained fan-out: the agents in one client process, ``job.viewers`` dashboards spread over
    ``processes`` more, each connected to the next of ``dashboard_urls`` in turn; deliveries per
    second from the first send to the last receipt."""
    share = [job.viewers // processes + (1 if k < job.viewers % processes else 0) for k in range(processes)]
    jobs = [replace(job, viewers=0)] + [
        replace(job, agents=0, dashboard_url=dashboard_urls[k % len(dashboard_urls)], viewers=share[k],
                first_viewer=sum(share[:k]))
        for k in range(processes)
    ]
    parts = run_processes(events_child, jobs, timeout=job.deadline + 60)
    wall = max(p["end"] for p in parts) - min(p["start"] for p in parts)
    received = sum(p["received"] for p in parts)
    return {
        "agents": job.agents, "dashboards": job.viewers, "events": job.count, "deliveries": received,
        "missing": sum(p["missing"] for p in parts), "per_s": received / wall if wall > 0 else 0.0,
        "client_cpu_pct": [round(100 * p["cpu"] / max(p["end"] - p["start"], 1e-9), 1) for p in parts],
    }
