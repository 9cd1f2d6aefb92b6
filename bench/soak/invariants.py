"""The soak's invariants: plain functions from what was recorded to the violations, each with its time.

No I/O here: :mod:`bench.soak.run` records, these decide, :mod:`bench.soak.report` shows. Times
are Unix seconds. A fault window runs from a fault's start until the clients it disconnected are
back (:func:`settled`); some invariants allow misbehaviour inside a window plus
:data:`GRACE_SECONDS` (time to notice, rediscover, reconnect). The limit, the leak and the
command invariants allow nothing, inside windows or not.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

GRACE_SECONDS = 5.0
TICK_SECONDS = 1.0
RECOVERY_SECONDS = 10.0
"""After a Redis fault ends, how long a hub may still fail closed: its pool reconnects and the
requests that timed out during the fault are retried by the clients' backoff."""
SETTLED_LEVEL = 0.98
"""A fault that disconnected clients has settled when the live sessions are back to this share
of their level just before it: until then its reconnect storm is still part of it."""
SETTLED_MOST_SECONDS = 120.0
RSS_GROWTH_LIMIT = 0.05
# Faults during which a hub may refuse handshakes ``unavailable``: shared state unreachable for
# some hub (it fails closed), or a hub draining (it refuses new handshakes until it exits).
UNAVAILABLE_FAULTS = frozenset({"redis_primary_kill", "partition", "drain"})
# A hub's traceback that ends in one of these is a fault handled as designed (fail closed, retry),
# not an unhandled exception.
HANDLED = ("app.engine.base.EngineUnavailable", "EngineUnavailable:")


@dataclass(frozen=True)
class Fault:
    """One fault of the schedule, as it happened (``skipped``: why it could not be applied)."""

    name: str
    kind: str
    host: str
    start: float
    end: float
    detail: str = ""
    skipped: str = ""

    def covers(self, t: float, grace: float = GRACE_SECONDS) -> bool:
        # Counters come in one-second ticks stamped with the second they end in: a tick stamped
        # one second before the start may hold what happened just after it.
        return not self.skipped and self.start - TICK_SECONDS <= t <= self.end + grace

    def overlaps(self, low: float, high: float, grace: float = GRACE_SECONDS) -> bool:
        return not self.skipped and low <= self.end + grace and high >= self.start


@dataclass(frozen=True)
class Violation:
    invariant: str
    t: float
    detail: str


@dataclass
class Record:
    """Everything the run observed that an invariant looks at."""

    limit: int
    faults: list[Fault] = field(default_factory=list)
    ticks: list[dict[str, Any]] = field(default_factory=list)
    """One merged sample per second: ``t``, ``refusals`` (code -> n), ``max_slots_per_user``..."""
    over_limit: list[dict[str, Any]] = field(default_factory=list)
    gaps: list[dict[str, Any]] = field(default_factory=list)
    late_filled: int = 0
    """Gaps filled within seconds by events that came after a later event of the same agent (its
    old connection handled after its new one): not losses, counted."""
    command_timeouts: list[float] = field(default_factory=list)
    """When each command that got neither its result nor an error was sent."""
    recovered: dict[str, int] = field(default_factory=dict)
    """``recovered`` answers to the resubscribes after reconnects, agents counted: "true"/"false"."""
    log_findings: list[dict[str, Any]] = field(default_factory=list)
    log_errors: dict[str, int] = field(default_factory=dict)
    """Error-level log events by name, handled ones included (for the report)."""
    rss: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    """worker label -> [(t, KiB)], sampled once a second while that worker lived."""
    sockets: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    """worker label -> [(t, open sockets)], sampled with the RSS (its connections' load)."""
    end: dict[str, Any] = field(default_factory=dict)
    """``t``, ``live`` (clients' sessions), ``slots`` (held in Redis), ``slots_after_stop``."""
    measured_from: float = 0.0
    measured_to: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "faults": [asdict(f) for f in self.faults]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Record:
        """The record of an earlier run (``soak.json``), to judge and report it again."""
        fields = {**data, "faults": [Fault(**f) for f in data["faults"]],
                  "rss": {k: [(float(t), int(kib)) for t, kib in v] for k, v in data["rss"].items()},
                  "sockets": {k: [(float(t), int(n)) for t, n in v]
                              for k, v in data.get("sockets", {}).items()}}
        return cls(**fields)


def _in_any(faults: Iterable[Fault], t: float, kinds: frozenset[str] | None = None,
            grace: float = GRACE_SECONDS) -> bool:
    return any(f.covers(t, grace) for f in faults if kinds is None or f.kind in kinds)


