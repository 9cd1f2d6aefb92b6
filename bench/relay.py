"""Relayed messages: command round trips, the baseline's echo, and event fan-out.

Hub round trip: a dashboard (roles dashboard + operator) sends ``command`` → the agent receives
``command`` → answers ``result`` → the dashboard receives ``result``. The payload carries a
sequence number that the agent echoes back, so a result is matched without the command id. The
baseline's round trip is the echo of the same text. Fan-out: one agent ``event`` to every
subscribed dashboard, latency measured per dashboard.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection

from bench.client import Barrier, Identity, Meter, open_ws, percentile, ready, run_processes

PAYLOAD_BYTES = 128
READY_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class RelayJob:
    """``pairs`` dashboard/agent pairs (``echo``: plain connections to ``dashboard_url``), each
    with ``window`` round trips in flight, ``count`` round trips in all for this process."""

    echo: bool
    dashboard_url: str
    agent_url: str
    dashboards: Identity
    agents: Identity
    first: int
    pairs: int
    window: int
    count: int
    deadline: float = 120.0


class _Pair:
    """One dashboard (and its agent, for the hub) with round trips matched by sequence number."""

    def __init__(self, job: RelayJob, dashboard: ClientConnection, agent: ClientConnection | None,
                 agent_id: str) -> None:
        self.job, self.dashboard, self.agent, self.agent_id = job, dashboard, agent, agent_id
        self.waiting: dict[int, asyncio.Future[None]] = {}
        self.refused = 0
        self.tasks = [asyncio.create_task(self._read_dashboard())]
        if agent is not None:
            self.tasks.append(asyncio.create_task(self._answer(agent)))

    def text(self, seq: int) -> str:
        payload = {"seq": seq, "data": "x" * PAYLOAD_BYTES}
        return json.dumps({"type": "command", "agent_id": self.agent_id, "payload": payload, "id": seq})

    async def _read_dashboard(self) -> None:
        async for raw in self.dashboard:
            message = json.loads(raw)
            kind = message.get("type")
            if kind in ("result", "command") and isinstance(message.get("payload"), dict):
                future = self.waiting.pop(message["payload"].get("seq"), None)
                if future is not None and not future.done():
                    future.set_result(None)
            elif kind == "error":
                self.refused += 1
                future = self.waiting.pop(message.get("ref"), None)
                if future is not None and not future.done():
                    future.set_exception(RuntimeError(message.get("error")))

    @staticmethod
    async def _answer(agent: ClientConnection) -> None:
        async for raw in agent:
            message = json.loads(raw)
            if message.get("type") == "command":
                await agent.send(json.dumps({"type": "result", "command_id": message["command_id"],
                                             "payload": message["payload"]}))

    async def round_trip(self, seq: int) -> float:
        future = asyncio.get_running_loop().create_future()
        self.waiting[seq] = future
        started = time.perf_counter()
        await self.dashboard.send(self.text(seq))
        await asyncio.wait_for(future, READY_TIMEOUT_SECONDS)
        return time.perf_counter() - started

    async def until_routable(self, seqs: itertools.count[int]) -> None:
        """The agent's presence may trail its welcome: retry a command until it goes through."""
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while True:
            try:
                await self.round_trip(next(seqs))
                return
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for ws in (self.dashboard, self.agent):
            if ws is not None:
                await ws.close()


async def _relay(job: RelayJob, barrier: Barrier) -> dict[str, Any]:
    pairs: list[_Pair] = []
    seqs = itertools.count(job.first * 1_000_000)
    for n in range(job.first, job.first + job.pairs):
        agent_id = f"{job.agents.prefix}-{n}"
        dashboard = await open_ws(job.dashboard_url, job.dashboards.token(n))
        await dashboard.recv()  # welcome
        agent = None
        if not job.echo:
            agent = await open_ws(job.agent_url, job.agents.token(n))
            await agent.recv()
        pairs.append(_Pair(job, dashboard, agent, agent_id))
    for pair in pairs:
        await pair.until_routable(seqs)
    await ready(barrier)
    meter = Meter()
    latencies: list[float] = []
    budget = iter(range(job.count))

    async def lane(pair: _Pair) -> None:
        for _ in budget:
            latencies.append(await pair.round_trip(next(seqs)))

    lanes = [lane(pair) for pair in pairs for _ in range(job.window)]
    await asyncio.wait_for(asyncio.gather(*lanes), job.deadline)
    result = {**meter.done(), "latencies": latencies, "refused": sum(p.refused for p in pairs)}
    for pair in pairs:
        await pair.close()
    return result


def relay_child(job: RelayJob, barrier: Barrier) -> dict[str, Any]:
    return asyncio.run(_relay(job, barrier))


