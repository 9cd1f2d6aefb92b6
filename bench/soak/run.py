"""The soak's orchestrator: build the simulated hosts, start everything, load, break, check, report.

Order of a run (:meth:`Soak.run`): namespaces (or loopback), a throwaway PostgreSQL database, the
Redis Sentinel group, the link proxies, one ``hubctl serve --workers 2`` per hub host, the client
processes; then once a second a sample (clients' counters, every worker's RSS, every user's slots
in Redis) while :mod:`bench.soak.faults` runs its schedule; at the end the clients stop churning,
the live sessions are compared with the slots held, the clients leave, no slot may remain; the
hub logs are searched; :mod:`bench.soak.invariants` judges and :mod:`bench.soak.report` writes.

Everything blocking runs in a thread: the link proxies live on this event loop and must keep
forwarding the hubs' Redis traffic whatever the orchestrator waits for.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from app.engine.redis_keys import RedisKeys
from bench.servers import ROOT, free_port, open_sockets, rss_kib
from bench.soak import hosts as hostmod
from bench.soak.faults import Step, plan
from bench.soak.hubs import HUB_PORT, HostedHub
from bench.soak.invariants import HANDLED, Fault, Record
from bench.soak.links import LinkGroup, LinkProcess, raise_descriptor_limit
from bench.soak.redis_group import SoakRedis

# A server where the soak may create (and drop) a throwaway database; the hubs reach it on port
# 5432 of 127.0.0.1 (through their link proxies). The test suite's server is the default.
PG_ADMIN = os.environ.get("SOAK_DATABASE_URL") or os.environ.get(
    "TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test").replace("+asyncpg", "")
CONNECTIONS_PER_PROCESS = 2500
TRAFFIC_CONNECTIONS = 3000
"""The size up to which each connection keeps the full rates (:meth:`Config.sized`)."""
LEASE_SECONDS = 30  # the hub's default HUB_CONNECTION_LEASE_SECONDS, set explicitly below
BIG_LEASE_SECONDS = 60
"""The lease past TRAFFIC_CONNECTIONS: a worker renews each of its connections' slots, and one
that holds 5,000 of them in a reconnect storm on these two shared cores took longer than five
sixths of 30 s to get round them all, so it gave up thousands of connections (closed
``unavailable``: it could not vouch for their slots), whose reconnects fed the storm."""
QUIET_SECONDS = 30.0
"""At least this long without faults before the end (RSS is judged there, see invariants)."""
COMMAND_TTL_SECONDS = 30
COMMAND_WAIT = 60.0
"""How long a soak client waits for a command's result or error before it counts it unanswered."""
# The final count of slots against live sessions: how many looks before a mismatch counts.
END_LOOKS = 3


@dataclass
class Config:
    seconds: float
    connections: int
    out: Path
    warmup: float
    churn_seconds: float
    event_seconds: float
    command_seconds: float
    token_ttl: int
    refresh_warning: int
    patience: float
    lease_seconds: int
    """Clients' handshake timeout and reconnect backoff cap: a full run on this shared machine
    answers handshakes in seconds while it ramps; clients that gave up at 10 s and retried
    sooner than that doubled the work until nothing completed (the first 11:46 run)."""
    loopback: bool = False

    @classmethod
    def sized(cls, seconds: float, connections: int, out: Path, *, loopback: bool = False) -> Config:
        """Rates scaled to the run: a short run churns and refreshes faster so that every
        mechanism happens many times in a minute. Past :data:`TRAFFIC_CONNECTIONS` each
        connection churns, emits and commands that much less often (tokens stay short: an
        in-band refresh is cheap next to a handshake), so the hubs
        carry the same traffic at any size: the soak's clients share this machine's two cores
        with the hubs, and what the soak checks is the guarantees of many connections under
        faults, not the machine's throughput (that is ``make bench``)."""
        short = seconds < 300
        spread = max(1.0, connections / TRAFFIC_CONNECTIONS)
        return cls(seconds=seconds, connections=connections, out=out, loopback=loopback,
                   warmup=15 if short else 120, churn_seconds=(25 if short else 300) * spread,
                   event_seconds=(4 if short else 30) * spread,
                   command_seconds=(5 if short else 30) * spread,
                   token_ttl=75 if short else 180, refresh_warning=60,
                   patience=10 if short else 30,
                   lease_seconds=LEASE_SECONDS if spread == 1.0 else BIG_LEASE_SECONDS)