def connection_limit(record: Record) -> list[Violation]:
    """No user ever above the limit: the clients' own count of open sessions per user (each user
    lives in one client process), and the slots Redis holds per user, sampled cluster-wide."""
    found = [Violation("connection_limit", o["t"], f"{o['live']} open sessions of one user (client side)")
             for o in record.over_limit]
    found += [Violation("connection_limit", tick["t"],
                        f"{tick['max_slots_per_user']} slots of one user in Redis")
              for tick in record.ticks if (tick.get("max_slots_per_user") or 0) > record.limit]
    return found


def slots_match(record: Record) -> list[Violation]:
    """At the end, slots held equal live connections; after the clients left, none is held."""
    end = record.end
    found = []
    if end.get("slots") is None:
        found.append(Violation("slots_leak", end.get("t", 0.0), "could not read the slots at the end"))
    elif end["slots"] != end.get("live"):
        users = ", ".join(f"{m['user']} {m['slots']} slots/{m['live']} live"
                          for m in end.get("mismatched", [])[:5])
        found.append(Violation("slots_leak", end["t"],
                               f"{end['slots']} slots held for {end.get('live')} live connections"
                               + (f" ({users}; details in soak.json, end.mismatched)" if users else "")))
    if end.get("slots_after_stop") != 0:
        found.append(Violation("slots_leak", end.get("t", 0.0),
                               f"{end.get('slots_after_stop')} slots still held "
                               f"{end.get('seconds_to_zero')} s after every client left"))
    return found


def commands_answered(record: Record) -> list[Violation]:
    """Every command got its result or a clear error, faults or not: the hub ends a command
    nobody answered with ``command_expired`` (the soak sets its TTL below the clients' wait), and
    a dashboard whose connection is lost hears that from its client. Commands sent inside a fault
    window are judged too; the report also counts them apart (``commands_unanswered_in_faults``)."""
    return [Violation("command_unanswered", t, "a command had neither result nor error in time"
                      + (" (sent inside a fault window)" if _command_in_fault(record.faults, t) else ""))
            for t in record.command_timeouts]


def _command_in_fault(faults: Iterable[Fault], sent: float) -> bool:
    # A command whose first seconds (it is normally answered in milliseconds) met a fault.
    return any(f.overlaps(sent, sent + GRACE_SECONDS) for f in faults)


def unanswered_in_faults(record: Record) -> int:
    return sum(1 for t in record.command_timeouts if _command_in_fault(record.faults, t))


def events_delivered(record: Record) -> list[Violation]:
    """Events go missing on a live dashboard session only inside fault windows (gaps across the
    dashboard's own reconnect are :func:`events_recovered`'s)."""
    found = []
    for gap in record.gaps:
        if gap["dashboard_reconnected"]:
            continue
        if _in_fault(record.faults, gap):
            continue
        found.append(Violation("event_missing", gap["to"],
                               f"{gap['missing']} event(s) of {gap['agent']} lost on a live session"))
    return found


# Faults during which an event can be lost before the history holds it (published while Redis was
# unreachable, or with the writes a killed primary had not replicated).
HISTORY_FAULTS = frozenset({"redis_primary_kill", "partition"})


def events_recovered(record: Record) -> list[Violation]:
    """Events a dashboard missed while it reconnected were recovered where the history covers them.

    hubclient resubscribes after every reconnect with ``since`` (the last position it saw of each
    agent) and the hub replays what it missed, so a gap across a reconnect is allowed only when
    it is explained:

    - the agent reconnected too: the events were sent into a connection that died with a fault,
      and the hub never had them (judged as on a live session: inside a fault window);
    - the hub answered ``recovered: false`` (history lost: a new epoch after a Redis failover):
      inside a fault window;
    - otherwise the history said it covered them: only a fault that loses events before they
      reach the history excuses the gap: a Redis primary kill or partition, or any fault during
      which the hub answered one of the agent's events ``unavailable`` (the agent was told).
    """
    found = []
    for gap in record.gaps:
        if not gap["dashboard_reconnected"]:
            continue
        if gap.get("agent_reconnected") or gap.get("recovered") is False:
            if _in_fault(record.faults, gap):
                continue
            why = "its agent reconnected too" if gap.get("agent_reconnected") else "recovered: false"
        else:
            if _in_fault(record.faults, gap, None if gap.get("agent_refused") else HISTORY_FAULTS):
                continue
            why = "recovered: true" if gap.get("recovered") else "no recovery answer"
        found.append(Violation("event_not_recovered", gap["to"],
                               f"{gap['missing']} event(s) of {gap['agent']} missing after the "
                               f"dashboard reconnected ({why}), outside any fault that explains it"))
    return found


def _in_fault(faults: Iterable[Fault], gap: dict[str, Any], kinds: frozenset[str] | None = None) -> bool:
    return any(f.overlaps(gap["from"], gap["to"], grace=_event_grace(f))
               for f in faults if kinds is None or f.kind in kinds)


# Replication is asynchronous: a primary killed with unreplicated writes takes the last increments
# of some agents' event counters with it, and their next events reuse numbers a dashboard has seen
# (and drops), until the counter passes them: a few events within about a lease of the failover.
REDIS_LOSS_SECONDS = 30.0


