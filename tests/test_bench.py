"""The benchmark runs end to end in smoke mode and measures every row. It never asserts a speed."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMOKE_TIMEOUT_SECONDS = 420  # a bound, not a target: a loaded shared two-core machine needs ~4 min


@pytest.mark.slow
@pytest.mark.timeout(SMOKE_TIMEOUT_SECONDS + 30)
def test_smoke_run_measures_every_row(tmp_path: Path) -> None:
    out = tmp_path / "results"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(out)],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=SMOKE_TIMEOUT_SECONDS,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert (out / "results.md").read_text().startswith("# Hub benchmark (smoke)")
    document = json.loads((out / "results.json").read_text())

    meta = document["meta"]
    for key in ("date", "machine", "nproc", "python", "command"):
        assert meta[key], key
    assert "--smoke" in meta["command"]

    rows = {row["key"]: row for row in document["rows"]}
    assert {"handshakes_per_s", "handshake_p50_ms", "handshake_p99_ms", "churn_per_s", "rss_per_conn_kib",
            "relay_per_s", "relay_load_p99_ms", "relay_p50_ms", "relay_p99_ms", "fanout_all_ms",
            "fanout_p50_ms", "fanout_p99_ms", "fanout_rate_per_s", "redis_cmds_per_handshake",
            "events_per_s_history", "events_per_s_no_history"} <= rows.keys()
    # Every message row is measured against its bare relay (one process for the embedded hub,
    # two through Redis for the Redis hub), every connection row against the bare server.
    for key in ("relay_per_s", "relay_load_p99_ms", "relay_p50_ms", "relay_p99_ms", "fanout_all_ms",
                "fanout_p50_ms", "fanout_p99_ms", "fanout_rate_per_s", "events_per_s_history",
                "events_per_s_no_history"):
        assert rows[key]["bases"] == {"embedded": "bare_relay", "redis": "bare_relay_redis"}, key
        assert set(rows[key]["ratios"]) == {"embedded", "redis"}, key
    for key in ("churn_per_s", "rss_per_conn_kib"):
        assert rows[key]["bases"] == {"embedded": "baseline", "redis": "baseline"}, key
        assert set(rows[key]["ratios"]) == {"embedded", "redis"}, key
    # Closed-loop handshakes: each hub against bare-server rounds alternating with its own.
    assert rows["handshakes_per_s"]["bases"] == {"embedded": "embedded_bare", "redis": "redis_bare"}
    assert set(rows["handshakes_per_s"]["ratios"]) == {"embedded", "redis"}
    for hub in ("embedded", "redis"):
        closed = document["details"][hub]["handshake_closed"]
        paired = document["details"][f"{hub}_bare"]["handshake_closed"]
        assert len(closed["rounds"]) == len(paired["rounds"]) == 3
        assert closed["ok"] == sum(r["ok"] for r in closed["rounds"]) > 0
    for key, row in rows.items():
        assert row["values"], key
        for target, value in row["values"].items():
            assert isinstance(value, int | float) and math.isfinite(value), (key, target, value)
            assert target not in row["not_applicable"]
    assert not [n for n in document["notes"] if "FAILED" in n], document["notes"]
    assert {goal["verdict"] for goal in document["goals"]} <= {"PASS", "MISS"}


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.timeout(SMOKE_TIMEOUT_SECONDS + 30)
def test_ha_smoke_run_measures_every_ha_row(tmp_path: Path) -> None:
    out = tmp_path / "results"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--ha", "--out", str(out)],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=SMOKE_TIMEOUT_SECONDS,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    document = json.loads((out / "results.json").read_text())
    rows = {row["key"]: row for row in document["ha_rows"]}
    assert set(rows) == {"cluster_handshakes_per_s", "cluster_relay_per_s", "cluster_failover_s",
                         "sentinel_failover_s"}
    for key, row in rows.items():
        assert isinstance(row["value"], int | float) and math.isfinite(row["value"]), (key, row)
    for key in ("cluster_handshakes_per_s", "cluster_relay_per_s"):
        assert rows[key]["single"] and rows[key]["ratio"], rows[key]
    # Each failover was measured: handshakes were refused after the kill, then accepted again.
    for target in ("cluster", "sentinel"):
        failover = document["details"][target]["failover"]
        assert "error" not in failover, failover
        assert failover["refused"], failover
    assert not [n for n in document["notes"] if "FAILED" in n], document["notes"]
    assert "## Highly available Redis" in (out / "results.md").read_text()
