"""A soak client process: a share of the users, as ``hubclient`` agents and dashboards.

``python -m bench.soak.clients SPEC.json`` runs the groups the spec gives it until told to stop.
Every client is a real :mod:`hubclient` client (its reconnect policy is under test); each *slot*
connects, lives for a random while (churn), closes and connects again with a fresh client. Agents
emit numbered events and answer commands; operator dashboards subscribe to their group's agents
and send commands; one group in ten has a greedy user who tries more connections than the limit.

Protocol with the orchestrator (:mod:`bench.soak.run`), one JSON object per line:

- stdout, every second: ``{"kind": "tick", ...}`` with this second's counters
  (:meth:`Stats.tick`), and ``{"kind": "ready"}`` once all slots are started;
- stdin: ``quiesce`` (no more churn and no new session: slots keep the connections they have),
  ``count`` (answered by ``{"kind": "count", "live": N}``), ``stop`` (close everything and exit).

The token is minted here from the shared secret for each attempt; it never leaves this process
except in the ``Authorization`` header or an ``auth.refresh``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import resource
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection

from app.heap import worker_heap
from app.tokens import mint
from hubclient import AgentClient, Backoff, DashboardClient, HubError, JsonValue
from hubclient.messages import Error, EventDelivery, ServerMessage, Subscribed, Welcome

log = logging.getLogger("soak.clients")


class Quiesced(Exception):
    """The token provider's answer to a new attempt after ``quiesce`` (hubclient backs off)."""


@dataclass
class Stats:
    """What this process saw during the current second (reset by :meth:`tick`)."""

    limit: int
    live: Counter[str] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    handshakes: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    refusals: Counter[str] = field(default_factory=Counter)
    commands: Counter[str] = field(default_factory=Counter)
    events: int = 0
    refreshes: int = 0
    gaps: list[dict[str, Any]] = field(default_factory=list)
    over_limit: list[dict[str, Any]] = field(default_factory=list)
    timeouts: list[float] = field(default_factory=list)
    """When each command that got neither result nor error was sent."""
    late: int = 0
    """Gaps filled by events that came late (after a later event of the same agent)."""
    recovered: Counter[str] = field(default_factory=Counter)
    """Answers to the automatic resubscribe after a reconnect, per agent named in ``since``:
    ``true`` (the history covered what was missed) or ``false`` (lost for good)."""

    def tick(self) -> dict[str, Any]:
        worst = max(self.live.values(), default=0)
        if worst > self.limit:
            self.over_limit.extend(
                {"t": time.time(), "sub": sub, "live": n} for sub, n in self.live.items() if n > self.limit
            )
        line = {
            "kind": "tick", "t": time.time(), "live": sum(self.live.values()),
            "agents": self.kinds["agent"], "dashboards": self.kinds["dashboard"],
            "max_per_user": worst, "handshakes": self.handshakes, "latencies_ms": self.latencies_ms,
            "refusals": dict(self.refusals), "commands": dict(self.commands), "events": self.events,
            "refreshes": self.refreshes, "gaps": self.gaps, "over_limit": self.over_limit,
            "command_timeouts": self.timeouts, "recovered": dict(self.recovered), "late": self.late,
        }
        self.handshakes = self.events = self.refreshes = self.late = 0
        self.latencies_ms, self.gaps, self.over_limit, self.timeouts = [], [], [], []
        self.refusals, self.commands, self.recovered = Counter(), Counter(), Counter()
        return line


class _Refusals(logging.Handler):
    """Counts the handshakes ``hubclient`` saw refused, by code (its ``hubclient.refused`` log)."""

    def __init__(self, stats: Stats) -> None:
        super().__init__(logging.INFO)
        self.stats = stats

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg == "hubclient.refused":
            code = getattr(record, "code", "") or f"http_{getattr(record, 'status', '')}"
            self.stats.refusals[str(code)] += 1
        elif record.msg == "hubclient.connect_failed":
            self.stats.refusals["connect_failed"] += 1
        elif record.msg == "hubclient.refreshed":
            self.stats.refreshes += 1


