"""Prometheus metrics. Labels are bounded (endpoints, codes, message types); never a user id.

Every label value comes from a closed set: ``endpoint`` is ``agent``/``dashboard``, ``outcome``,
``reason`` and ``code`` are contract codes (``app.errors.Code``) or ``accepted``/``ok``/``refused``,
``type`` is a message type of ``app.messages`` (or ``invalid``), ``direction`` is ``in``/``routed``,
``op`` is a fixed operation name, ``version`` the package version.

Several workers (``hubctl serve --workers N``): prometheus-client's multiprocess mode. The
supervisor sets ``PROMETHEUS_MULTIPROC_DIR`` before any worker starts (``app.serve``); each worker
then keeps its values in mmap files there, and :func:`render` adds up the files of every worker, so
``/metrics`` shows the same totals whichever worker answers. Counters of a worker that died stay
in the totals (counters never go down); its live gauge (``hub_active_connections``) is removed:

- on a clean exit, by an ``atexit`` hook of the worker itself;
- after a crash (SIGKILL, OOM), by the next worker to start or the next scrape, which removes the
  live-gauge files of process ids that no longer exist (uvicorn's supervisor has no child-exit hook).

Without ``PROMETHEUS_MULTIPROC_DIR`` (one process, plain ``uvicorn``) the default registry is used.
"""

from __future__ import annotations

import atexit
import os
import re
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar, cast

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from app.roles import Endpoint

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"

_Metric = TypeVar("_Metric", Counter, Gauge, Histogram)
_BOUND: dict[tuple[object, tuple[str, ...]], Any] = {}

HANDSHAKES = Counter(
    "hub_handshakes_total", "WebSocket handshakes by endpoint and outcome code", ["endpoint", "outcome"]
)
AUTH_FAILURES = Counter("hub_auth_failures_total", "Refused authentications by reason", ["reason"])
# Report-only rollout: handshakes admitted unverified, by the code they would have been refused with.
AUTH_WOULD_REFUSE = Counter(
    "hub_auth_would_refuse_total",
    "Handshakes admitted unverified in report-only mode, by endpoint and the code they would get",
    ["endpoint", "code"],
)
HANDSHAKE_SECONDS = Histogram(
    "hub_handshake_seconds",
    "Time to decide a handshake",
    ["endpoint"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
# livesum: the open connections of the workers alive now, added up.
ACTIVE = Gauge(
    "hub_active_connections", "Open WebSocket connections", ["endpoint"], multiprocess_mode="livesum"
)
REFRESHES = Counter("hub_refreshes_total", "In-band token refreshes by outcome", ["outcome"])
MESSAGES = Counter("hub_messages_total", "Messages by type and direction", ["type", "direction"])
CLOSES = Counter("hub_closes_total", "Server-initiated closes by code", ["code"])
RECOVERIES = Counter(
    "hub_event_recoveries_total",
    "Event recoveries: agents recovered or not on subscribe with since, live gaps filled",
    ["outcome"],
)
ENGINE_ERRORS = Counter("hub_engine_errors_total", "State engine failures by operation", ["op"])
JWKS_FETCHES = Counter(
    "hub_jwks_fetches_total", "Fetches of the identity provider's key set by outcome (ok, error)",
    ["outcome"],
)
ADMIN_ACTIONS = Counter(
    "hub_admin_actions_total",
    "Admin requests that change or try to change state, by action and outcome (ok or a code)",
    ["action", "outcome"],
)
ADMIN_AUDIT_FAILURES = Counter("hub_admin_audit_failures_total", "Admin audit entries not stored")
EVENTS_DROPPED = Counter("hub_security_events_dropped_total", "Security events not stored")
HTTP_HEADS_REFUSED = Counter(
    "hub_http_heads_refused_total",
    "Request heads refused before the app (reason: timeout, too_large, malformed, shutdown)",
    ["reason"],
)
# An info-style gauge (prometheus' Info type does not work in multiprocess mode); max: 1, not N.
BUILD_INFO = Gauge("hub_build_info", "The hub's version (always 1)", ["version"], multiprocess_mode="max")


def bound(metric: _Metric, *labels: str) -> _Metric:
    """``metric.labels(*labels)``, looked up once: the child series of a label set is kept, so
    that a hot path (every handshake, every connection) pays a dict look-up, not the validation
    and locking of ``labels()``. Label values come from closed sets, so this stays small."""
    key = (metric, labels)
    child = _BOUND.get(key)
    if child is None:
        child = _BOUND[key] = metric.labels(*labels)
    return cast(_Metric, child)


def _version() -> str:
    try:
        return metadata.version("agent-hub")
    except metadata.PackageNotFoundError:
        return "unknown"


BUILD_INFO.labels(_version()).set(1)
# Every worker shows its open connections from its start, at 0: a rule or a panel that sums them
# gets 0, not an absent series, while no connection is open (or after the only busy worker died).
for _endpoint in Endpoint:
    bound(ACTIVE, _endpoint.value)

# Readiness as a series, so that an alert can see it (deploy/prometheus/hub-rules.yml): set by the
# worker that answers /readyz or /metrics, from the checks it made just then. ``mostrecent``: the
# freshest answer of any worker wins, not a stale one of a worker that has not been asked since.
DEPENDENCY_UP = Gauge(
    "hub_dependency_up", "1 when the dependency answered the last readiness check, else 0",
    ["dependency"], multiprocess_mode="mostrecent",
)
# The newest worker's start: a change of this value while the series lives is a worker that was
# restarted (uvicorn replaces a dead worker; a container restart starts a new series).
WORKER_START = Gauge(
    "hub_worker_start_time_seconds", "Start time of the most recently started worker (Unix seconds)",
    multiprocess_mode="max",
)
WORKER_START.set_to_current_time()

# prometheus-client picks its value storage once, when it is first imported: trust that decision,
# not the environment now (which may have changed since).
MULTIPROCESS = bool(getattr(values.ValueClass, "_multiprocess", False))

_LIVE_GAUGE_FILE = re.compile(r"^gauge_live[a-z]+_(\d+)\.db$")


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, it is just not ours
    return True


def reap_dead_workers(directory: str | None = None) -> list[int]:
    """Remove the live-gauge files of workers that no longer exist; returns their pids.

    A pid reused by an unrelated process keeps its dead worker's gauge until that process ends too:
    unlikely, and bounded by the number of workers.
    """
    path = directory or os.environ.get(MULTIPROC_DIR_ENV)
    if not path:
        return []
    dead: set[int] = set()
    try:
        names = os.listdir(path)
    except OSError:
        return []
    for name in names:
        match = _LIVE_GAUGE_FILE.match(name)
        if match and int(match.group(1)) != os.getpid() and not _process_exists(int(match.group(1))):
            dead.add(int(match.group(1)))
    for pid in sorted(dead):
        mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
    return sorted(dead)


def _mark_self_dead() -> None:
    path = os.environ.get(MULTIPROC_DIR_ENV)
    if path and Path(path).is_dir():
        mark_process_dead(os.getpid(), path)  # type: ignore[no-untyped-call]


if MULTIPROCESS:
    reap_dead_workers()
    atexit.register(_mark_self_dead)


def render() -> tuple[bytes, str]:
    """The Prometheus text exposition: every worker's metrics added up in multiprocess mode, this
    process's own otherwise."""
    if not MULTIPROCESS:
        return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
    reap_dead_workers()
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry), CONTENT_TYPE_LATEST
