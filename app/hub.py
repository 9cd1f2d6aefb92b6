"""The hub's job: commands from operators to agents, results back, events and presence to
dashboards, whichever worker or host each side is connected to.

Routing goes through the engine: a command is located (one atomic lookup) and sent to the agent's
worker (one publish); the agent's worker remembers, on that agent connection only, where the
result must go, so an agent can answer only the commands it was sent and unanswered commands
expire. Events and presence are published per agent and reach only the workers that watch that
agent (or all of its tenant's agents) for a local dashboard. Every message is authorised here,
not only at the handshake.

Events are numbered and kept in the agent's history by the engine before they are published, so a
dashboard that names where it left off (``subscribe`` with ``since``) gets what it missed, then
the live events, each ``seq`` once and in order (see :mod:`app.event_relay` and
:mod:`app.recovery`).
"""

from __future__ import annotations

import json
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from app import metrics
from app.commands import AwaitedCommands
from app.engine import EngineUnavailable, HistoryPolicy
from app.errors import Code
from app.event_relay import HEAD, NO_HISTORY, Cursors, EventRelay
from app.logs import get_logger
from app.messages import (
    AgentStatus,
    ClientMessage,
    Command,
    CommandAccepted,
    CommandDelivery,
    Event,
    Presence,
    PresenceSnapshot,
    Result,
    ResultDelivery,
    Subscribe,
    Subscribed,
    encode,
    error,
)
from app.recovery import Cursor, is_recovered
from app.roles import Endpoint, may_command
from app.security_log import SecurityEvent

if TYPE_CHECKING:
    from collections.abc import Callable

    from app.connections import Connection
    from app.engine import Engine
    from app.security_log import SecurityLog

log = get_logger("app.hub")

MAX_PENDING_PER_AGENT = 1000
ALL = "*"
# A subscription's current presence: single `presence` messages up to SINGLE_PRESENCE_MAX agents
# (what small dashboards always got), else `presence.snapshot` batches of SNAPSHOT_BATCH: a
# subscription of 1000 agents is 10 messages, far below any send queue bound.
SINGLE_PRESENCE_MAX = 16
SNAPSHOT_BATCH = 100
_ROUTED_COMMANDS = metrics.MESSAGES.labels("command", "routed")
_EXPIRED_COMMANDS = metrics.MESSAGES.labels("command", "expired")


@dataclass(slots=True)
class _Pending:
    worker: str
    conn_id: str
    expires_at: float
    ref: Any = None
    """The operator's message id of the command, echoed in an error about it."""


@dataclass(slots=True)
class _Agent:
    """Hub state kept on an agent connection: commands it was sent and not yet answered."""

    tenant: str
    pending: OrderedDict[str, _Pending] = field(default_factory=OrderedDict)

    def prune(self, now: float) -> None:
        while self.pending:
            first = next(iter(self.pending.values()))
            if first.expires_at > now and len(self.pending) <= MAX_PENDING_PER_AGENT:
                return
            self.pending.popitem(last=False)


@dataclass(slots=True)
class _Dashboard:
    tenant: str
    watching: frozenset[str] = frozenset()
    # agent_id -> where this dashboard is in that agent's events (watched agents only).
    cursors: dict[str, Cursor] = field(default_factory=dict)


def tenant_of(conn: Connection) -> str:
    return conn.session.admission.principal.tenant or ""


def presence_messages(agent_ids: list[str], online: set[str]) -> list[str]:
    """The current presence of ``agent_ids`` as encoded messages: one ``presence`` each for a few
    agents, else ``presence.snapshot`` batches (at most ``SNAPSHOT_BATCH`` agents each)."""
    statuses = [
        AgentStatus(agent_id=a, status="online" if a in online else "offline") for a in agent_ids
    ]
    if len(statuses) <= SINGLE_PRESENCE_MAX:
        return [encode(Presence(agent_id=s.agent_id, status=s.status)) for s in statuses]
    return [
        encode(PresenceSnapshot(agents=statuses[start : start + SNAPSHOT_BATCH]))
        for start in range(0, len(statuses), SNAPSHOT_BATCH)
    ]


