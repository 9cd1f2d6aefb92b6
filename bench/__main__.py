"""``python -m bench [--smoke] [--out DIR] [--max-conns]``: run every row on every target.

The plan, one target at a time so that they do not disturb each other's figures (each gets a
fresh server): warm-up, idle memory, closed-loop handshakes, paced handshakes, relay latency and
throughput, fan-out (hubs), Redis commands per handshake (Redis hub). The Redis target's relay
rows run on two single-worker ``hubctl serve`` processes sharing one Redis, the dashboard on one
and the agent on the other. Then the highly available rows (:mod:`bench.ha`): closed-loop
handshakes and relay throughput on a Redis Cluster, and the seconds from a primary's ``kill -9``
until handshakes are accepted again, on the cluster and on Sentinel (``--ha``: only the Redis
and HA targets). Every server is killed at the end, whatever happened; a section that
fails is recorded (and shows as a missing figure) and the run goes on.
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import secrets
import shlex
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import ha, report
from bench.client import Identity
from bench.events import EventsJob, run_events
from bench.load import redis_commands_per_handshake, run_handshakes
from bench.memory import HoldJob, measure_idle
from bench.relay import RelayJob, run_fanout, run_relay
from bench.servers import RedisServer, ServerProcess, bare_server, hub_server
from tests.support.redis_ha import RedisCluster6, SentinelGroup

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
FD_LIMIT = 65_536
MAX_CONNS_SOURCES = ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")


@dataclass(frozen=True, slots=True)
class Profile:
    """How much of everything: the full run, or ``SMOKE`` (seconds, for tests)."""

    processes: int = 2
    warmup: int = 50
    closed_count: int = 3000
    closed_concurrency: int = 32
    paced_rate: float = 200.0
    paced_seconds: float = 10.0
    idle_conns: int = 5000
    relay_latency_count: int = 1000
    relay_count: int = 4000
    relay_pairs: int = 2
    relay_window: int = 8
    fanout_dashboards: int = 1000
    fanout_events: int = 20
    fanout_interval: float = 0.3
    events_count: int = 20_000
    events_agents: int = 4
    redis_handshakes: int = 500
    redis_idle_seconds: float = 3.0
    max_conns: int = 20_000


SMOKE = Profile(warmup=10, closed_count=200, closed_concurrency=8, paced_seconds=1.0, idle_conns=200,
                relay_latency_count=50, relay_count=200, relay_pairs=1, relay_window=4,
                fanout_dashboards=50, fanout_events=5, fanout_interval=0.2, events_count=400,
                redis_handshakes=50,
                redis_idle_seconds=1.0)


def raise_fd_limit(wanted: int = FD_LIMIT) -> int:
    """Raise RLIMIT_NOFILE for this process and its children (servers and clients)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(wanted, soft), max(wanted, hard)))
    except (ValueError, OSError):  # not allowed to raise the hard limit: go as far as it is
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Bench:
    """Runs the sections of one target and records each one's figures or failure."""

    def __init__(self, profile: Profile, secret: str, results: report.Results) -> None:
        self.p = profile
        self.secret = secret
        self.results = results

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
        """Warm-up, memory and handshake rows on one server (``/ws/dashboard``)."""
        p, dash = self.p, f"{server.url}/ws/dashboard"
        self.section(target, "warmup", lambda: run_handshakes(
            dash, self.ident("warm", "dashboard"), p.warmup, processes=1, concurrency=4))
        self.section(target, "memory", lambda: measure_idle(
            HoldJob(dash, self.ident("idle", "dashboard"), p.idle_conns, concurrency=50,
                    deadline=180), server.worker_pids))
        self.section(target, "handshake_closed", lambda: run_handshakes(
            dash, self.ident("closed", "dashboard"), p.closed_count, processes=p.processes,
            concurrency=p.closed_concurrency, server_pids=server.worker_pids()))
        self.section(target, "handshake_paced", lambda: run_handshakes(
            dash, self.ident("paced", "dashboard"), int(p.paced_rate * p.paced_seconds),
            processes=p.processes, rate=p.paced_rate, server_pids=server.worker_pids()))

    def redis_ops(self, name: str, redis_port: int, server: ServerProcess, endpoint: str) -> None:
        """Commands Redis receives per handshake on ``/ws/<endpoint>`` (a few in flight)."""
        identity = self.ident(f"rc-{endpoint}", endpoint)

        def workload() -> dict[str, Any]:
            return run_handshakes(f"{server.url}/ws/{endpoint}", identity, self.p.redis_handshakes,
                                  processes=1, concurrency=4)

        self.section("redis", name, lambda: redis_commands_per_handshake(
            redis_port, workload, self.p.redis_idle_seconds))

    def relay(self, target: str, dashboard_url: str, agent_url: str, echo: bool,
              only_throughput: bool = False) -> None:
        """Relay latency (one in flight), relay throughput and, for hubs, fan-out."""
        p = self.p
        dashboards, agents = self.ident("relay-d", "dashboard", "operator"), self.ident("relay-a", "agent")
        base = RelayJob(echo, f"{dashboard_url}/ws/dashboard", f"{agent_url}/ws/agent", dashboards, agents,
                        first=0, pairs=1, window=1, count=p.relay_latency_count)
        if not only_throughput:
            self.section(target, "relay_latency", lambda: run_relay(base, processes=1))
        loaded = dataclasses.replace(base, first=100, pairs=p.relay_pairs, window=p.relay_window,
                                     count=p.relay_count)
        self.section(target, "relay_throughput", lambda: run_relay(loaded, processes=p.processes))
        if not echo and not only_throughput:
            self.section(target, "fanout", lambda: run_fanout(
                f"{agent_url}/ws/agent", f"{dashboard_url}/ws/dashboard", self.ident("fan-a", "agent"),
                self.ident("fan-d", "dashboard"), dashboards=p.fanout_dashboards,
                events=p.fanout_events, interval=p.fanout_interval, processes=p.processes))


    def events(self, target: str, section: str, dashboard_url: str, agent_url: str) -> None:
        """Events/s from a few agents to one dashboard (agent and dashboard on these hubs)."""
        job = EventsJob(f"{agent_url}/ws/agent", f"{dashboard_url}/ws/dashboard",
                        self.ident(f"{section}-a", "agent"), self.ident(f"{section}-d", "dashboard"),
                        agents=self.p.events_agents, count=self.p.events_count)
        self.section(target, section, lambda: run_events(job))