class Soak:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.secret = secrets.token_hex(32)
        self.workdir = config.out / "work"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.hosts: list[hostmod.Host] = []
        self.hubs: list[HostedHub] = []
        self.redis = SoakRedis()
        self.redis_links: dict[str, LinkGroup] = {}
        self.db_links: dict[str, LinkGroup] = {}
        self.database = f"hubsoak_{secrets.token_hex(5)}"
        self.record = Record(limit=10)
        self.notes: list[str] = []
        self.clients: list[asyncio.subprocess.Process] = []
        self._bins: dict[int, dict[str, Any]] = {}
        self._readers: list[asyncio.Task[None]] = []
        self._counts: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    # --- setup ---------------------------------------------------------------------------------

    async def _hosts(self) -> None:
        gone = await asyncio.to_thread(hostmod.delete_leftovers)
        if gone:
            self.notes.append(f"deleted leftovers of earlier soaks: {', '.join(gone)}")
        permitted, why = (False, "--loopback given") if self.config.loopback else \
            await asyncio.to_thread(hostmod.namespaces_permitted)
        if permitted:
            for index, letter in enumerate("ab"):
                self.hosts.append(await asyncio.to_thread(hostmod.create_host, letter, index + 1))
            self.notes.append("hosts: network namespaces with veth links; clients in the root "
                              f"namespace from {2 * hostmod.ADDRESSES} source addresses")
        else:
            print(f"soak: network namespaces not permitted ({why}); running everything on loopback",
                  file=sys.stderr)
            self.notes.append(f"hosts: loopback only ({why}); the partition and latency faults are skipped")
            self.hosts = [hostmod.Host("a", None), hostmod.Host("b", None)]

    async def _links(self) -> int:
        """Start each host's links to Redis and PostgreSQL; returns the database port hubs use.

        On loopback the hubs reach Redis directly (the Sentinel group announces 127.0.0.1
        addresses) and share one database link on a port of its own. Each link is a process per
        host and upstream port (:mod:`bench.soak.links`: descriptors)."""
        if self.hosts[0].netns is None:
            db_port = free_port()
            self.db_links["all"] = await _link_group("db", [(hostmod.listen_in(None, db_port), 5432)])
            return db_port
        for host in self.hosts:
            served = [(hostmod.listen_in(host.netns, port), port) for port in self.redis.ports()]
            self.redis_links[host.name] = await _link_group(f"redis-{host.name}", served)
            self.db_links[host.name] = await _link_group(
                f"db-{host.name}", [(hostmod.listen_in(host.netns, 5432), 5432)])
        return 5432

    async def _database(self) -> None:
        conn = await asyncpg.connect(PG_ADMIN, timeout=10)
        try:
            await conn.execute(f'CREATE DATABASE "{self.database}" TEMPLATE template0')
        finally:
            await conn.close()

    async def _drop_database(self) -> None:
        with contextlib.suppress(Exception):
            conn = await asyncpg.connect(PG_ADMIN, timeout=10)
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
            finally:
                await conn.close()

    def _hub_env(self, db_port: int) -> dict[str, str]:
        c = self.config
        return {
            "HUB_ENV": "development", "HUB_JWT_SECRET": self.secret, "HUB_REDIS_URL": self.redis.url,
            "HUB_DATABASE_URL": f"postgresql+asyncpg://postgres@127.0.0.1:{db_port}/{self.database}",
            "HUB_MAX_CONNECTIONS_PER_USER": str(self.record.limit),
            "HUB_CONNECT_RATE_PER_IP": "1000000", "HUB_CONNECT_RATE_PER_USER": "600",
            "HUB_AUTH_FAILURES_BEFORE_BAN": "1000000", "HUB_REFRESH_WARNING_SECONDS": str(c.refresh_warning),
            "HUB_SHUTDOWN_GRACE_SECONDS": "5", "HUB_LOG_FORMAT": "json",
            # Below the clients' wait for a result (COMMAND_WAIT), so that a command nobody
            # answered ends with the hub's command_expired, not with the client giving up.
            "HUB_COMMAND_TTL_SECONDS": str(COMMAND_TTL_SECONDS),
            "HUB_CONNECTION_LEASE_SECONDS": str(c.lease_seconds),
        }

    async def _start_hubs(self, db_port: int) -> None:
        env = self._hub_env(db_port)
        direct = env["HUB_DATABASE_URL"].replace(f":{db_port}/", ":5432/")
        await asyncio.to_thread(_migrate, {**env, "HUB_DATABASE_URL": direct}, self.workdir)
        for host in self.hosts:
            port = HUB_PORT if host.netns else free_port()
            hub = HostedHub(host, env, self.workdir, workers=2, port=port)
            await asyncio.to_thread(hub.start)
            self.hubs.append(hub)

    async def _start_clients(self) -> None:
        c = self.config
        groups = _groups(c.connections)
        processes = max(1, math.ceil(c.connections / CONNECTIONS_PER_PROCESS))
        self.notes.append(
            f"each connection: lives {c.churn_seconds:.0f} s on average, an agent emits every "
            f"{c.event_seconds:.0f} s, an operator's dashboard commands every {c.command_seconds:.0f} s, "
            f"tokens of {c.token_ttl} s refreshed in-band {c.refresh_warning} s before expiry; "
            f"{processes} client processes; connection leases of {c.lease_seconds} s")
        for n in range(processes):
            spec = {
                "secret": self.secret, "limit": self.record.limit, "hosts": [h.urls for h in self.hubs],
                "groups": groups[n::processes], "token_ttl": c.token_ttl,
                "ramp_seconds": max(5.0, c.warmup * 0.8), "churn_seconds": c.churn_seconds,
                "event_seconds": c.event_seconds, "command_seconds": c.command_seconds,
                "command_timeout": COMMAND_WAIT, "backoff_cap": c.patience, "open_timeout": c.patience,
            }
            path = self.workdir / f"clients-{n}.json"
            path.write_text(json.dumps(spec))
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench.soak.clients", str(path), cwd=ROOT,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=(self.workdir / f"clients-{n}.err").open("wb"),
                env={**os.environ, "PYTHONPATH": str(ROOT)}, limit=2**24,
            )
            self.clients.append(proc)
            self._readers.append(asyncio.create_task(self._read_client(n, proc)))

    # --- sampling ------------------------------------------------------------------------------

    async def _read_client(self, n: int, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = json.loads(raw)
            if line["kind"] == "count":
                await self._counts.put(line)
            elif line["kind"] == "tick":
                self._merge(n, line)

    def _bin(self, second: int) -> dict[str, Any]:
        return self._bins.setdefault(second, {"t": float(second), "handshakes": 0, "latencies_ms": [],
                                              "refusals": {}, "commands": {}, "events": 0, "refreshes": 0,
                                              "live_by_proc": {}, "agents": 0, "dashboards": 0})

    def _merge(self, n: int, tick: dict[str, Any]) -> None:
        b = self._bin(int(tick["t"]))
        b["live_by_proc"][n] = tick["live"]
        b["agents"] += tick["agents"]
        b["dashboards"] += tick["dashboards"]
        for key in ("handshakes", "events", "refreshes"):
            b[key] += tick[key]
        b["latencies_ms"] += tick["latencies_ms"]
        for key in ("refusals", "commands"):
            for code, count in tick[key].items():
                b[key][code] = b[key].get(code, 0) + count
        self.record.gaps += tick["gaps"]
        self.record.late_filled += tick.get("late", 0)
        self.record.over_limit += tick["over_limit"]
        self.record.command_timeouts += tick["command_timeouts"]
        for answer, count in tick.get("recovered", {}).items():
            self.record.recovered[answer] = self.record.recovered.get(answer, 0) + count

    async def _sample(self, stop: asyncio.Event) -> None:
        """Once a second: every worker's RSS and open sockets; every other second, the slots of
        every user."""
        tick = 0
        while not stop.is_set():
            now = time.time()
            for hub in self.hubs:
                for pid in hub.worker_pids():
                    with contextlib.suppress(OSError):
                        self.record.rss.setdefault(f"{hub.host.name}:{pid}", []).append((now, rss_kib([pid])))
                        self.record.sockets.setdefault(f"{hub.host.name}:{pid}", []).append(
                            (now, open_sockets(pid)))
            if tick % 2 == 0:
                try:
                    counts = await asyncio.to_thread(self.redis.slot_counts)
                    b = self._bin(int(now))
                    b["slots"] = sum(counts.values())
                    b["max_slots_per_user"] = max(counts.values(), default=0)
                except Exception as exc:
                    self.notes.append(f"slot sample at {now:.0f} failed: {type(exc).__name__}")
            tick += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)

    async def _tell(self, word: str) -> None:
        for proc in self.clients:
            if proc.stdin is not None and proc.returncode is None:
                proc.stdin.write(f"{word}\n".encode())
                with contextlib.suppress(ConnectionError):
                    await proc.stdin.drain()

    async def _live_now(self) -> tuple[int, dict[str, int]]:
        """Live sessions the clients count: in all, and per user."""
        await self._tell("count")
        total, per_user = 0, {}
        for _ in self.clients:
            count = await asyncio.wait_for(self._counts.get(), 30)
            total += count["live"]
            per_user.update({sub: n for sub, n in count.get("per_user", {}).items() if n})
        return total, per_user

    # --- the run -------------------------------------------------------------------------------

    async def _faults(self, started: float, steps: list[tuple[float, Step]]) -> None:
        running: list[asyncio.Task[Fault]] = []
        for offset, step in steps:
            await asyncio.sleep(max(0.0, started + offset - time.time()))
            print(f"soak: +{time.time() - started:5.0f}s fault {step.name}", file=sys.stderr)
            running.append(asyncio.create_task(step.apply(self)))
        for task in running:
            self.record.faults.append(await task)

    async def run(self) -> Record:
        c = self.config
        raise_descriptor_limit()
        try:
            await self._hosts()
            await self._database()
            await asyncio.to_thread(self.redis.start)
            db_port = await self._links()
            await self._start_hubs(db_port)
            started = time.time()
            self.record.measured_from = started
            await self._start_clients()
            stop = asyncio.Event()
            sampler = asyncio.create_task(self._sample(stop))
            steps = plan(c.warmup, c.seconds)
            faults = asyncio.create_task(self._faults(started, steps))
            await asyncio.sleep(max(0.0, started + c.seconds - time.time()))
            await faults  # a long schedule finishes before the end is measured
            # Memory and the final counts are judged after the faults: a short run whose
            # schedule outlasted it gets a quiet tail too.
            last = max((f.end for f in self.record.faults), default=started)
            await asyncio.sleep(max(0.0, last + max(QUIET_SECONDS, c.seconds * 0.35) - time.time()))
            self.record.measured_to = time.time()
            await self._finish(stop, sampler)
        finally:
            await self._teardown()
        return self.record

    async def _finish(self, stop: asyncio.Event, sampler: asyncio.Task[None]) -> None:
        await self._tell("quiesce")
        await asyncio.sleep(8)  # handshakes in flight settle; no new one starts after quiesce
        # Up to three looks, 2 s apart: a session closing between the clients' count and Redis'
        # shows as one slot too many for an instant; a leaked slot stays (until its lease, 30 s).
        for look in range(END_LOOKS):
            live, per_user = await self._live_now()
            counts = await asyncio.to_thread(self.redis.slot_counts)
            self.record.end = {"t": time.time(), "live": live, "slots": sum(counts.values()),
                               "looks": look + 1,
                               "active_gauge": [await asyncio.to_thread(h.metric, "hub_active_connections")
                                                for h in self.hubs]}
            if sum(counts.values()) == live:
                break
            if look == END_LOOKS - 1:
                self.record.end["mismatched"] = await asyncio.to_thread(
                    _mismatched, counts, per_user, self.redis)
            await asyncio.sleep(2)
        await self._tell("stop")
        for proc in self.clients:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 60)
        # Every close releases its slot at once; a slot whose release was lost (a worker busy or
        # cut off at that moment) lapses with its lease. Anything after that is a leak.
        left, waited = await self._slots_left()
        self.record.end.update(slots_after_stop=left, seconds_to_zero=round(waited, 1))
        stop.set()
        await sampler
        self.record.ticks = self._ticks()
        peaks = {name: await group.peak_pairs()
                 for name, group in [*(("redis-" + k, g) for k, g in self.redis_links.items()),
                                     *(("db-" + k, g) for k, g in self.db_links.items())]}
        self.notes.append("link processes (one per host and upstream port), most connections open "
                          "through one at once: " + ", ".join(f"{k} {v}" for k, v in peaks.items()))
        for hub in self.hubs:
            await asyncio.to_thread(hub.stop)
            self.record.log_findings += _log_findings(hub, self.record.log_errors)

    async def _slots_left(self) -> tuple[int | None, float]:
        started = time.monotonic()
        left: int | None = None
        while time.monotonic() - started < self.config.lease_seconds + 10:
            with contextlib.suppress(Exception):
                left = sum((await asyncio.to_thread(self.redis.slot_counts)).values())
                if left == 0:
                    break
            await asyncio.sleep(1)
        return left, time.monotonic() - started

    def _ticks(self) -> list[dict[str, Any]]:
        ticks = []
        live: dict[int, int] = {}
        for second in sorted(self._bins):
            b = self._bins[second]
            live.update(b.pop("live_by_proc", {}))
            latencies = sorted(b.pop("latencies_ms", []))
            b["live"] = sum(live.values())
            b["p99_ms"] = (latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
                           if latencies else None)
            ticks.append(b)
        return ticks

    async def _teardown(self) -> None:
        for proc in self.clients:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        for hub in self.hubs:
            await asyncio.to_thread(hub.stop)
        for link in (*self.redis_links.values(), *self.db_links.values()):
            await link.close()
        await asyncio.to_thread(self.redis.close)
        for host in self.hosts:
            await asyncio.to_thread(hostmod.delete_host, host)
        await self._drop_database()


