"""What runs on each target, one target at a time so that they do not disturb each other's
figures (each gets fresh servers).

- ``baseline``: the bare server (:mod:`bench.bare_app`): warm-up, idle memory, closed-loop and
  paced handshakes, churn. It stays up, idle, for the rest of the run: each hub's closed-loop
  handshakes are measured in rounds that alternate with rounds on it (``<hub>_bare``), so that
  the throughput ratio compares minutes that the machine spent alike (its speed drifts by more
  than the goals' margins over a run).
- ``bare_relay`` / ``bare_relay_redis``: the bare relay (:mod:`bench.bare_relay`) in one process,
  and in two processes forwarding through one Redis: every message row, the baselines of the
  embedded and the Redis hub's.
- ``embedded``: one ``hubctl serve`` worker; ``redis``: two workers for the handshake rows, two
  single-worker processes sharing one Redis for the message rows (dashboard on one, agent on the
  other; fan-out dashboards spread over both), as the bare relay on Redis.
- ``cluster``, ``sentinel`` (:mod:`bench.ha`): handshakes and relay on a Redis Cluster, failovers.

A section that fails is recorded (and shows as a missing figure) and the run goes on; every
server is stopped at the end, whatever happened.
"""

from __future__ import annotations

import dataclasses
import sys
import time
import traceback
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import ha
from bench.churn import run_churn
from bench.client import Identity
from bench.events import EventsJob, run_events, run_fanout_rate
from bench.load import combine_rounds, redis_commands_per_handshake, run_handshakes
from bench.memory import HoldJob, measure_idle
from bench.relay import RelayJob, run_fanout, run_relay
from bench.servers import RedisServer, ServerProcess, bare_relay_server, bare_server, hub_server
from tests.support.redis_ha import RedisCluster6, SentinelGroup

if TYPE_CHECKING:
    from bench.profile import Profile
    from bench.report import Results

MAX_CONNS_SOURCES = ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")
# The event history off: what it costs is the difference between the two events rows.
NO_HISTORY = {"HUB_EVENT_HISTORY_SIZE": "0"}
# Closed-loop handshake rounds of a hub, each next to a round on the bare server.
PAIRED_ROUNDS = 3
PAIRED_TARGETS = ("embedded", "redis")


