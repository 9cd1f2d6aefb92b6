"""The report: rows of figures per target, ratios to the baseline, goals, table and files.

``results.json`` holds every row (a ``null`` value means a figure that should have been measured
and was not), the goals with their verdicts, the raw details of every section and the run's
metadata; ``results.md`` is the same for people.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import ha

HUBS = ("embedded", "redis")
# Each hub's baseline: the bare server for connections, the bare relay for messages.
BARE = {"embedded": "baseline", "redis": "baseline"}
# The closed-loop handshakes: the bare server's rounds alternating with each hub's.
PAIRED = {"embedded": "embedded_bare", "redis": "redis_bare"}
RELAY = {"embedded": "bare_relay", "redis": "bare_relay_redis"}
BASELINES = ("baseline", "bare_relay", "bare_relay_redis")
TARGET_TITLES = {
    "baseline": "bare server (FastAPI endpoint, welcome, no checks)",
    "bare_relay": "bare relay in one process (in-process forwarding)",
    "bare_relay_redis": "bare relay in 2 procs through Redis PUBLISH/SUBSCRIBE",
    "embedded": "hub embedded, 1 worker",
    "redis": "hub Redis, 2 workers (handshakes) / 2 procs (messages)",
    "embedded_bare": "bare server, closed-loop rounds alternating with the embedded hub's",
    "redis_bare": "bare server, closed-loop rounds alternating with the Redis hub's",
}
Results = dict[str, dict[str, dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class Row:
    """One figure of ``section`` (``base_section`` on the baseline) per hub, with its ratio to
    the hub's baseline in ``bases`` (none: the figure has no baseline)."""

    key: str
    label: str
    unit: str
    section: str
    field: str
    bases: dict[str, str]
    hubs: tuple[str, ...] = HUBS
    optional: bool = False  # shown only when some target measured it
    base_section: str | None = None


NONE: dict[str, str] = {}
ROWS = (
    Row("handshakes_per_s", "Handshakes/s, closed loop (rounds alternating with the bare server's)",
        "1/s", "handshake_closed", "per_s", PAIRED),
    Row("handshake_p50_ms", "Handshake p50, paced 200/s", "ms", "handshake_paced", "p50_ms", BARE),
    Row("handshake_p99_ms", "Handshake p99, paced 200/s", "ms", "handshake_paced", "p99_ms", BARE),
    Row("churn_per_s", "Churn: connect, welcome, close cycles/s (same clients in a loop)", "1/s",
        "churn", "per_s", BARE),
    Row("rss_per_conn_kib", "RSS per idle connection", "KiB", "memory", "per_conn_kib", BARE),
    Row("relay_per_s", "Relay round trips/s, 32 in flight", "1/s", "relay_throughput", "per_s", RELAY),
    Row("relay_load_p99_ms", "Relay round trip p99, 32 in flight", "ms", "relay_throughput", "p99_ms",
        RELAY),
    Row("relay_p50_ms", "Relay round trip p50, 1 in flight", "ms", "relay_latency", "p50_ms", RELAY),
    Row("relay_p99_ms", "Relay round trip p99, 1 in flight", "ms", "relay_latency", "p99_ms", RELAY),
    Row("fanout_all_ms", "Fan-out of one event: all dashboards received (p50 over events)", "ms",
        "fanout", "all_received_p50_ms", RELAY),
    Row("fanout_p50_ms", "Fan-out of one event: per-dashboard latency p50", "ms", "fanout", "p50_ms",
        RELAY),
    Row("fanout_p99_ms", "Fan-out of one event: per-dashboard latency p99", "ms", "fanout", "p99_ms",
        RELAY),
    Row("fanout_rate_per_s", "Fan-out sustained: deliveries/s, agents flooding dashboards on *", "1/s",
        "fanout_rate", "per_s", RELAY),
    Row("events_per_s_history", "Events/s to a dashboard, history on (100 per agent)", "1/s",
        "events_history", "per_s", RELAY, base_section="events"),
    Row("events_per_s_no_history", "Events/s to a dashboard, history off (size 0)", "1/s",
        "events_no_history", "per_s", RELAY, base_section="events"),
    Row("redis_cmds_per_handshake", "Redis round trips per handshake (check_ip + admit_user)", "",
        "redis_ops", "per_handshake", NONE, ("redis",)),
    Row("redis_cmds_per_connect_close", "Redis commands per dashboard connect + close", "", "redis_ops",
        "per_connect_and_close", NONE, ("redis",)),
    Row("redis_cmds_per_agent_handshake", "Redis commands per agent connect + close (with presence)", "",
        "redis_ops_agent", "per_connect_and_close", NONE, ("redis",)),
    Row("max_idle_conns", "Max idle connections, one embedded worker", "", "max_conns", "alive", NONE,
        ("embedded",), optional=True),
)


