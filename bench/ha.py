"""The highly available Redis rows: the hub on a Redis Cluster against one Redis (same run), and
the seconds from a primary's ``kill -9`` until handshakes are accepted again.

The topologies are the test suite's (:mod:`tests.support.redis_ha`): 6-node cluster, Sentinel
group with ``down-after-milliseconds 1000``, loopback only, torn down by PID. The failover probe
is one handshake in flight every ``PROBE_INTERVAL_SECONDS`` from 127.0.0.1, whose per-address
window lives on the primary that is killed (on the cluster: the one that owns that key's slot).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from websockets.exceptions import InvalidStatus

from app.engine.redis import RedisEngine
from bench.client import Identity, open_ws
from tests.support.redis_ha import RedisCluster6, SentinelGroup

PROBE_INTERVAL_SECONDS = 0.05
FAILOVER_DEADLINE_SECONDS = 30.0
PROBE_TIMEOUT_SECONDS = 3.0
# The goal with down-after-milliseconds / cluster-node-timeout 1000.
FAILOVER_GOAL_SECONDS = 5.0

# (key, label, unit, (target, section, field) for the single node or None, (same) for the HA side)
HA_ROWS: tuple[tuple[str, str, str, tuple[str, str, str] | None, tuple[str, str, str]], ...] = (
    ("cluster_handshakes_per_s", "Handshakes/s, closed loop: Redis Cluster (vs one Redis)", "1/s",
     ("redis", "handshake_closed", "per_s"), ("cluster", "handshake_closed", "per_s")),
    ("cluster_relay_per_s", "Relay round trips/s: Redis Cluster (vs one Redis)", "1/s",
     ("redis", "relay_throughput", "per_s"), ("cluster", "relay_throughput", "per_s")),
    ("cluster_failover_s", "Seconds from kill -9 of a primary to handshakes accepted: Cluster", "s",
     None, ("cluster", "failover", "seconds")),
    ("sentinel_failover_s", "Seconds from kill -9 of the primary to handshakes accepted: Sentinel",
     "s", None, ("sentinel", "failover", "seconds")),
)


def cluster_victim(cluster: RedisCluster6, prefix: str) -> Callable[[], None]:
    """The kill of the cluster primary that holds 127.0.0.1's attempt window (every probe's)."""
    key = RedisEngine(cluster.url, prefix=prefix, worker_id="bench").keys.ip_key("127.0.0.1", "rate")
    return cluster.primary_of(key).kill


def sentinel_victim(group: SentinelGroup) -> Callable[[], None]:
    return group.primary.kill


async def _probe(url: str, token: str) -> str:
    """``ok`` for an accepted handshake, else the refusal's status or the error's type."""
    try:
        ws = await open_ws(url, token, timeout=PROBE_TIMEOUT_SECONDS)
    except InvalidStatus as exc:
        return str(exc.response.status_code)
    except (OSError, TimeoutError) as exc:
        return type(exc).__name__
    try:
        first = await asyncio.wait_for(ws.recv(), PROBE_TIMEOUT_SECONDS)
        return "ok" if '"welcome"' in str(first) else "closed"
    finally:
        await ws.close()


async def _failover(url: str, identity: Identity, kill: Callable[[], None]) -> dict[str, Any]:
    before = await _probe(url, identity.token(0))
    if before != "ok":
        raise RuntimeError(f"the hub refused a handshake before the kill: {before}")
    kill()
    killed = time.monotonic()
    refusals: Counter[str] = Counter()
    n = 1
    while time.monotonic() - killed < FAILOVER_DEADLINE_SECONDS:
        outcome = await _probe(url, identity.token(n))
        n += 1
        if outcome == "ok":
            return {"seconds": round(time.monotonic() - killed, 2), "refused": dict(refusals)}
        refusals[outcome] += 1
        await asyncio.sleep(PROBE_INTERVAL_SECONDS)
    raise RuntimeError(f"no handshake accepted {FAILOVER_DEADLINE_SECONDS}s after the kill: "
                       f"{dict(refusals)}")


def measure_failover(url: str, identity: Identity, kill: Callable[[], None]) -> dict[str, Any]:
    """Seconds from ``kill()`` until a handshake on ``url`` is accepted, and what was refused."""
    return asyncio.run(_failover(url, identity, kill))


def rows(results: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """The HA rows: the HA value, and the single node's and the ratio where one compares."""
    built = []
    for key, label, unit, single, ha in HA_ROWS:
        value = _figure(results, ha)
        base = _figure(results, single) if single else None
        ratio = value / base if value is not None and base else None
        built.append({"key": key, "label": label, "unit": unit, "value": value, "single": base,
                      "ratio": ratio})
    return built


def table(built: list[dict[str, Any]]) -> str:
    lines = ["| row | unit | one Redis | HA | ratio |", "|---|---|---|---|---|"]
    for row in built:
        cells = [row["label"], row["unit"], _cell(row["single"]), _cell(row["value"]),
                 f"{row['ratio']:.2f}x" if row["ratio"] is not None else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def goals(built: list[dict[str, Any]]) -> list[str]:
    """PASS/MISS of the failover goal per topology (NOT MEASURED when it failed)."""
    lines = []
    for row in built:
        if not row["key"].endswith("_failover_s"):
            continue
        value = row["value"]
        verdict = "NOT MEASURED" if value is None else (
            "PASS" if value < FAILOVER_GOAL_SECONDS else "MISS")
        shown = "" if value is None else f": {value:.2f} s"
        lines.append(f"- **{verdict}** handshakes accepted again < {FAILOVER_GOAL_SECONDS:.0f} s "
                     f"after kill -9 — {row['key'].split('_')[0]}{shown}")
    return lines


def _figure(results: dict[str, dict[str, dict[str, Any]]], where: tuple[str, str, str]) -> float | None:
    target, section, field = where
    value = results.get(target, {}).get(section, {}).get(field)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _cell(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}"
