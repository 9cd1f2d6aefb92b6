"""Prometheus metrics. Labels are bounded (endpoints, codes, message types); never a user id."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest

HANDSHAKES = Counter(
    "hub_handshakes_total", "WebSocket handshakes by endpoint and outcome code", ["endpoint", "outcome"]
)
AUTH_FAILURES = Counter("hub_auth_failures_total", "Refused authentications by reason", ["reason"])
HANDSHAKE_SECONDS = Histogram(
    "hub_handshake_seconds",
    "Time to decide a handshake",
    ["endpoint"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
ACTIVE = Gauge(
    "hub_active_connections", "Open WebSocket connections", ["endpoint"], multiprocess_mode="livesum"
)
REFRESHES = Counter("hub_refreshes_total", "In-band token refreshes by outcome", ["outcome"])
MESSAGES = Counter("hub_messages_total", "Messages by type and direction", ["type", "direction"])
CLOSES = Counter("hub_closes_total", "Server-initiated closes by code", ["code"])
ENGINE_ERRORS = Counter("hub_engine_errors_total", "State engine failures by operation", ["op"])
EVENTS_DROPPED = Counter("hub_security_events_dropped_total", "Security events not stored")


def render() -> tuple[bytes, str]:
    """The Prometheus text exposition of this process's metrics."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
