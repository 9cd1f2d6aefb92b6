"""/metrics with several workers: the totals of every worker, whichever worker answers.

One hub with two uvicorn workers on a real Redis. Connections are new each time, so the kernel
spreads them over both workers; ``/admin/connections`` shows which worker holds each, which proves
that both counted some (otherwise a per-worker /metrics could pass by luck).
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families

from app.tokens import mint
from tests.conftest import make_token, redis_env
from tests.support.client import attempt
from tests.support.server import HubProcess

pytestmark = [pytest.mark.redis, pytest.mark.slow]

N = 20
Sample = tuple[str, frozenset[tuple[str, str]]]


def scrape(hub: HubProcess) -> dict[Sample, float]:
    """One scrape on a new connection (so that either worker may answer)."""
    response = httpx.get(f"{hub.http}/metrics", timeout=5, headers={"Connection": "close"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[Sample, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name.startswith("hub_"):
                samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict[Sample, float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def scrapes_agree(hub: HubProcess, count: int = 8) -> dict[Sample, float]:
    """Several scrapes, each on its own connection: all must show exactly the same samples."""
    first = scrape(hub)
    for _ in range(count - 1):
        assert scrape(hub) == first
    return first


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def wait_for_workers(hub: HubProcess, workers: int) -> None:
    wait_for(lambda: hub.log_text().count('"hub.started"') >= workers, 20, f"{workers} workers")


def connections(hub: HubProcess, prefix: str) -> list[dict[str, Any]]:
    admin = make_token(f"{prefix}-admin", ["admin"])
    response = httpx.get(f"{hub.http}/admin/connections", headers={"Authorization": f"Bearer {admin}"},
                         timeout=5)
    assert response.status_code == 200, response.text
    return [c for c in response.json() if c["sub"].startswith(prefix)]


async def open_agents(hub: HubProcess, subs: list[str]) -> list[Any]:
    async def one(sub: str) -> Any:
        ws = await websockets.connect(f"{hub.url}/ws/agent",
                                      additional_headers={"Authorization": f"Bearer {make_token(sub)}"})
        assert '"welcome"' in str(await asyncio.wait_for(ws.recv(), 5))
        return ws

    return list(await asyncio.gather(*(one(sub) for sub in subs)))


async def test_metrics_are_the_totals_of_every_worker(start_hub: Callable[..., HubProcess], redis_url: str) -> None:
    hub = start_hub(redis_env(redis_url), workers=2, name="metrics")
    wait_for_workers(hub, 2)
    prefix = f"msub{secrets.token_hex(4)}"
    # Before any connection the live gauge is there, at 0: a rule summing it gets 0, not nothing.
    samples = scrapes_agree(hub)
    for endpoint in ("agent", "dashboard"):
        assert samples[("hub_active_connections", frozenset({("endpoint", endpoint)}))] == 0

    # 20 accepted agents, opened together and kept open: spread over both workers.
    subs = [f"{prefix}-{i}" for i in range(N)]
    sockets = await open_agents(hub, subs)
    try:
        live = connections(hub, prefix)
        # The kernel may hand a whole burst to the worker that wakes first: open more bursts
        # (bounded) until both workers hold some; n is how many were accepted.
        for burst in range(5):
            if len({c["worker"] for c in live}) == 2:
                break
            sockets += await open_agents(hub, [f"{prefix}-b{burst}-{i}" for i in range(N // 2)])
            live = connections(hub, prefix)
        n = len(sockets)
        assert len(live) == n
        per_worker: dict[str, int] = {}
        for conn in live:
            per_worker[conn["worker"]] = per_worker.get(conn["worker"], 0) + 1
        assert len(per_worker) == 2, f"all connections on one worker: {per_worker}"

        wait_for(lambda: value(scrape(hub), "hub_active_connections", endpoint="agent") == n,
                 what="the active gauge to reach N")
        samples = scrapes_agree(hub)
        assert value(samples, "hub_active_connections", endpoint="agent") == n
        assert value(samples, "hub_active_connections", endpoint="dashboard") == 0
        assert value(samples, "hub_handshakes_total", endpoint="agent", outcome="accepted") == n

        # Refused with different codes, each on a new connection.
        wrong_key = "k" * 64
        for i in range(N):
            bad = await attempt(f"{hub.url}/ws/agent",
                                token=mint(wrong_key, "HS256", f"{prefix}-bad-{i}", ["agent"], 300))
            assert bad.status == 401 and bad.code == "token_invalid", bad
            wrong_role = await attempt(f"{hub.url}/ws/dashboard", token=make_token(f"{prefix}-r-{i}"))
            assert wrong_role.status == 403 and wrong_role.code == "role_forbidden", wrong_role

        samples = scrapes_agree(hub)
        assert value(samples, "hub_handshakes_total", endpoint="agent", outcome="accepted") == n
        assert value(samples, "hub_handshakes_total", endpoint="agent", outcome="token_invalid") == N
        assert value(samples, "hub_handshakes_total", endpoint="dashboard", outcome="role_forbidden") == N
        assert value(samples, "hub_auth_failures_total", reason="token_invalid") == N
        assert value(samples, "hub_handshake_seconds_count", endpoint="agent") == n + N
        assert value(samples, "hub_handshake_seconds_count", endpoint="dashboard") == N
        assert value(samples, "hub_active_connections", endpoint="agent") == n
        # One build-info line, not one per worker.
        assert [k for k in samples if k[0] == "hub_build_info"] == [
            ("hub_build_info", frozenset({("version", k_version(samples))}))
        ]
        assert sum(v for k, v in samples.items() if k[0] == "hub_build_info") == 1

        # Labels are bounded: no sub (nor anything token-shaped) in any label value.
        for _, labels in samples:
            for label, label_value in labels:
                assert prefix not in label_value, (label, label_value)
                assert not re.search(r"eyJ[\w-]+\.", label_value), (label, label_value)

        # A worker killed outright: its connections drop, its live gauge goes with it (the next
        # scrape or the replacement worker removes it), its counters stay in the totals.
        victim, victim_count = next(iter(per_worker.items()))
        victim_pid = int(victim.split("-")[-2])
        os.kill(victim_pid, signal.SIGKILL)
        survivors = n - victim_count
        wait_for(lambda: value(scrape(hub), "hub_active_connections", endpoint="agent") == survivors,
                 15, "the dead worker's gauge to be dropped")
        wait_for_workers(hub, 3)  # uvicorn replaced it
        samples = scrapes_agree(hub)
        assert value(samples, "hub_active_connections", endpoint="agent") == survivors
        assert value(samples, "hub_handshakes_total", endpoint="agent", outcome="accepted") == n
        assert value(samples, "hub_handshakes_total", endpoint="agent", outcome="token_invalid") == N
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)

    wait_for(lambda: value(scrape(hub), "hub_active_connections", endpoint="agent") == 0,
             what="the active gauge to return to 0")
    samples = scrapes_agree(hub)
    assert value(samples, "hub_handshakes_total", endpoint="agent", outcome="accepted") == n


def k_version(samples: dict[Sample, float]) -> str:
    for name, labels in samples:
        if name == "hub_build_info":
            return dict(labels)["version"]
    raise AssertionError("no hub_build_info")


def test_single_process_serves_its_own_registry(hub: HubProcess) -> None:
    """One worker, no multiprocess directory: the default registry, process metrics included."""
    response = httpx.get(f"{hub.http}/metrics", timeout=5)
    assert response.status_code == 200
    assert "hub_build_info{" in response.text
    assert "process_cpu_seconds_total" in response.text  # only the default registry has these


# -- the pieces, without a server ------------------------------------------------------------------


def test_metrics_directory_is_fresh_private_and_removed(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.serve import MULTIPROC_DIR_ENV, metrics_directory

    monkeypatch.delenv(MULTIPROC_DIR_ENV, raising=False)
    with metrics_directory(1) as none:
        assert none is None and MULTIPROC_DIR_ENV not in os.environ
    with metrics_directory(2) as path:
        assert path is not None and path.is_dir() and not any(path.iterdir())
        assert os.environ[MULTIPROC_DIR_ENV] == str(path)
        assert path.stat().st_mode & 0o077 == 0  # other local users can neither read nor forge
        (path / "counter_1.db").write_bytes(b"x")
    assert not path.exists() and MULTIPROC_DIR_ENV not in os.environ


def test_a_configured_metrics_directory_is_emptied_at_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from app.serve import MULTIPROC_DIR_ENV, metrics_directory

    configured = tmp_path / "metrics"
    configured.mkdir()
    (configured / "counter_123.db").write_bytes(b"stale")
    (configured / "keep.txt").write_text("not ours")
    monkeypatch.setenv(MULTIPROC_DIR_ENV, str(configured))
    with metrics_directory(1) as path:  # honoured even with one worker
        assert path == configured
        assert sorted(p.name for p in configured.iterdir()) == ["keep.txt"]
    assert configured.is_dir()  # the operator's directory stays


def test_dead_workers_lose_their_live_gauges_not_their_counters(tmp_path: Path) -> None:
    from app.metrics import reap_dead_workers

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = os.getppid()
    for name in (f"gauge_livesum_{dead.pid}.db", f"counter_{dead.pid}.db", f"histogram_{dead.pid}.db",
                 f"gauge_livesum_{alive}.db", f"gauge_max_{dead.pid}.db"):
        (tmp_path / name).write_bytes(b"")
    assert reap_dead_workers(str(tmp_path)) == [dead.pid]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"counter_{dead.pid}.db", f"histogram_{dead.pid}.db", f"gauge_livesum_{alive}.db",
         f"gauge_max_{dead.pid}.db"]
    )
