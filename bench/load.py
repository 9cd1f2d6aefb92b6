"""Handshake load: closed-loop throughput, paced latency, and Redis commands per handshake.

One handshake is: connect (``Authorization: Bearer``) → read the first message (``welcome``) →
close. Its latency is from the start of the connect to the arrival of the welcome.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.client import (
    OPEN_TIMEOUT_SECONDS,
    Barrier,
    Identity,
    Meter,
    error_name,
    open_ws,
    percentile,
    ready,
    run_processes,
)
from bench.servers import cpu_seconds


@dataclass(frozen=True, slots=True)
class HandshakeJob:
    """The share of one client process. ``rate`` set: paced (open loop) at ``rate`` per second,
    starting ``phase`` seconds late; unset: closed loop with ``concurrency`` in flight."""

    url: str
    identity: Identity
    first: int
    count: int
    concurrency: int = 1
    rate: float | None = None
    phase: float = 0.0
    deadline: float = 120.0


async def _handshake(url: str, token: str) -> float:
    started = time.perf_counter()
    ws = await open_ws(url, token)
    try:
        await asyncio.wait_for(ws.recv(), OPEN_TIMEOUT_SECONDS)
        return time.perf_counter() - started
    finally:
        await ws.close()


async def _run(job: HandshakeJob, tokens: list[str], barrier: Barrier) -> dict[str, Any]:
    latencies: list[float] = []
    lags: list[float] = []
    errors: Counter[str] = Counter()

    async def attempt(token: str) -> None:
        try:
            latencies.append(await asyncio.wait_for(_handshake(job.url, token), OPEN_TIMEOUT_SECONDS * 2))
        except Exception as exc:
            errors[error_name(exc)] += 1

    await ready(barrier)
    meter = Meter()
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Task[None]] = []
    if job.rate is None:
        pending = iter(tokens)

        async def worker() -> None:
            for token in pending:
                await attempt(token)

        tasks = [asyncio.create_task(worker()) for _ in range(job.concurrency)]
    else:
        start = loop.time() + job.phase
        for i, token in enumerate(tokens):
            due = start + i / job.rate
            if (delay := due - loop.time()) > 0:
                await asyncio.sleep(delay)
            lags.append(loop.time() - due)
            tasks.append(asyncio.create_task(attempt(token)))
    _, late = await asyncio.wait(tasks, timeout=max(1.0, job.deadline - (time.time() - meter.wall0)))
    for task in late:
        task.cancel()
    if late:
        errors["deadline"] += job.count - len(latencies) - sum(errors.values())
    return {**meter.done(), "latencies": latencies, "errors": dict(errors),
            "lag_p99_ms": percentile(lags, 99) * 1000 if lags else 0.0}


def handshake_child(job: HandshakeJob, barrier: Barrier) -> dict[str, Any]:
    """Child process entry: mint the tokens first (not measured), then run the job."""
    tokens = job.identity.tokens(job.first, job.count)
    return asyncio.run(_run(job, tokens, barrier))


def run_handshakes(url: str, identity: Identity, count: int, *, processes: int,
                   concurrency: int = 1, rate: float | None = None, server_pids: list[int] | None = None,
                   deadline: float = 120.0) -> dict[str, Any]:
    """``count`` handshakes split over ``processes`` client processes; aggregated figures.

    Closed loop: ``concurrency`` in flight in total. Paced: ``rate`` per second in total, the
    processes interleaved (process k starts k/rate seconds later).
    """
    share = [count // processes + (1 if k < count % processes else 0) for k in range(processes)]
    jobs = [
        HandshakeJob(
            url=url, identity=identity, first=sum(share[:k]), count=share[k],
            concurrency=max(1, concurrency // processes),
            rate=rate / processes if rate else None, phase=k / rate if rate else 0.0,
            deadline=deadline,
        )
        for k in range(processes)
    ]
    pids = server_pids or []
    cpu0 = cpu_seconds(pids)
    parts = run_processes(handshake_child, jobs, timeout=deadline + 60)
    server_cpu = cpu_seconds(pids) - cpu0
    latencies = [lat for part in parts for lat in part["latencies"]]
    errors: Counter[str] = Counter()
    for part in parts:
        errors.update(part["errors"])
    wall = max(p["end"] for p in parts) - min(p["start"] for p in parts)
    ok = len(latencies)
    return {
        "ok": ok,
        "errors": dict(errors),
        "wall_s": wall,
        "per_s": ok / wall if wall > 0 else 0.0,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "max_ms": max(latencies) * 1000 if latencies else float("nan"),
        "client_cpu_pct": [round(100 * p["cpu"] / max(p["end"] - p["start"], 1e-9), 1) for p in parts],
        "schedule_lag_p99_ms": max(p["lag_p99_ms"] for p in parts),
        "server_cpu_ms_per_handshake": 1000 * server_cpu / ok if ok else float("nan"),
    }


def combine_rounds(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several :func:`run_handshakes` results of one server as one: rates over the summed
    handshakes and time, CPU per handshake weighted, latency percentiles the median of the
    rounds' (each round's own is in ``rounds``)."""
    ok = sum(int(r["ok"]) for r in runs)
    wall = sum(float(r["wall_s"]) for r in runs)
    errors: Counter[str] = Counter()
    for r in runs:
        errors.update(r["errors"])
    cpu = sum(float(r["server_cpu_ms_per_handshake"]) * int(r["ok"]) for r in runs if r["ok"])
    return {
        "ok": ok,
        "errors": dict(errors),
        "wall_s": wall,
        "per_s": ok / wall if wall > 0 else 0.0,
        "p50_ms": statistics.median(float(r["p50_ms"]) for r in runs),
        "p99_ms": statistics.median(float(r["p99_ms"]) for r in runs),
        "max_ms": max(float(r["max_ms"]) for r in runs),
        "client_cpu_pct": [max(r["client_cpu_pct"][k] for r in runs)
                           for k in range(len(runs[0]["client_cpu_pct"]))],
        "schedule_lag_p99_ms": max(float(r["schedule_lag_p99_ms"]) for r in runs),
        "server_cpu_ms_per_handshake": cpu / ok if ok else float("nan"),
        "rounds": [{k: r[k] for k in ("ok", "per_s", "p50_ms", "p99_ms", "server_cpu_ms_per_handshake")}
                   for r in runs],
    }