async def _link_group(name: str, served: list[tuple[Any, int]]) -> LinkGroup:
    """One link process per listening socket: the busiest port of a host never shares a
    process's descriptors with another."""
    links = []
    try:
        for sock, port in served:
            link = LinkProcess(f"{name}-{port}")
            links.append(link)
            await link.start([(sock, port)])
    except BaseException:
        for sock, _ in served:
            sock.close()
        await LinkGroup(links).close()
        raise
    return LinkGroup(links)


def _migrate(env: dict[str, str], workdir: Path) -> None:
    full = {**{k: v for k, v in os.environ.items() if not k.startswith("HUB_")}, **env,
            "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "app.cli", "migrate"], cwd=workdir, env=full,
                   check=True, capture_output=True, timeout=120)


def _mismatched(counts: dict[str, int], per_user: dict[str, int], redis: SoakRedis,
                most: int = 20) -> list[dict[str, Any]]:
    """The users whose slots in Redis differ from the sessions their clients count, each with its
    slots' details (what the hub stored of each connection): the evidence of a mismatch."""
    keys = RedisKeys("hub")
    expected = {keys.user_keys(sub, "", "slots")[0]: (sub, n) for sub, n in per_user.items()}
    differing = [key for key in sorted(set(counts) | set(expected))
                 if counts.get(key, 0) != expected.get(key, ("", 0))[1]][:most]
    details = redis.slot_details(differing)
    return [{"user": expected.get(key, (key, 0))[0], "slots": counts.get(key, 0),
             "live": expected.get(key, ("", 0))[1], "conns": details.get(key, [])}
            for key in differing]