class Bench:
    """Runs the sections of one target and records each one's figures or failure."""

    def __init__(self, profile: Profile, secret: str, results: Results) -> None:
        self.p = profile
        self.secret = secret
        self.results = results
        # The bare server, left running by the baseline plan for the paired rounds.
        self.bare: ServerProcess | None = None

    def ident(self, prefix: str, *roles: str) -> Identity:
        return Identity(self.secret, prefix, roles)

    def section(self, target: str, name: str, run: Callable[[], dict[str, Any]]) -> None:
        started = time.monotonic()
        print(f"[bench] {target}: {name} ...", file=sys.stderr, flush=True)
        try:
            figures = run()
        except Exception:
            figures = {"error": traceback.format_exc()}
            print(figures["error"], file=sys.stderr)
        figures["section_s"] = round(time.monotonic() - started, 1)
        self.results.setdefault(target, {})[name] = figures

    def guard(self, target: str, plan: Callable[[], None]) -> None:
        """Run one target's plan; a server that does not start is recorded, and the run goes on."""
        try:
            plan()
        except Exception:
            error = traceback.format_exc()
            print(error, file=sys.stderr)
            self.results.setdefault(target, {})[f"server_{len(self.results.get(target, {}))}"] = {
                "error": error}

    def common(self, target: str, server: ServerProcess) -> None:
        """Warm-up, memory, handshake and churn rows on one server (``/ws/dashboard``)."""
        p, dash = self.p, f"{server.url}/ws/dashboard"
        self.section(target, "warmup", lambda: run_handshakes(
            dash, self.ident("warm", "dashboard"), p.warmup, processes=1, concurrency=4))
        self.section(target, "memory", lambda: measure_idle(
            HoldJob(dash, self.ident("idle", "dashboard"), p.idle_conns, concurrency=50,
                    deadline=180), server.worker_pids))
        self.handshakes(target, server)
        self.section(target, "handshake_paced", lambda: run_handshakes(
            dash, self.ident("paced", "dashboard"), int(p.paced_rate * p.paced_seconds),
            processes=p.processes, rate=p.paced_rate, server_pids=server.worker_pids()))
        self.section(target, "churn", lambda: run_churn(
            dash, self.ident("churn", "dashboard"), clients=p.churn_clients, cycles=p.churn_cycles,
            processes=p.processes, server_pids=server.worker_pids()))

    def handshakes(self, target: str, server: ServerProcess) -> None:
        """Closed-loop handshakes; on a hub, in rounds alternating with the bare server's (its
        figures go to ``<target>_bare``), when the bare server is up."""
        p, bare = self.p, self.bare

        def closed(on: ServerProcess, prefix: str, count: int) -> dict[str, Any]:
            return run_handshakes(f"{on.url}/ws/dashboard", self.ident(prefix, "dashboard"), count,
                                  processes=p.processes, concurrency=p.closed_concurrency,
                                  server_pids=on.worker_pids())

        if bare is None or target not in PAIRED_TARGETS:
            self.section(target, "handshake_closed", lambda: closed(server, "closed", p.closed_count))
            return

        def paired() -> dict[str, Any]:
            hub_runs, bare_runs = [], []
            share = max(1, p.closed_count // PAIRED_ROUNDS)
            for k in range(PAIRED_ROUNDS):
                # Bare first in even rounds, the hub first in odd ones: a drift favours neither.
                for on in (bare, server) if k % 2 == 0 else (server, bare):
                    runs = bare_runs if on is bare else hub_runs
                    runs.append(closed(on, f"closed{k}-{'bare' if on is bare else 'hub'}", share))
            self.results.setdefault(f"{target}_bare", {})["handshake_closed"] = combine_rounds(bare_runs)
            return combine_rounds(hub_runs)

        self.section(target, "handshake_closed", paired)

    def redis_ops(self, name: str, redis_port: int, server: ServerProcess, endpoint: str) -> None:
        """Commands Redis receives per handshake on ``/ws/<endpoint>`` (a few in flight)."""
        identity = self.ident(f"rc-{endpoint}", endpoint)

        def workload() -> dict[str, Any]:
            return run_handshakes(f"{server.url}/ws/{endpoint}", identity, self.p.redis_handshakes,
                                  processes=1, concurrency=4)

        self.section("redis", name, lambda: redis_commands_per_handshake(
            redis_port, workload, self.p.redis_idle_seconds))

    def relay(self, target: str, dashboard_url: str, agent_url: str, only_throughput: bool = False) -> None:
        """Relay latency (one in flight), relay throughput, fan-out of one event to many
        dashboards (spread over both servers when there are two) and sustained fan-out."""
        p = self.p
        dashboards, agents = self.ident("relay-d", "dashboard", "operator"), self.ident("relay-a", "agent")
        base = RelayJob(False, f"{dashboard_url}/ws/dashboard", f"{agent_url}/ws/agent", dashboards,
                        agents, first=0, pairs=1, window=1, count=p.relay_latency_count)
        if not only_throughput:
            self.section(target, "relay_latency", lambda: run_relay(base, processes=1))
        loaded = dataclasses.replace(base, first=100, pairs=p.relay_pairs, window=p.relay_window,
                                     count=p.relay_count)
        self.section(target, "relay_throughput", lambda: run_relay(loaded, processes=p.processes))
        if only_throughput:
            return
        spread = [f"{url}/ws/dashboard" for url in dict.fromkeys((dashboard_url, agent_url))]
        self.section(target, "fanout", lambda: run_fanout(
            f"{agent_url}/ws/agent", spread, self.ident("fan-a", "agent"),
            self.ident("fan-d", "dashboard"), dashboards=p.fanout_dashboards,
            events=p.fanout_events, interval=p.fanout_interval, processes=p.processes))
        job = EventsJob(f"{agent_url}/ws/agent", spread[0], self.ident("rate-a", "agent"),
                        self.ident("rate-d", "dashboard"), agents=p.rate_agents, count=p.rate_events,
                        viewers=p.rate_dashboards)
        self.section(target, "fanout_rate", lambda: run_fanout_rate(job, spread, p.processes))

    def events(self, target: str, section: str, dashboard_url: str, agent_url: str) -> None:
        """Events/s from a few agents to one dashboard (agent and dashboard on these servers)."""
        job = EventsJob(f"{agent_url}/ws/agent", f"{dashboard_url}/ws/dashboard",
                        self.ident(f"{section}-a", "agent"), self.ident(f"{section}-d", "dashboard"),
                        agents=self.p.events_agents, count=self.p.events_count)
        self.section(target, section, lambda: run_events(job))


class Plans:
    """Each target's plan, on servers started in ``workdir`` and stopped by ``stack``."""

    def __init__(self, bench: Bench, env: dict[str, str], workdir: Path, stack: ExitStack) -> None:
        self.bench, self.p, self.env, self.workdir, self.stack = bench, bench.p, env, workdir, stack

    def started(self, server: ServerProcess) -> ServerProcess:
        self.stack.callback(server.stop)
        return server.start()

    def redis(self) -> RedisServer:
        redis = RedisServer(self.workdir)
        self.stack.callback(redis.stop)
        return redis.start()

    def hub_pair(self, name: str, env: dict[str, str]) -> tuple[ServerProcess, ServerProcess]:
        """Two single-worker hubs sharing one Redis (``env``) and one database."""
        return (self.started(hub_server(f"{name}-a", env, self.workdir, database=name)),
                self.started(hub_server(f"{name}-b", env, self.workdir, database=name)))

    def baseline(self) -> None:
        base = self.started(bare_server(self.env, self.workdir))
        self.bench.common("baseline", base)
        self.bench.bare = base  # idle from now on; stopped with the rest at the end

    def bare_relay(self) -> None:
        relay = self.started(bare_relay_server("bare-relay", self.env, self.workdir))
        self.bench.relay("bare_relay", relay.url, relay.url)
        self.bench.events("bare_relay", "events", relay.url, relay.url)
        relay.stop()

    def bare_relay_redis(self) -> None:
        redis = self.redis()
        one, other = (self.started(bare_relay_server(f"bare-relay-{n}", self.env, self.workdir, redis.url))
                      for n in "ab")
        self.bench.relay("bare_relay_redis", one.url, other.url)
        self.bench.events("bare_relay_redis", "events", one.url, other.url)
        one.stop()
        other.stop()
        redis.stop()

    def embedded(self) -> None:
        hub = self.started(hub_server("embedded", self.env, self.workdir))
        self.bench.common("embedded", hub)
        self.bench.relay("embedded", hub.url, hub.url)
        self.bench.events("embedded", "events_history", hub.url, hub.url)
        hub.stop()
        off = self.started(hub_server("embedded-nohist", {**self.env, **NO_HISTORY}, self.workdir))
        self.bench.events("embedded", "events_no_history", off.url, off.url)
        off.stop()

    def on_redis(self) -> None:
        redis = self.redis()
        redis_env = {**self.env, "HUB_REDIS_URL": redis.url}
        two = self.started(hub_server("redis2w", {**redis_env, "HUB_REDIS_PREFIX": "w2"}, self.workdir,
                                      workers=2))
        self.bench.common("redis", two)
        self.bench.redis_ops("redis_ops", redis.port, two, "dashboard")
        self.bench.redis_ops("redis_ops_agent", redis.port, two, "agent")
        two.stop()
        one, other = self.hub_pair("pair", {**redis_env, "HUB_REDIS_PREFIX": "pair"})
        self.bench.relay("redis", one.url, other.url)
        self.bench.events("redis", "events_history", one.url, other.url)
        one.stop()
        other.stop()
        one, other = self.hub_pair("nohist", {**redis_env, **NO_HISTORY, "HUB_REDIS_PREFIX": "nohist"})
        self.bench.events("redis", "events_no_history", one.url, other.url)
        one.stop()
        other.stop()

    def single_redis_for_ha(self) -> None:
        """--ha: the one-Redis figures the cluster's are compared with, from this same run."""
        redis = self.redis()
        redis_env = {**self.env, "HUB_REDIS_URL": redis.url}
        two = self.started(hub_server("redis2w", {**redis_env, "HUB_REDIS_PREFIX": "w2"}, self.workdir,
                                      workers=2))
        self.bench.handshakes("redis", two)
        two.stop()
        one, other = self.hub_pair("pair", {**redis_env, "HUB_REDIS_PREFIX": "pair"})
        self.bench.relay("redis", one.url, other.url, only_throughput=True)
        one.stop()
        other.stop()

    def on_cluster(self) -> None:
        cluster = RedisCluster6()
        self.stack.callback(cluster.close)
        cluster.start()
        cluster_env = {**self.env, "HUB_REDIS_URL": cluster.url}
        two = self.started(hub_server("cluster2w", {**cluster_env, "HUB_REDIS_PREFIX": "w2"}, self.workdir,
                                      workers=2))
        self.bench.handshakes("cluster", two)
        two.stop()
        one, other = self.hub_pair("cpair", {**cluster_env, "HUB_REDIS_PREFIX": "pair"})
        self.bench.relay("cluster", one.url, other.url, only_throughput=True)
        one.stop()
        other.stop()
        fo_env = {**cluster_env, "HUB_REDIS_PREFIX": "fo"}
        probe = self.started(hub_server("cluster-fo", fo_env, self.workdir))
        self.bench.section("cluster", "failover", lambda: ha.measure_failover(
            f"{probe.url}/ws/dashboard", self.bench.ident("fo", "dashboard"),
            ha.cluster_victim(cluster, "fo")))
        probe.stop()

    def on_sentinel(self) -> None:
        group = SentinelGroup()
        self.stack.callback(group.close)
        group.start()
        fo_env = {**self.env, "HUB_REDIS_URL": group.url}
        probe = self.started(hub_server("sentinel-fo", fo_env, self.workdir))
        self.bench.section("sentinel", "failover", lambda: ha.measure_failover(
            f"{probe.url}/ws/dashboard", self.bench.ident("fo", "dashboard"), ha.sentinel_victim(group)))
        probe.stop()

    def most_connections(self) -> None:
        many = self.started(hub_server("maxconns", self.env, self.workdir))
        self.bench.section("embedded", "max_conns", lambda: measure_idle(
            HoldJob(f"{many.url}/ws/dashboard", self.bench.ident("max", "dashboard"), self.p.max_conns,
                    concurrency=100, sources=MAX_CONNS_SOURCES, deadline=240), many.worker_pids))
        many.stop()

    def all(self, *, max_conns: bool, ha_rows: bool, only_ha: bool) -> list[tuple[str, Callable[[], None]]]:
        """The plans of a run, in order: the highly available ones last (``ha_rows``), or alone
        with the one-Redis figures they are compared with (``only_ha``)."""
        if only_ha:
            return [("redis", self.single_redis_for_ha), ("cluster", self.on_cluster),
                    ("sentinel", self.on_sentinel)]
        plans = [("baseline", self.baseline), ("bare_relay", self.bare_relay),
                 ("bare_relay_redis", self.bare_relay_redis), ("embedded", self.embedded),
                 ("redis", self.on_redis)]
        if max_conns:
            plans.append(("embedded", self.most_connections))
        if ha_rows:
            plans += [("cluster", self.on_cluster), ("sentinel", self.on_sentinel)]
        return plans