class _Tracked:
    """Mixin of both kinds: counts live sessions per user and handshake latency."""

    stats: Stats
    sub: str
    kind: str
    attempt_started: float
    live: bool

    def _track_welcome(self) -> None:
        self.stats.handshakes += 1
        self.stats.latencies_ms.append((time.monotonic() - self.attempt_started) * 1000)
        if not self.live:
            self.live = True
            self.stats.live[self.sub] += 1
            self.stats.kinds[self.kind] += 1

    def _track_disconnect(self) -> None:
        if self.live:
            self.live = False
            self.stats.live[self.sub] -= 1
            self.stats.kinds[self.kind] -= 1


class SoakAgent(_Tracked, AgentClient):
    kind = "agent"
    refused: dict[str, list[float]]
    """agent_id -> when the hub answered one of its events ``unavailable`` (the event is lost
    before it was numbered and kept; the agent was told): shared with the process' dashboards."""

    async def _on_welcome(self, ws: ClientConnection, welcome: Welcome) -> None:
        self._track_welcome()
        await super()._on_welcome(ws, welcome)

    def _on_disconnect(self, lost: Any) -> None:
        self._track_disconnect()
        super()._on_disconnect(lost)

    def _handle(self, ws: ClientConnection, message: ServerMessage) -> None:
        if isinstance(message, Error) and message.error == "unavailable":
            self.refused.setdefault(self.sub, []).append(time.time())
        super()._handle(ws, message)


# An event may arrive after a later one of the same agent: the hub numbers events as it handles
# them, and an agent's old connection (closing, on one worker) can be handled after its new one
# (on another). A gap is reported only if its events are still missing this long after.
LATE_SECONDS = 5.0


class SoakDashboard(_Tracked, DashboardClient):
    kind = "dashboard"
    last_seen: dict[str, tuple[int, int, int, float]]
    """agent_id -> (highest event number, agent session, own session, its emission time) so far."""
    open_gaps: list[tuple[float, dict[str, Any], set[int]]]
    """Gaps not reported yet: (report after, the gap, its numbers still missing)."""
    refused: dict[str, list[float]]
    recovery: dict[str, bool]
    """agent_id -> ``recovered`` of the resubscribe on the current session (hubclient sends it
    after every reconnect with the last position seen of each agent: ``since``)."""

    async def _on_welcome(self, ws: ClientConnection, welcome: Welcome) -> None:
        self._track_welcome()
        await super()._on_welcome(ws, welcome)

    def _on_disconnect(self, lost: Any) -> None:
        self._track_disconnect()
        self.recovery.clear()
        super()._on_disconnect(lost)

    def _note_subscribed(self, message: Subscribed) -> None:
        for agent, ok in message.recovered.items():
            self.recovery[agent] = ok
            self.stats.recovered[str(ok).lower()] += 1
        super()._note_subscribed(message)

    def _handle(self, ws: ClientConnection, message: ServerMessage) -> None:
        if isinstance(message, EventDelivery) and isinstance(message.payload, dict):
            self._saw(message.agent_id, message.payload)
        super()._handle(ws, message)

    def _saw(self, agent_id: str, payload: dict[str, Any]) -> None:
        n, agent_session = int(payload.get("n", 0)), int(payload.get("s", 0))
        now = time.time()
        # When the agent sent it: an event can reach a dashboard long after (caught up from the
        # history once a later one revealed that its live publication was lost).
        sent = float(payload.get("at", now))
        self.stats.events += 1
        previous = self.last_seen.get(agent_id)
        if previous is not None and n <= previous[0]:
            for _, gap, missing in self.open_gaps:  # a late one: it fills a gap, if any
                if gap["agent"] == agent_id:
                    missing.discard(n)
            return
        self.last_seen[agent_id] = (n, agent_session, self.sessions, sent)
        if previous is None or n == previous[0] + 1:
            return
        # A gap: events previous[0]+1 .. n-1 have not arrived; they were sent between the two
        # that did. Whether that is allowed depends on the fault windows (the orchestrator knows
        # them) and on who reconnected meanwhile.
        self.open_gaps.append((now + LATE_SECONDS, {
            "agent": agent_id, "missing": n - previous[0] - 1, "from": previous[3], "to": now,
            "first_missing": previous[0] + 1, "next_sent": sent,
            "dashboard_reconnected": previous[2] != self.sessions,
            "agent_reconnected": previous[1] != agent_session,
            # After a reconnect: what the hub answered for this agent's `since` (None: not asked).
            "recovered": self.recovery.get(agent_id) if previous[2] != self.sessions else None,
            # The hub answered one of the agent's events `unavailable` meanwhile (told, not lost).
            "agent_refused": any(previous[3] - 1 <= t <= now for t in self.refused.get(agent_id, ())),
        }, set(range(previous[0] + 1, n))))

    def report_gaps(self, now: float) -> None:
        """Report the gaps whose late events had their time and did not all come."""
        keep = []
        for due, gap, missing in self.open_gaps:
            if due > now:
                keep.append((due, gap, missing))
            elif missing:
                self.stats.gaps.append({**gap, "missing": len(missing)})
            else:
                self.stats.late += 1
        self.open_gaps = keep