def _event_grace(fault: Fault) -> float:
    return REDIS_LOSS_SECONDS if fault.kind == "redis_primary_kill" else GRACE_SECONDS


def unavailable_only_in_redis_faults(record: Record) -> list[Violation]:
    """Handshakes refused ``unavailable`` only inside a Redis fault window (plus promotion) or
    while a hub drains."""
    return [Violation("unavailable_outside_fault", tick["t"],
                      f"{tick['refusals']['unavailable']} handshake(s) refused unavailable")
            for tick in record.ticks
            if tick.get("refusals", {}).get("unavailable")
            and not _in_any(record.faults, tick["t"], UNAVAILABLE_FAULTS, RECOVERY_SECONDS)]


def clean_logs(record: Record) -> list[Violation]:
    """No 500 and no unhandled exception in any hub's log."""
    return [Violation("log", f["t"] or record.measured_to, f"host {f['host']}: {f['line'][:300]}")
            for f in record.log_findings]


def rss_window(record: Record) -> tuple[float, float]:
    """Where RSS must be flat: the second half of the run, from the moment the last fault has
    settled (a worker taking over a drained host's clients grows by their sessions: not a leak;
    in a long run the faults end well before the second half, in the short one they do not)."""
    half = record.measured_from + (record.measured_to - record.measured_from) / 2
    settled = max((f.end + RECOVERY_SECONDS for f in record.faults if not f.skipped), default=half)
    return max(half, settled), record.measured_to


def rss_flat(record: Record) -> list[Violation]:
    """Every worker alive over the whole of :func:`rss_window` grew less than 5% across it
    (medians of its first and last five samples there, so that one busy second does not count),
    unless its open sockets grew more than that too: a worker that clients move back to after a
    drain grows by their sessions, which is load, not a leak (it is reported, not judged)."""
    found = []
    for label, growth, first, last, load in _growth(record):
        if growth >= RSS_GROWTH_LIMIT and (load is None or load < RSS_GROWTH_LIMIT):
            found.append(Violation("rss_growth", record.measured_to,
                                   f"{label}: {first / 1024:.0f} -> {last / 1024:.0f} MiB (+{growth:.1%})"))
    return found


def rss_growth(record: Record) -> dict[str, tuple[float, float | None]]:
    """Per worker checked by :func:`rss_flat`: its RSS growth over the window and its open
    sockets' (None when not sampled), for the report."""
    return {label: (growth, load) for label, growth, _, _, load in _growth(record)}


def _growth(record: Record) -> list[tuple[str, float, float, float, float | None]]:
    low, high = rss_window(record)
    found = []
    for label, samples in record.rss.items():
        if not samples or samples[0][0] > low or samples[-1][0] < high - 2:
            continue  # not alive for the whole window (killed, drained, or respawned late)
        window = [kib for t, kib in samples if low <= t <= high]
        if len(window) < 10:
            continue
        first, last = statistics.median(window[:5]), statistics.median(window[-5:])
        sockets = [n for t, n in record.sockets.get(label, []) if low <= t <= high]
        load = None
        if len(sockets) >= 10:
            before, after = statistics.median(sockets[:5]), statistics.median(sockets[-5:])
            load = (after - before) / max(before, 1)
        found.append((label, (last - first) / first, first, last, load))
    return found


CHECKS = (connection_limit, slots_match, commands_answered, events_delivered, events_recovered,
          unavailable_only_in_redis_faults, clean_logs, rss_flat)


def settled(record: Record) -> list[Fault]:
    """The faults with each ``end`` moved to when it settled: the first second at or after its
    end with the live sessions back to :data:`SETTLED_LEVEL` of the second before its start (at
    most :data:`SETTLED_MOST_SECONDS` after its end). A drain or a killed worker disconnects
    thousands of clients at once, and on a busy machine their reconnects take longer than the
    fault itself; a fault that disconnected nobody keeps its end."""
    live = [(t["t"], t.get("live")) for t in record.ticks if t.get("live") is not None]
    faults = []
    for fault in record.faults:
        before = [n for t, n in live if t < fault.start]
        end = fault.end
        if before and not fault.skipped:
            wanted = SETTLED_LEVEL * before[-1]
            back = [t for t, n in live if fault.end <= t <= fault.end + SETTLED_MOST_SECONDS
                    and n >= wanted]
            end = back[0] if back else fault.end + SETTLED_MOST_SECONDS
        faults.append(replace(fault, end=max(fault.end, end)))
    return faults


def check(record: Record) -> list[Violation]:
    """Every violation of every invariant, in time order (fault windows as :func:`settled`)."""
    judged = replace(record, faults=settled(record))
    return sorted((v for c in CHECKS for v in c(judged)), key=lambda v: v.t)