def _groups(connections: int) -> list[dict[str, Any]]:
    """Users by group: 6 agents, an operator with 3 dashboards; every 10th group also a greedy
    user who tries limit + 2 dashboards (10 live connections a group on average). One group in
    a hundred more than ``connections`` needs: at any moment a few sessions are between two
    connections (churn, refusals), and the run must still hold ``connections`` at its peak."""
    groups = []
    for g in range(max(1, math.ceil(connections * 1.01 / 10))):
        group: dict[str, Any] = {"agents": [f"g{g}-agent-{i}" for i in range(6)],
                                 "operator": f"g{g}-ops", "dashboards": 3}
        if g % 10 == 0:
            group["greedy"] = f"g{g}-greedy"
        groups.append(group)
    return groups


def _log_findings(hub: HostedHub, errors: dict[str, int]) -> list[dict[str, Any]]:
    """The hub's log lines that show a 500 or an unhandled exception; ``errors`` counts every
    error-level event by name (handled failures during faults, such as ``store.write_failed``)."""
    if not hub.log_path.exists():
        return []
    found = []
    for line in hub.log_path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
        if not isinstance(entry, dict):
            if "Traceback" in line or " 500 " in line:
                found.append({"host": hub.host.name, "t": 0.0, "line": line})
            continue
        level = str(entry.get("level", ""))
        event = (str(entry.get("event", "")).strip().splitlines() or [""])[0][:120]
        if level in ("error", "critical"):
            errors[event] = errors.get(event, 0) + 1
        last = (str(entry.get("exception") or "").strip().splitlines() or [""])[-1]
        unhandled = event.startswith("Exception in ASGI") or entry.get("status") == 500 or (
            level in ("error", "critical") and last and not last.startswith(HANDLED))
        if unhandled:
            found.append({"host": hub.host.name, "t": _timestamp(entry), "line": f"{event}: {last}"})
    return found


def _timestamp(entry: dict[str, Any]) -> float:
    with contextlib.suppress(KeyError, ValueError, TypeError):
        return datetime.fromisoformat(str(entry["timestamp"]).replace("Z", "+00:00")).timestamp()
    return 0.0