class Slot:
    """One connection of one user, churned: connect, live a random while, close, again."""

    def __init__(self, runner: Runner, kind: str, sub: str, roles: list[str], group: dict[str, Any]) -> None:
        self.runner, self.kind, self.sub, self.roles, self.group = runner, kind, sub, roles, group
        self.counter = 0  # an agent's event numbers continue across its connections

    async def token(self, client: _Tracked) -> str:
        if self.runner.quiesced and not client.live:
            # No session starts after quiesce, so the final count compares settled numbers:
            # a handshake admitted but not yet welcomed holds a slot the clients cannot count.
            # Live sessions still refresh in-band (that also asks for a token).
            raise Quiesced
        client.attempt_started = time.monotonic()
        return mint(self.runner.secret, "HS256", self.sub, self.roles, self.runner.spec["token_ttl"])

    def _urls(self) -> list[str]:
        hosts = list(self.runner.spec["hosts"])
        random.shuffle(hosts)
        return [random.choice(addresses) for addresses in hosts]

    def _client(self) -> SoakAgent | SoakDashboard:
        backoff = Backoff(base=0.5, cap=float(self.runner.spec.get("backoff_cap", 10)))
        client: SoakAgent | SoakDashboard
        if self.kind == "agent":
            client = SoakAgent(self._urls(), lambda: self.token(client), on_command=self._answer,
                               backoff=backoff, open_timeout=self.runner.spec.get("open_timeout", 10))
            client.refused = self.runner.event_refusals
        else:
            client = SoakDashboard(self._urls(), lambda: self.token(client), backoff=backoff,
                                   open_timeout=self.runner.spec.get("open_timeout", 10))
            client.last_seen, client.recovery, client.open_gaps = {}, {}, []
            client.refused = self.runner.event_refusals
        client.stats, client.sub = self.runner.stats, self.sub
        client.live, client.attempt_started = False, 0.0
        return client

    async def _answer(self, command_id: str, from_sub: str, payload: JsonValue) -> JsonValue:
        return {"ok": command_id}

    async def run(self) -> None:
        spec = self.runner.spec
        await asyncio.sleep(random.uniform(0, spec["ramp_seconds"]))
        while not self.runner.stopping:
            client = self._client()
            self.runner.clients.add(client)
            try:
                with contextlib.suppress(HubError, TimeoutError, OSError):
                    async with asyncio.timeout(spec["ramp_seconds"] + 60):
                        await client.start()
                    lifetime = random.expovariate(1 / spec["churn_seconds"])
                    await self._live(client, time.monotonic() + lifetime)
            finally:
                await client.close()
                self.runner.clients.discard(client)
                if isinstance(client, SoakDashboard):
                    client.report_gaps(float("inf"))  # no late event comes to a closed session
            await asyncio.sleep(random.uniform(0.1, 1.0))

    async def _live(self, client: SoakAgent | SoakDashboard, until: float) -> None:
        spec = self.runner.spec
        if isinstance(client, SoakDashboard):
            with contextlib.suppress(HubError, TimeoutError):
                await client.subscribe(self.group["agents"])
        interval = spec["event_seconds"] if self.kind == "agent" else spec["command_seconds"]
        await asyncio.sleep(random.uniform(0, interval))
        while self.runner.quiesced or time.monotonic() < until:
            if self.runner.stopping:
                return
            if isinstance(client, SoakAgent):
                with contextlib.suppress(HubError):
                    await client.emit({"n": self.counter + 1, "s": client.sessions, "at": time.time()})
                    self.counter += 1
            elif "operator" in self.roles:
                self.runner.spawn(self._command(client))
            await asyncio.sleep(interval)

    async def _command(self, client: SoakDashboard) -> None:
        stats = self.runner.stats
        agent = random.choice(self.group["agents"])
        sent = time.time()
        try:
            await client.send_command(agent, {"probe": True}, timeout=self.runner.spec["command_timeout"])
        except HubError as exc:
            code = getattr(exc, "code", "") or type(exc).__name__
            stats.commands["not_sent" if type(exc).__name__ == "NotConnected" else f"error:{code}"] += 1
        except TimeoutError:
            stats.commands["timeout"] += 1
            stats.timeouts.append(sent)
        else:
            stats.commands["result"] += 1