def run_relay(job: RelayJob, processes: int) -> dict[str, Any]:
    """Run ``job`` in ``processes`` client processes (each its own pairs and share of the count)."""
    jobs = [
        RelayJob(job.echo, job.dashboard_url, job.agent_url, job.dashboards, job.agents,
                 first=job.first + k * job.pairs, pairs=job.pairs, window=job.window,
                 count=job.count // processes, deadline=job.deadline)
        for k in range(processes)
    ]
    parts = run_processes(relay_child, jobs, timeout=job.deadline + 90)
    latencies = [lat for part in parts for lat in part["latencies"]]
    wall = max(p["end"] for p in parts) - min(p["start"] for p in parts)
    return {
        "round_trips": len(latencies),
        "per_s": len(latencies) / wall if wall > 0 else 0.0,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "refused": sum(p["refused"] for p in parts),
        "client_cpu_pct": [round(100 * p["cpu"] / max(p["end"] - p["start"], 1e-9), 1) for p in parts],
    }


# Fan-out ----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class FanoutJob:
    """``dashboards`` subscribers on ``dashboard_url`` (numbered from ``first``); the process with
    ``sends`` set also connects the agent on ``agent_url`` and sends ``events`` events (after one
    warm-up event), ``interval`` seconds apart."""

    agent_url: str
    dashboard_url: str
    agent: Identity
    viewers: Identity
    first: int
    dashboards: int
    events: int
    interval: float
    sends: bool
    deadline: float = 120.0


async def _fanout(job: FanoutJob, barrier: Barrier) -> dict[str, Any]:
    agent_id = f"{job.agent.prefix}-0"
    received: dict[int, list[float]] = {}

    async def watch(ws: ClientConnection) -> None:
        async for raw in ws:
            if '"event"' in str(raw):
                now = time.perf_counter()
                payload = json.loads(raw)["payload"]
                received.setdefault(payload["seq"], []).append(now - payload["sent"])

    viewers: list[ClientConnection] = []
    for n in range(job.first, job.first + job.dashboards):
        ws = await open_ws(job.dashboard_url, job.viewers.token(n))
        await ws.recv()  # welcome
        await ws.send(json.dumps({"type": "subscribe", "agents": [agent_id], "id": 1}))
        while json.loads(await asyncio.wait_for(ws.recv(), READY_TIMEOUT_SECONDS))["type"] != "subscribed":
            pass
        viewers.append(ws)
    readers = [asyncio.create_task(watch(ws)) for ws in viewers]
    agent = await open_ws(job.agent_url, job.agent.token(0)) if job.sends else None
    if agent is not None:
        await agent.recv()
    await ready(barrier)
    meter = Meter()
    if agent is not None:
        for seq in range(job.events + 1):  # seq 0 is the warm-up
            payload = {"seq": seq, "sent": time.perf_counter()}
            await agent.send(json.dumps({"type": "event", "payload": payload}))
            await asyncio.sleep(job.interval)
    else:
        await asyncio.sleep(job.interval * (job.events + 1))
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while len(received.get(job.events, ())) < job.dashboards and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    result = {**meter.done(), "received": {seq: lat for seq, lat in received.items() if seq > 0}}
    for task in readers:
        task.cancel()
    for ws in [*viewers, *([agent] if agent else [])]:
        await ws.close()
    return result


def fanout_child(job: FanoutJob, barrier: Barrier) -> dict[str, Any]:
    """Child process entry. Latencies use ``time.perf_counter`` (CLOCK_MONOTONIC, system-wide on
    Linux), so a send in one process and a receipt in another are comparable."""
    return asyncio.run(_fanout(job, barrier))


def run_fanout(agent_url: str, dashboard_urls: list[str], agent: Identity, viewers: Identity, *,
               dashboards: int, events: int, interval: float, processes: int) -> dict[str, Any]:
    """One agent's events to ``dashboards`` subscribers spread over ``processes`` clients, client
    ``k`` connected to ``dashboard_urls[k % len(dashboard_urls)]`` (spread over server processes)."""
    share = [dashboards // processes + (1 if k < dashboards % processes else 0) for k in range(processes)]
    jobs = [FanoutJob(agent_url, dashboard_urls[k % len(dashboard_urls)], agent, viewers,
                      first=sum(share[:k]), dashboards=share[k], events=events, interval=interval,
                      sends=k == 0)
            for k in range(processes)]
    parts = run_processes(fanout_child, jobs, timeout=events * interval + 150)
    per_event: dict[int, list[float]] = {}
    for part in parts:
        for seq, lats in part["received"].items():
            per_event.setdefault(int(seq), []).extend(lats)
    complete = [max(lats) for lats in per_event.values() if len(lats) == dashboards]
    everything = [lat for lats in per_event.values() for lat in lats]
    return {
        "dashboards": dashboards,
        "events": events,
        "deliveries": len(everything),
        "missing": events * dashboards - len(everything),
        "all_received_p50_ms": percentile(complete, 50) * 1000,
        "all_received_max_ms": max(complete) * 1000 if complete else float("nan"),
        "p50_ms": percentile(everything, 50) * 1000,
        "p99_ms": percentile(everything, 99) * 1000,
        "client_cpu_pct": [round(100 * p["cpu"] / max(p["end"] - p["start"], 1e-9), 1) for p in parts],
    }
