"""How much of everything a run does: the full run (``Profile()``), or ``SMOKE`` (seconds, for
the test that keeps the bench from rotting)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Profile:
    """Counts per section. The relay's load is ``processes`` x ``relay_pairs`` x ``relay_window``
    round trips in flight (32 in the full run)."""

    processes: int = 2
    warmup: int = 50
    closed_count: int = 3000
    closed_concurrency: int = 32
    paced_rate: float = 200.0
    paced_seconds: float = 10.0
    idle_conns: int = 5000
    churn_clients: int = 32
    churn_cycles: int = 60
    relay_latency_count: int = 1000
    relay_count: int = 4000
    relay_pairs: int = 2
    relay_window: int = 8
    fanout_dashboards: int = 1000
    fanout_events: int = 20
    fanout_interval: float = 0.3
    # Sustained fan-out: rate_agents agents send rate_events events in all, each to rate_dashboards.
    rate_agents: int = 50
    rate_dashboards: int = 20
    rate_events: int = 3000
    events_count: int = 20_000
    events_agents: int = 4
    redis_handshakes: int = 500
    redis_idle_seconds: float = 3.0
    max_conns: int = 20_000


SMOKE = Profile(warmup=10, closed_count=200, closed_concurrency=8, paced_seconds=1.0, idle_conns=200,
                churn_clients=4, churn_cycles=10, relay_latency_count=50, relay_count=200, relay_pairs=1,
                relay_window=4, fanout_dashboards=50, fanout_events=5, fanout_interval=0.2,
                rate_agents=4, rate_dashboards=4, rate_events=200, events_count=400,
                redis_handshakes=50, redis_idle_seconds=1.0)