@dataclass(frozen=True, slots=True)
class Goal:
    text: str
    row: str
    targets: tuple[str, ...]
    check: Callable[[float], bool]
    threshold: float
    ratio: bool  # compare the ratio to the baseline, not the value


GOALS = (
    Goal("handshake throughput >= 0.7x bare server", "handshakes_per_s", HUBS, lambda r: r >= 0.7, 0.7,
         True),
    Goal("p99 handshake latency < 5 ms at paced 200/s", "handshake_p99_ms", HUBS,
         lambda v: v < 5.0, 5.0, False),
    Goal("memory per connection <= 1.2x bare server", "rss_per_conn_kib", HUBS,
         lambda r: r <= 1.2, 1.2, True),
    Goal(">= 20,000 idle connections on one worker", "max_idle_conns", ("embedded",),
         lambda v: v >= 20_000, 20_000, False),
    Goal("Redis round trips per handshake <= 2", "redis_cmds_per_handshake", ("redis",),
         lambda v: v <= 2.0, 2.0, False),
    Goal("relay round trips/s >= 0.8x bare relay", "relay_per_s", HUBS, lambda r: r >= 0.8, 0.8, True),
    Goal("relay p99 (32 in flight) <= 1.5x bare relay", "relay_load_p99_ms", ("redis",),
         lambda r: r <= 1.5, 1.5, True),
    Goal("sustained fan-out deliveries/s >= 0.8x bare relay", "fanout_rate_per_s", HUBS,
         lambda r: r >= 0.8, 0.8, True),
    Goal("fan-out of one event, per-dashboard p99 <= 2x bare relay", "fanout_p99_ms", ("redis",),
         lambda r: r <= 2.0, 2.0, True),
)