class Hub:
    """Routes the hub's messages for one worker. Call :meth:`connected` after accepting a
    connection and :meth:`disconnected` when it is gone; :meth:`handle` for each client message;
    the engine calls :meth:`on_engine_message` for routed messages."""

    def __init__(
        self,
        engine: Engine,
        lookup: Callable[[str], Connection | None],
        security_log: SecurityLog,
        *,
        lease_seconds: int,
        command_ttl_seconds: int,
        history: HistoryPolicy,
    ) -> None:
        self._engine = engine
        self._lookup = lookup  # this worker's registry, by conn_id
        self._security_log = security_log
        self._lease = lease_seconds
        self._command_ttl = command_ttl_seconds
        self._awaited = AwaitedCommands(command_ttl_seconds)
        self._events = EventRelay(engine, history)
        # (tenant, agent id or "*") -> local dashboard connections watching it
        self._watchers: dict[tuple[str, str], set[str]] = {}
        # tenant -> agents announced online to this worker's dashboards (watched tenants only)
        self._known: dict[str, set[str]] = {}

    # Connections ----------------------------------------------------------------------------
    async def connected(self, conn: Connection) -> None:
        tenant = tenant_of(conn)
        if conn.session.admission.endpoint is Endpoint.AGENT:
            conn.attributes["hub"] = _Agent(tenant)
            try:
                if await self._engine.agent_online(tenant, conn.sub, conn.conn_id,
                                                   lease_seconds=self._lease):
                    await self._presence(tenant, conn.sub, "online")
            except EngineUnavailable:
                metrics.ENGINE_ERRORS.labels("presence").inc()
        else:
            conn.attributes["hub"] = _Dashboard(tenant)

    async def disconnected(self, conn: Connection) -> None:
        state = conn.attributes.get("hub")
        if isinstance(state, _Agent):
            await self._abandon(state)
            if await self._engine.agent_offline(state.tenant, conn.sub, conn.conn_id):
                try:
                    await self._presence(state.tenant, conn.sub, "offline")
                except EngineUnavailable:
                    metrics.ENGINE_ERRORS.labels("presence").inc()
        elif isinstance(state, _Dashboard):
            await self._set_watching(conn, state, frozenset())

    async def _abandon(self, state: _Agent) -> None:
        """The agent left with commands it had not answered: their operators get
        ``agent_offline`` now instead of nothing (the soak found commands unanswered for good
        when an agent closed right after a command reached it)."""
        pending, state.pending = list(state.pending.items()), OrderedDict()
        for command_id, p in pending:
            try:
                await self._engine.send_to_worker(p.worker, json.dumps({
                    "k": "error", "c": p.conn_id, "code": Code.AGENT_OFFLINE.value,
                    "m": "the agent disconnected before answering", "ref": p.ref, "id": command_id,
                }))
            except EngineUnavailable:
                metrics.ENGINE_ERRORS.labels("route").inc()

    def presence_leases(self, conns: list[Connection]) -> list[tuple[str, str, str]]:
        return [(s.tenant, c.sub, c.conn_id) for c in conns
                if isinstance(s := c.attributes.get("hub"), _Agent)]

    # Client messages ------------------------------------------------------------------------
    async def handle(self, conn: Connection, message: ClientMessage) -> None:
        state = conn.attributes.get("hub")
        try:
            if isinstance(state, _Dashboard) and isinstance(message, Subscribe):
                await self._subscribe(conn, state, message)
            elif isinstance(state, _Dashboard) and isinstance(message, Command):
                await self._command(conn, state, message)
            elif isinstance(state, _Agent) and isinstance(message, Result):
                await self._result(conn, state, message)
            elif isinstance(state, _Agent) and isinstance(message, Event):
                await self._events.publish(state.tenant, conn.sub, message.payload)
            else:
                self._forbid(conn, message, f"{message.type} is not for this endpoint")
        except EngineUnavailable:
            metrics.ENGINE_ERRORS.labels("route").inc()
            conn.send(error(Code.UNAVAILABLE, "routing is unavailable; retry", message.id))

    async def _subscribe(self, conn: Connection, state: _Dashboard, message: Subscribe) -> None:
        wanted = frozenset({ALL}) if message.agents == ALL else frozenset(message.agents)
        since = {a: c for a, c in (message.since or {}).items() if ALL in wanted or a in wanted}
        # Named agents newly watched without since start "now": the history read tells where
        # that is, so that even events racing the subscription arrive in order.
        after = {a: HEAD for a in wanted - state.watching - {ALL} if a not in since}
        after.update({a: c.seq for a, c in since.items()})
        # Live first: from here on, live events of these agents are held back until the replay
        # is sent (the cursors de-duplicate the two by seq).
        for agent_id in after:
            point = since.get(agent_id)
            state.cursors[agent_id] = Cursor.catching_up(
                point.epoch if point else None, point.seq if point else 0)
        await self._set_watching(conn, state, wanted)
        try:
            histories = await self._events.read(state.tenant, after)
            # "*" needs every agent's presence; named agents only their own (a tenant's
            # thousands of agents are not read again for each dashboard's subscribe).
            online = await self._engine.online_agents(
                state.tenant, None if ALL in wanted else wanted)
        except EngineUnavailable:
            # No answer to the subscribe, but nothing held back stays stuck: the live events.
            metrics.ENGINE_ERRORS.labels("history").inc()
            for text in self._events.give_up(state.cursors, after):
                conn.send(text)
            raise
        recovered = {a: is_recovered(c.epoch, c.seq, histories.get(a, NO_HISTORY))
                     for a, c in since.items()}
        replay = self._events.finish(state.cursors, after, histories)
        conn.send(encode(Subscribed(agents=sorted(wanted), ref=message.id, recovered=recovered)))
        shown = sorted(online) if ALL in wanted else sorted(wanted)
        for text in presence_messages(shown, online):
            conn.send(text)
        for text in replay:
            conn.send(text)
        await self._events.complete(conn, state.cursors, state.tenant, after)
        complete = sum(recovered.values())
        if since:
            metrics.RECOVERIES.labels("recovered").inc(complete)
            metrics.RECOVERIES.labels("incomplete").inc(len(recovered) - complete)

    async def _set_watching(self, conn: Connection, state: _Dashboard, wanted: frozenset[str]) -> None:
        for agent_id in state.watching - wanted:
            key = (state.tenant, agent_id)
            watchers = self._watchers.get(key)
            if watchers is not None:
                watchers.discard(conn.conn_id)
                if not watchers:
                    del self._watchers[key]
            await self._engine.unwatch(state.tenant, agent_id)
        for agent_id in [a for a in state.cursors if ALL not in wanted and a not in wanted]:
            del state.cursors[agent_id]
        for agent_id in wanted - state.watching:
            self._watchers.setdefault((state.tenant, agent_id), set()).add(conn.conn_id)
            await self._engine.watch(state.tenant, agent_id)
        state.watching = wanted

    async def _command(self, conn: Connection, state: _Dashboard, message: Command) -> None:
        if not may_command(conn.session.principal.roles):
            self._forbid(conn, message, "commands need role operator")
            return
        command_id = secrets.token_hex(16)  # as unguessable as uuid4().hex, and cheaper
        envelope = json.dumps({
            "k": "command", "id": command_id, "from": conn.sub, "p": message.payload,
            "rw": self._engine.worker_id, "rc": conn.conn_id, "ref": message.id, "t": state.tenant,
        })
        # Awaited before it is sent: its result may come back before the send returns.
        self._awaited.await_answer(command_id, conn.conn_id, message.id, time.time())
        # The lookup and the send are one round trip: the engine completes the envelope with the
        # agent connection's id ("c") and sends it to that connection's worker.
        try:
            sent = await self._engine.send_to_agent(
                state.tenant, message.agent_id, envelope[:-1] + ',"c":', "}")
        except BaseException:
            self._awaited.answered(command_id)  # the operator gets `unavailable` instead
            raise
        if not sent:
            self._awaited.answered(command_id)
            conn.send(error(Code.AGENT_OFFLINE, "the agent is not connected", message.id))
            return
        _ROUTED_COMMANDS.inc()
        conn.send(encode(CommandAccepted(command_id=command_id, ref=message.id)))

    async def _result(self, conn: Connection, state: _Agent, message: Result) -> None:
        state.prune(time.time())
        pending = state.pending.pop(message.command_id, None)
        if pending is None:
            self._forbid(conn, message, "no such command was sent to this agent")
            return
        await self._engine.send_to_worker(pending.worker, json.dumps({
            "k": "result", "c": pending.conn_id, "id": message.command_id, "a": conn.sub,
            "p": message.payload,
        }))

    def _forbid(self, conn: Connection, message: ClientMessage, why: str) -> None:
        admission = conn.session.admission
        self._security_log.record(SecurityEvent(
            event="hub.forbidden", code=Code.FORBIDDEN, endpoint=admission.endpoint.path,
            client_ip=admission.client_ip, verified_sub=conn.sub,
            jti=conn.session.principal.jti, detail=f"{message.type}: {why}",
            tenant=conn.session.principal.tenant,
        ))
        conn.send(error(Code.FORBIDDEN, why, message.id))

    async def _presence(self, tenant: str, agent_id: str, status: str) -> None:
        await self._engine.publish_agent(
            tenant, agent_id, json.dumps({"k": "presence", "t": tenant, "a": agent_id, "s": status})
        )

    def expire_commands(self, now: float) -> None:
        """End each command this worker's dashboards sent that got no answer within the command
        TTL with ``error`` ``command_expired`` (no answer can follow it, see app.commands)."""
        for _, awaited in self._awaited.expired(now):
            _EXPIRED_COMMANDS.inc()
            self._deliver_to(awaited.conn_id, error(
                Code.COMMAND_EXPIRED, "no answer to the command within its time", awaited.ref))

    async def sweep(self) -> None:
        """Announce what no publication did: agents whose leases ran out (their worker was
        killed) go offline, within a lease plus one sweep interval. Raises EngineUnavailable."""
        tenants = {tenant for tenant, _ in self._watchers}
        for tenant in set(self._known) - tenants:
            del self._known[tenant]
        for tenant in tenants:
            online = await self._engine.online_agents(tenant)
            known = self._known.get(tenant)
            self._known[tenant] = set(online)
            if known is None:
                continue
            for agent_id in sorted(known - online):
                self._fan_out(tenant, agent_id, encode(Presence(agent_id=agent_id, status="offline")))
            for agent_id in sorted(online - known):
                self._fan_out(tenant, agent_id, encode(Presence(agent_id=agent_id, status="online")))

    # Routed messages ------------------------------------------------------------------------
    async def on_engine_message(self, raw: str) -> None:
        """One routed message from the engine. Malformed ones are logged and dropped; so is one
        whose handling needs the engine while it is unavailable (e.g. telling an operator that
        the agent left: the operator's command then times out, as during any Redis fault)."""
        kind = "?"
        try:
            envelope = json.loads(raw)
            kind = envelope["k"]
            if kind == "command":
                await self._deliver_command(envelope)
            elif kind == "result":
                if self._awaited.answered(envelope["id"]) is not None:
                    self._deliver_to(envelope["c"], encode(ResultDelivery(
                        command_id=envelope["id"], agent_id=envelope["a"], payload=envelope["p"])))
            elif kind == "error":
                # About one command (its "id"): delivered only while that command is awaited.
                if "id" not in envelope or self._awaited.answered(envelope["id"]) is not None:
                    self._deliver_to(envelope["c"], error(Code(envelope["code"]), envelope["m"],
                                                          envelope.get("ref")))
            elif kind == "event":
                await self._events.deliver(envelope, self._dashboards(envelope["t"], envelope["a"]))
            elif kind == "presence":
                known = self._known.get(envelope["t"])
                if known is not None:
                    (known.add if envelope["s"] == "online" else known.discard)(envelope["a"])
                self._fan_out(envelope["t"], envelope["a"], encode(Presence(
                    agent_id=envelope["a"], status=envelope["s"])))
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("hub.bad_routed_message", error=type(exc).__name__)
        except EngineUnavailable as exc:
            log.warning("hub.routing_failed", kind=kind, error=str(exc))

    async def _deliver_command(self, envelope: dict[str, Any]) -> None:
        conn = self._lookup(envelope["c"])
        state = conn.attributes.get("hub") if conn is not None else None
        if conn is None or conn.close_code is not None or not isinstance(state, _Agent):
            # The agent left between lookup and delivery: tell the operator.
            await self._engine.send_to_worker(envelope["rw"], json.dumps({
                "k": "error", "c": envelope["rc"], "code": Code.AGENT_OFFLINE.value,
                "m": "the agent disconnected", "ref": envelope.get("ref"), "id": envelope["id"],
            }))
            return
        now = time.time()
        state.pending[envelope["id"]] = _Pending(envelope["rw"], envelope["rc"], now + self._command_ttl,
                                                 envelope.get("ref"))
        state.prune(now)
        conn.send(encode(CommandDelivery(command_id=envelope["id"], from_=envelope["from"],
                                         payload=envelope["p"])))

    def _dashboards(self, tenant: str, agent_id: str) -> list[tuple[Connection, Cursors]]:
        found = []
        for conn_id in self._targets(tenant, agent_id):
            conn = self._lookup(conn_id)
            state = conn.attributes.get("hub") if conn is not None else None
            if conn is not None and isinstance(state, _Dashboard):
                found.append((conn, state.cursors))
        return found

    def _deliver_to(self, conn_id: str, text: str) -> None:
        conn = self._lookup(conn_id)
        if conn is not None:
            conn.send(text)

    def _targets(self, tenant: str, agent_id: str) -> set[str]:
        return self._watchers.get((tenant, agent_id), set()) | self._watchers.get((tenant, ALL), set())

    def _fan_out(self, tenant: str, agent_id: str, text: str) -> None:
        for conn_id in self._targets(tenant, agent_id):
            self._deliver_to(conn_id, text)