class Runner:
    """All slots of this process, the stats ticker and the control channel."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.secret = spec["secret"]
        self.stats = Stats(limit=spec["limit"])
        self.stopping = False
        self.quiesced = False
        self.clients: set[AgentClient | DashboardClient] = set()
        self.event_refusals: dict[str, list[float]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def slots(self) -> list[Slot]:
        slots: list[Slot] = []
        for group in self.spec["groups"]:
            slots += [Slot(self, "agent", agent, ["agent"], group) for agent in group["agents"]]
            slots += [Slot(self, "dashboard", group["operator"], ["dashboard", "operator"], group)
                      for _ in range(group["dashboards"])]
            if group.get("greedy"):
                slots += [Slot(self, "dashboard", group["greedy"], ["dashboard"], group)
                          for _ in range(self.spec["limit"] + 2)]
        return slots

    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        slot_tasks = [asyncio.create_task(slot.run()) for slot in self.slots()]
        ticker = asyncio.create_task(self._tick())
        _emit({"kind": "ready"})
        while True:
            line = (await reader.readline()).decode().strip()
            if line == "quiesce":
                self.quiesced = True
            elif line == "count":
                _emit({"kind": "count", "live": sum(self.stats.live.values()),
                       "per_user": dict(self.stats.live)})
            elif line in ("stop", ""):
                break
        self.stopping = True
        for task in slot_tasks:
            task.cancel()
        await asyncio.gather(*slot_tasks, return_exceptions=True)
        await asyncio.gather(*(c.close() for c in list(self.clients)), return_exceptions=True)
        ticker.cancel()
        self._report_gaps(float("inf"))
        _emit(self.stats.tick())
        _emit({"kind": "stopped"})

    def _report_gaps(self, now: float) -> None:
        for client in list(self.clients):
            if isinstance(client, SoakDashboard):
                client.report_gaps(now)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self._report_gaps(time.time())
            _emit(self.stats.tick())


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _raise_descriptor_limit(wanted: int = 20_000) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(wanted, hard) if hard != resource.RLIM_INFINITY else wanted
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def main() -> None:
    _raise_descriptor_limit()
    with open(sys.argv[1]) as spec_file:
        spec = json.load(spec_file)
    runner = Runner(spec)
    hub_log = logging.getLogger("hubclient")
    hub_log.setLevel(logging.INFO)
    hub_log.addHandler(_Refusals(runner.stats))
    hub_log.propagate = False
    logging.getLogger("websockets").setLevel(logging.CRITICAL)
    # 2,500 connections a process: the load generator needs the hub's collector policy as much
    # as the hub does (full collections of 1.5 s were measured here too), or it measures itself.
    with worker_heap(), contextlib.suppress(KeyboardInterrupt):
        asyncio.run(runner.main())


if __name__ == "__main__":
    main()