# Redis ------------------------------------------------------------------------------------------
SCRIPTS = {
    hashlib.sha1(path.read_bytes()).hexdigest(): f"evalsha {path.stem}"
    for path in (Path(__file__).resolve().parents[1] / "app" / "engine" / "lua").glob("*.lua")
}
# What a handshake itself costs; the rest of a connect + close is the close (release, presence).
HANDSHAKE_SCRIPTS = ("evalsha check_ip", "evalsha admit_user")

class Monitor:
    """Counts the commands Redis receives from clients (``MONITOR``), by name, in a thread.

    ``INFO commandstats`` also counts the commands a Lua script runs inside one ``EVALSHA``;
    MONITOR tells them apart (their source is ``lua``), so ``client`` is what crossed the network:
    an upper bound of the round trips (a pipeline or MULTI/EXEC sends several in one).
    """

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.sendall(b"MONITOR\r\n")
        self.client: Counter[str] = Counter()
        self.script: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        buffer = b""
        self.sock.settimeout(None)
        while True:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            *lines, buffer = (buffer + chunk).split(b"\r\n")
            with self._lock:
                for line in lines:
                    source, _, rest = line.partition(b"] ")
                    if not rest.startswith(b'"'):
                        continue  # +OK, or not a command line
                    parts = rest.split(b'"')
                    name = parts[1].decode(errors="replace").lower()
                    if name == "evalsha" and len(parts) > 3:
                        # Name the script: its SHA1 is the hub's Lua file's.
                        name = SCRIPTS.get(parts[3].decode(errors="replace"), name)
                    (self.script if source.endswith(b" lua") else self.client)[name] += 1

    def snapshot(self) -> tuple[Counter[str], Counter[str]]:
        time.sleep(0.2)  # let the reader catch up with what Redis already sent
        with self._lock:
            return Counter(self.client), Counter(self.script)

    def close(self) -> None:
        self.sock.close()
        self._thread.join(timeout=2)


def redis_commands_per_handshake(redis_port: int, run: Callable[[], dict[str, Any]],
                                 idle_seconds: float) -> dict[str, Any]:
    """Commands Redis received from the hub during ``run()`` (a handshake workload), per handshake.

    The hubs' background traffic (lease renewals, sweeps) is counted over ``idle_seconds`` first,
    and its rate times the workload's duration is subtracted.
    """
    monitor = Monitor(redis_port)
    try:
        idle0, _ = monitor.snapshot()
        time.sleep(idle_seconds)
        client0, script0 = monitor.snapshot()
        background_rate = sum((client0 - idle0).values()) / idle_seconds
        started = time.monotonic()
        result = run()
        elapsed = time.monotonic() - started
        client1, script1 = monitor.snapshot()
    finally:
        monitor.close()
    client, script = client1 - client0, script1 - script0
    ok = max(int(result["ok"]), 1)
    return {
        "handshakes": result["ok"],
        "errors": result["errors"],
        "per_handshake": sum(client[name] for name in HANDSHAKE_SCRIPTS) / ok,
        "per_connect_and_close": (sum(client.values()) - background_rate * elapsed) / ok,
        "script_commands_per_handshake": sum(script.values()) / ok,
        "background_per_s": background_rate,
        "by_command": {name: round(calls / ok, 3) for name, calls in client.most_common()},
    }