# The event history off: what it costs is the difference between the two events rows.
NO_HISTORY = {"HUB_EVENT_HISTORY_SIZE": "0"}


def run(profile: Profile, out: Path, *, max_conns: bool, command: str, mode: str,
        only_ha: bool = False) -> str:
    results: report.Results = {}
    secret = secrets.token_hex(32)
    bench = Bench(profile, secret, results)
    env = {"HUB_JWT_SECRET": secret}
    fd_limit = raise_fd_limit()
    with tempfile.TemporaryDirectory(prefix="hub-bench-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)

        def started(server: ServerProcess) -> ServerProcess:
            stack.callback(server.stop)
            return server.start()

        def baseline() -> None:
            base = started(bare_server(env, workdir))
            bench.common("baseline", base)
            bench.relay("baseline", base.url, base.url, echo=True)
            base.stop()

        def embedded() -> None:
            hub = started(hub_server("embedded", env, workdir))
            bench.common("embedded", hub)
            bench.relay("embedded", hub.url, hub.url, echo=False)
            bench.events("embedded", "events_history", hub.url, hub.url)
            hub.stop()
            off = started(hub_server("embedded-nohist", {**env, **NO_HISTORY}, workdir))
            bench.events("embedded", "events_no_history", off.url, off.url)
            off.stop()

        def on_redis() -> None:
            redis = RedisServer(workdir)
            stack.callback(redis.stop)
            redis.start()
            redis_env = {**env, "HUB_REDIS_URL": redis.url}
            two = started(hub_server("redis2w", {**redis_env, "HUB_REDIS_PREFIX": "w2"}, workdir, workers=2))
            bench.common("redis", two)
            bench.redis_ops("redis_ops", redis.port, two, "dashboard")
            bench.redis_ops("redis_ops_agent", redis.port, two, "agent")
            two.stop()
            pair_env = {**redis_env, "HUB_REDIS_PREFIX": "pair"}
            one = started(hub_server("redis-a", pair_env, workdir, database="pair"))
            other = started(hub_server("redis-b", pair_env, workdir, database="pair"))
            bench.relay("redis", one.url, other.url, echo=False)
            bench.events("redis", "events_history", one.url, other.url)
            one.stop()
            other.stop()
            off_env = {**redis_env, **NO_HISTORY, "HUB_REDIS_PREFIX": "nohist"}
            one = started(hub_server("redis-nohist-a", off_env, workdir, database="nohist"))
            other = started(hub_server("redis-nohist-b", off_env, workdir, database="nohist"))
            bench.events("redis", "events_no_history", one.url, other.url)
            one.stop()
            other.stop()

        def single_redis_for_ha() -> None:
            # --ha: the one-Redis figures the cluster's are compared with, from this same run.
            redis = RedisServer(workdir)
            stack.callback(redis.stop)
            redis.start()
            redis_env = {**env, "HUB_REDIS_URL": redis.url}
            two = started(hub_server("redis2w", {**redis_env, "HUB_REDIS_PREFIX": "w2"}, workdir, workers=2))
            bench.section("redis", "handshake_closed", lambda: run_handshakes(
                f"{two.url}/ws/dashboard", bench.ident("closed", "dashboard"), profile.closed_count,
                processes=profile.processes, concurrency=profile.closed_concurrency,
                server_pids=two.worker_pids()))
            two.stop()
            pair_env = {**redis_env, "HUB_REDIS_PREFIX": "pair"}
            one = started(hub_server("redis-a", pair_env, workdir, database="pair"))
            other = started(hub_server("redis-b", pair_env, workdir, database="pair"))
            bench.relay("redis", one.url, other.url, echo=False, only_throughput=True)
            one.stop()
            other.stop()

        def on_cluster() -> None:
            cluster = RedisCluster6()
            stack.callback(cluster.close)
            cluster.start()
            cluster_env = {**env, "HUB_REDIS_URL": cluster.url}
            two = started(hub_server("cluster2w", {**cluster_env, "HUB_REDIS_PREFIX": "w2"}, workdir,
                                     workers=2))
            bench.section("cluster", "handshake_closed", lambda: run_handshakes(
                f"{two.url}/ws/dashboard", bench.ident("closed", "dashboard"), profile.closed_count,
                processes=profile.processes, concurrency=profile.closed_concurrency,
                server_pids=two.worker_pids()))
            two.stop()
            pair_env = {**cluster_env, "HUB_REDIS_PREFIX": "pair"}
            one = started(hub_server("cluster-a", pair_env, workdir, database="cpair"))
            other = started(hub_server("cluster-b", pair_env, workdir, database="cpair"))
            bench.relay("cluster", one.url, other.url, echo=False, only_throughput=True)
            one.stop()
            other.stop()
            probe = started(hub_server("cluster-fo", {**cluster_env, "HUB_REDIS_PREFIX": "fo"}, workdir))
            bench.section("cluster", "failover", lambda: ha.measure_failover(
                f"{probe.url}/ws/dashboard", bench.ident("fo", "dashboard"),
                ha.cluster_victim(cluster, "fo")))
            probe.stop()

        def on_sentinel() -> None:
            group = SentinelGroup()
            stack.callback(group.close)
            group.start()
            probe = started(hub_server("sentinel-fo", {**env, "HUB_REDIS_URL": group.url}, workdir))
            bench.section("sentinel", "failover", lambda: ha.measure_failover(
                f"{probe.url}/ws/dashboard", bench.ident("fo", "dashboard"), ha.sentinel_victim(group)))
            probe.stop()

        def most_connections() -> None:
            many = started(hub_server("maxconns", env, workdir))
            bench.section("embedded", "max_conns", lambda: measure_idle(
                HoldJob(f"{many.url}/ws/dashboard", bench.ident("max", "dashboard"), profile.max_conns,
                        concurrency=100, sources=MAX_CONNS_SOURCES, deadline=240), many.worker_pids))
            many.stop()

        plans: list[tuple[str, Callable[[], None]]] = [
            ("baseline", baseline), ("embedded", embedded), ("redis", on_redis),
            *((("embedded", most_connections),) if max_conns else ()),
        ]
        if only_ha:
            plans = [("redis", single_redis_for_ha)]
        for target, plan in (*plans, ("cluster", on_cluster), ("sentinel", on_sentinel)):
            bench.guard(target, plan)

    meta = report.metadata(command, mode, {**dataclasses.asdict(profile), "fd_limit": fd_limit})
    return report.write(out, meta, results)


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds the ExitStack: every server is stopped


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _terminated)
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny counts: a check that every row runs")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default {DEFAULT_OUT}")
    parser.add_argument("--max-conns", action="store_true",
                        help=f"also open up to {Profile().max_conns:,} idle connections on one "
                        "embedded worker")
    parser.add_argument("--ha", action="store_true",
                        help="only the highly available Redis rows (and the one-Redis figures they "
                        "are compared with)")
    args = parser.parse_args(argv)
    command = shlex.join(["python", "-m", "bench", *(sys.argv[1:] if argv is None else argv)])
    text = run(SMOKE if args.smoke else Profile(), args.out, max_conns=args.max_conns, command=command,
               mode="smoke" if args.smoke else "full", only_ha=args.ha)
    print(text)
    print(f"[bench] wrote {args.out / 'results.json'} and {args.out / 'results.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