def _finite(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _figure(results: Results, target: str, section: str, field: str) -> float | None:
    return _finite(results.get(target, {}).get(section, {}).get(field))


def build_rows(results: Results) -> list[dict[str, Any]]:
    """Per row: ``values`` by target (hubs and their baselines), ``bases`` (hub -> baseline)
    and ``ratios`` (hub -> value over its baseline's)."""
    rows = []
    for row in ROWS:
        measured = any(row.section in results.get(t, {}) for t in row.hubs)
        if row.optional and not measured:
            continue
        values = {t: _figure(results, t, row.section, row.field) for t in row.hubs}
        bases = {hub: row.bases[hub] for hub in row.hubs if hub in row.bases}
        for base in dict.fromkeys(bases.values()):
            values[base] = _figure(results, base, row.base_section or row.section, row.field)
        ratios = {}
        for hub, base in bases.items():
            value, reference = values[hub], values[base]
            if value is not None and reference not in (None, 0.0):
                ratios[hub] = value / reference
        rows.append({"key": row.key, "label": row.label, "unit": row.unit, "values": values,
                     "bases": bases, "ratios": ratios,
                     "not_applicable": [t for t in HUBS if t not in row.hubs]})
    return rows


def judge(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """PASS/MISS per goal and target; a goal whose row was not measured is left out."""
    by_key = {row["key"]: row for row in rows}
    verdicts = []
    for goal in GOALS:
        row = by_key.get(goal.row)
        if row is None:
            continue
        for target in goal.targets:
            got = row["ratios"].get(target) if goal.ratio else row["values"].get(target)
            if got is None:
                verdicts.append({"goal": goal.text, "target": target, "verdict": "NOT MEASURED"})
                continue
            ok = goal.check(got)
            off = abs(got - goal.threshold) / goal.threshold * 100
            shown = f"{got:.2f}x" if goal.ratio else f"{got:,.2f}"
            verdicts.append({"goal": goal.text, "target": target, "value": got,
                             "verdict": "PASS" if ok else "MISS",
                             "detail": f"{shown} ({'within' if ok else 'misses'} by {off:.0f}%)"})
    return verdicts


def _cell(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}"


_BASE_SHORT = {"baseline": "bare", "bare_relay": "relay 1p", "bare_relay_redis": "relay Redis",
               "embedded_bare": "bare, paired", "redis_bare": "bare, paired"}


def table(rows: list[dict[str, Any]]) -> str:
    """One line per row: each hub's value, its baseline's (named) and the ratio."""
    header = ["row", "unit", "embedded", "its baseline", "ratio", "redis", "its baseline", "ratio"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["label"], row["unit"]]
        for hub in HUBS:
            if hub in row["not_applicable"]:
                cells += ["n/a", "", ""]
                continue
            base = row["bases"].get(hub)
            ratio = row["ratios"].get(hub)
            cells += [_cell(row["values"][hub]),
                      f"{_cell(row['values'][base])} ({_BASE_SHORT[base]})" if base else "",
                      f"{ratio:.2f}x" if ratio is not None else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def notes(results: Results) -> list[str]:
    """Where the time goes: client CPU saturation, server CPU per handshake, errors."""
    found = []
    for target, sections in results.items():
        for name, section in sections.items():
            if "error" in section and isinstance(section["error"], str):
                found.append(f"{target}/{name} FAILED: {section['error'].splitlines()[-1]}")
                continue
            cpus = section.get("client_cpu_pct") or []
            if any(c >= 90 for c in cpus):
                found.append(f"{target}/{name}: client process saturated (CPU {cpus}%): the "
                             "figure is a lower bound of the server's capacity")
            if section.get("errors"):
                found.append(f"{target}/{name}: client errors {section['errors']}")
        closed = sections.get("handshake_closed", {})
        if _finite(closed.get("server_cpu_ms_per_handshake")) is not None:
            found.append(f"{target}: server CPU {closed['server_cpu_ms_per_handshake']:.2f} ms per "
                         f"handshake (closed loop, client CPU {closed.get('client_cpu_pct')}%)")
        if "redis_ops" in sections and "by_command" in sections["redis_ops"]:
            ops = sections["redis_ops"]
            found.append(f"{target}: Redis commands sent per dashboard handshake (connect + close) by "
                         f"command: {ops['by_command']}; commands run inside scripts: "
                         f"{ops['script_commands_per_handshake']:.1f}")
        if "redis_ops_agent" in sections and "by_command" in sections["redis_ops_agent"]:
            ops = sections["redis_ops_agent"]
            found.append(f"{target}: Redis commands sent per agent handshake (connect + close) by "
                         f"command: {ops['by_command']}; commands run inside scripts: "
                         f"{ops['script_commands_per_handshake']:.1f}")
    return found


def metadata(command: str, mode: str, profile: dict[str, Any]) -> dict[str, Any]:
    import uvicorn
    import websockets

    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": platform.machine(),
        "nproc": os.cpu_count(),
        "python": sys.version.split()[0],
        "uvicorn": uvicorn.__version__,
        "websockets": getattr(websockets, "__version__", "?"),
        "command": command,
        "mode": mode,
        "profile": profile,
    }


def _clean(value: Any) -> Any:
    """JSON without NaN/Infinity: a figure that is not finite becomes null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def write(out: Path, meta: dict[str, Any], results: Results) -> str:
    """Write results.json and results.md into ``out``; return the text to print."""
    rows = build_rows(results)
    verdicts = judge(rows)
    found = notes(results)
    out.mkdir(parents=True, exist_ok=True)
    ha_rows = ha.rows(results)
    document = {"meta": meta, "rows": rows, "ha_rows": ha_rows, "goals": verdicts, "notes": found,
                "details": results}
    (out / "results.json").write_text(json.dumps(_clean(document), indent=2, allow_nan=False) + "\n")
    goal_lines = [f"- **{v['verdict']}** {v['goal']} — {v['target']}: {v.get('detail', '')}"
                  for v in verdicts]
    text = "\n".join([
        f"# Hub benchmark ({meta['mode']})", "",
        f"- date: {meta['date']}",
        f"- machine: {meta['machine']}, nproc {meta['nproc']}, Python {meta['python']}, "
        f"uvicorn {meta['uvicorn']}, websockets {meta['websockets']}",
        f"- command: `{meta['command']}`",
        *[f"- {k}: {v}" for k, v in TARGET_TITLES.items()],
        "- ratio: the hub's value over its baseline's from this run (higher is better for rates, "
        "lower for latency and memory)", "",
        table(rows), "", "## Highly available Redis", "", ha.table(ha_rows), "",
        *ha.goals(ha_rows), "",
        "## Goals", "", *goal_lines, "", "## Notes", "",
        *[f"- {n}" for n in found], "",
    ])
    (out / "results.md").write_text(text)
    return text
