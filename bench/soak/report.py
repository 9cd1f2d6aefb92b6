"""The soak's report: ``soak.json`` (everything), ``soak.md`` (for an operator) and ``soak.png``
(the timeline: connections, handshakes/s, handshake p99, refusals by code, RSS per host, with the
fault windows shaded).
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.soak.invariants import (
    CHECKS,
    RSS_GROWTH_LIMIT,
    Record,
    Violation,
    rss_growth,
    rss_window,
    settled,
    unanswered_in_faults,
)

TITLES = {
    "connection_limit": "no user above the limit (clients count each second, Redis slots every 2 s)",
    "slots_match": "nothing leaked: slots = live sessions at the end, none a lease after the clients left",
    "commands_answered": "every command answered (result or clear error), inside faults too",
    "events_delivered": "events missing on a live dashboard session only inside fault windows",
    "events_recovered": "events missed across a dashboard's reconnect recovered (`since`) where the history "
                        "covers them; the rest only inside fault windows",
    "unavailable_only_in_redis_faults": "`unavailable` only in Redis faults or a drain (+10 s recovery)",
    "clean_logs": "no 500, no unhandled exception in any hub log",
    "rss_flat": "every worker's RSS grew < 5% over the second half (once the last fault settled)",
}


def summary(record: Record, violations: list[Violation], meta: dict[str, Any]) -> dict[str, Any]:
    ticks = record.ticks
    growth = rss_growth(record)
    refusals: Counter[str] = Counter()
    commands: Counter[str] = Counter()
    for tick in ticks:
        refusals.update(tick.get("refusals", {}))
        commands.update(tick.get("commands", {}))
    p99s = [t["p99_ms"] for t in ticks if t.get("p99_ms") is not None]
    by_invariant = Counter(v.invariant for v in violations)
    return {
        **meta,
        "peak_connections": max((t.get("live", 0) for t in ticks), default=0),
        "handshakes": sum(t.get("handshakes", 0) for t in ticks),
        "peak_handshakes_per_second": max((t.get("handshakes", 0) for t in ticks), default=0),
        "worst_second_p99_ms": max(p99s, default=None),
        "median_second_p99_ms": sorted(p99s)[len(p99s) // 2] if p99s else None,
        "refreshes": sum(t.get("refreshes", 0) for t in ticks),
        "events_received": sum(t.get("events", 0) for t in ticks),
        "refusals": dict(refusals),
        "commands": dict(commands),
        "gaps_while_dashboard_reconnected": sum(g["missing"] for g in record.gaps
                                                if g["dashboard_reconnected"]),
        "gaps_on_live_sessions": sum(g["missing"] for g in record.gaps if not g["dashboard_reconnected"]),
        "gaps_filled_late": record.late_filled,
        "resubscribes_recovered": record.recovered.get("true", 0),
        "resubscribes_not_recovered": record.recovered.get("false", 0),
        "gaps_after_reconnect_recovered_false": sum(
            g["missing"] for g in record.gaps if g["dashboard_reconnected"] and g.get("recovered") is False),
        "commands_unanswered_in_faults": unanswered_in_faults(record),
        "error_log_events": record.log_errors,
        "rss_growth_second_half": {k: round(v, 4) for k, (v, _) in growth.items()},
        "sockets_growth_second_half": {k: None if n is None else round(n, 4)
                                       for k, (_, n) in growth.items()},
        "invariants": {c.__name__: by_invariant_count(c.__name__, by_invariant) for c in CHECKS},
        "violations": len(violations),
    }


def by_invariant_count(check_name: str, by_invariant: Counter[str]) -> int:
    names = {"connection_limit": "connection_limit", "slots_match": "slots_leak",
             "commands_answered": "command_unanswered", "events_delivered": "event_missing",
             "events_recovered": "event_not_recovered",
             "unavailable_only_in_redis_faults": "unavailable_outside_fault", "clean_logs": "log",
             "rss_flat": "rss_growth"}
    return by_invariant.get(names[check_name], 0)


def write(record: Record, violations: list[Violation], meta: dict[str, Any], out: Path) -> dict[str, Any]:
    """Write the three files into ``out``; returns the summary."""
    out.mkdir(parents=True, exist_ok=True)
    result = summary(record, violations, meta)
    (out / "soak.json").write_text(json.dumps(
        {"summary": result, "violations": [v.__dict__ for v in violations], "record": record.to_json()},
        indent=1, default=str))
    (out / "soak.md").write_text(markdown(record, violations, result))
    timeline(record, out / "soak.png")
    return result


def markdown(record: Record, violations: list[Violation], s: dict[str, Any]) -> str:
    t0 = record.measured_from
    lines = [
        f"# Soak report: {s['date']}", "",
        f"**{'CLEAN' if not violations else f'{len(violations)} VIOLATION(S)'}**: {s['minutes']:.1f} min, "
        f"{s['peak_connections']} connections at peak over 2 hub hosts x 2 workers, {s['mode']}.",
        f"Machine: {s['cpus']} CPUs shared with other work; load average {s['load_before']} before, "
        f"{s['load_after']} after.", "",
        "| figure | value |", "| --- | --- |",
        f"| peak connections | {s['peak_connections']} |",
        f"| handshakes (all) / peak per second | {s['handshakes']} / {s['peak_handshakes_per_second']} |",
        f"| handshake p99, median second / worst second | {_ms(s['median_second_p99_ms'])} / "
        f"{_ms(s['worst_second_p99_ms'])} |",
        f"| in-band refreshes | {s['refreshes']} |",
        f"| events received | {s['events_received']} |",
        f"| commands | {_counts(s['commands'])} |",
        f"| handshakes refused, by code | {_counts(s['refusals'])} |",
        f"| events missed across a dashboard's reconnect (not replayed) | "
        f"{s['gaps_while_dashboard_reconnected']} |",
        f"| events missed on live sessions (inside fault windows) | {s['gaps_on_live_sessions']} |",
        f"| gaps filled by a late event (an agent's old connection handled after its new one) | "
        f"{s.get('gaps_filled_late', 0)} |",
        f"| commands sent inside a fault window and never answered (violations too) | "
        f"{s['commands_unanswered_in_faults']} |",
        f"| error-level hub log events (handled) | {_counts(s['error_log_events'])} |",
        f"| resubscribes after a reconnect (`since`), per agent: recovered / not | "
        f"{s['resubscribes_recovered']} / {s['resubscribes_not_recovered']} |",
        f"| events missed across a reconnect, history lost (`recovered: false`) | "
        f"{s['gaps_after_reconnect_recovered_false']} |", "",
        "## Faults", "",
        "Settled: when the live sessions were back to 98% of their level before the fault (its "
        "reconnects are part of it; the window the invariants allow for).", "",
        "| fault | host | start | end | settled | detail |", "| --- | --- | --- | --- | --- | --- |",
    ]
    for f, s_f in zip(record.faults, settled(record), strict=True):
        when = "skipped" if f.skipped else f"+{f.start - t0:.0f} s"
        ended = "" if f.skipped else f"+{f.end - t0:.0f} s"
        calm = "" if f.skipped else f"+{s_f.end - t0:.0f} s"
        lines.append(f"| {f.name} | {f.host} | {when} | {ended} | {calm} | {f.skipped or f.detail} |")
    lines += ["", "## Invariants", "", "| invariant | violations |", "| --- | --- |"]
    for check in CHECKS:
        lines.append(f"| {TITLES[check.__name__]} | {s['invariants'][check.__name__]} |")
    if violations:
        lines += ["", "## Violations", ""]
        lines += [f"- +{v.t - t0:.0f} s `{v.invariant}`: {v.detail}" for v in violations[:100]]
    low, high = rss_window(record)
    lines += ["", f"## Worker memory (RSS growth from +{low - t0:.0f} s to +{high - t0:.0f} s: the second "
              "half, after the last fault settled)", ""]
    sockets = s.get("sockets_growth_second_half", {})
    for label, growth in s["rss_growth_second_half"].items():
        load = sockets.get(label)
        note = "" if load is None else f" (open sockets {load:+.1%}" + (
            ": grew with its clients, not judged)" if load >= RSS_GROWTH_LIMIT else ")")
        lines.append(f"- {label}: {growth:+.1%}{note}")
    lines += ["", "## Notes", ""] + [f"- {note}" for note in s["notes"]]
    lines += ["", "![timeline](soak.png)", ""]
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def _counts(counts: dict[str, int]) -> str:
    # Names come from logs too (uvicorn puts a whole traceback in its event): first line only.
    return ", ".join(f"{(k.splitlines() or [''])[0][:80]} {v}"
                     for k, v in sorted(counts.items(), key=lambda kv: -kv[1])) or "none"


def timeline(record: Record, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = record.measured_from
    ticks = [t for t in record.ticks if "live" in t]
    xs = [t["t"] - t0 for t in ticks]
    fig, axes = plt.subplots(5, 1, figsize=(12, 13), sharex=True)
    axes[0].plot(xs, [t["live"] for t in ticks], label="connections")
    axes[0].plot(xs, [t.get("slots") for t in ticks], ".", markersize=2, label="slots held (Redis)")
    axes[0].set_ylabel("connections")
    axes[1].plot(xs, [t.get("handshakes", 0) for t in ticks])
    axes[1].set_ylabel("handshakes/s")
    axes[2].plot(xs, [t.get("p99_ms") for t in ticks])
    axes[2].set_ylabel("handshake p99 (ms)")
    codes = sorted({code for t in ticks for code in t.get("refusals", {})})
    for code in codes:
        axes[3].plot(xs, [t.get("refusals", {}).get(code, 0) for t in ticks], label=code)
    axes[3].set_ylabel("refusals/s")
    for host in sorted({label.split(":")[0] for label in record.rss}):
        by_second: Counter[int] = Counter()
        for label, samples in record.rss.items():
            if label.startswith(host + ":"):
                for t, kib in samples:
                    by_second[int(t - t0)] += kib
        seconds = sorted(by_second)
        axes[4].plot(seconds, [by_second[s] / 1024 for s in seconds], label=f"host {host} workers")
    axes[4].set_ylabel("RSS (MiB)")
    axes[4].set_xlabel("seconds since the start")
    for ax in axes:
        for f in record.faults:
            if not f.skipped:
                ax.axvspan(f.start - t0, max(f.end, f.start + 1) - t0, color="red", alpha=0.12)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper right", fontsize=7)
        ax.grid(alpha=0.3)
    for f in record.faults:
        if not f.skipped:
            axes[0].annotate(f.kind, (f.start - t0, 0), fontsize=6, rotation=90, va="bottom")
    fig.suptitle(f"hub soak {time.strftime('%Y-%m-%d', time.gmtime(t0))}: shaded = fault windows")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def meta(record: Record, mode: str, notes: list[str], load_before: str) -> dict[str, Any]:
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(record.measured_from)),
        "minutes": (record.measured_to - record.measured_from) / 60, "mode": mode,
        "cpus": os.cpu_count(), "load_before": load_before,
        "load_after": " ".join(f"{x:.2f}" for x in os.getloadavg()), "notes": notes,
    }
