"""The engine interface shared by the embedded and the Redis engines.

Every method that consults shared state raises :class:`EngineUnavailable` when that state cannot be
reached; callers fail closed on it (``unavailable``). Time is the engine's own clock (Redis ``TIME``
on the Redis engine) so that several hosts agree on windows and leases.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from app.errors import Code


class EngineUnavailable(Exception):
    """Shared state could not be reached; the caller must fail closed."""


@dataclass(frozen=True, slots=True)
class Admitted:
    """The attempt passed."""


@dataclass(frozen=True, slots=True)
class Refused:
    """The attempt was refused with ``code``; ``retry_after`` seconds (0 when meaningless)."""

    code: Code
    retry_after: int = 0


IpVerdict = Admitted | Refused
UserVerdict = Admitted | Refused

ControlKind = Literal["kick", "revoke_jti", "revoke_sub", "ban"]


@dataclass(frozen=True, slots=True)
class ControlEvent:
    """A cluster-wide instruction, delivered to every worker (the publishing one included).

    ``kind`` says what to do; ``data`` holds its JSON-safe arguments (``sub``, ``jti``,
    ``issued_before``, ``cidr``...). Delivery is at most once: a worker that is down misses it,
    which is why durable state (bans, revocations) is also re-read at start.
    """

    kind: ControlKind
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class HistoryPolicy:
    """How much of each agent's event history an engine keeps: at most ``size`` events (0: none,
    only the sequence is counted) no older than ``seconds``."""

    size: int
    seconds: int


@dataclass(frozen=True, slots=True)
class History:
    """What an engine holds of one agent's events after a given ``seq``.

    ``epoch`` names the history ("" when the agent never published); ``seq`` is the last number
    given out; ``events`` are the held ``(seq, payload JSON)`` pairs past the asked-for one, in
    order and contiguous (trimming removes only the oldest events).
    """

    epoch: str
    seq: int
    events: tuple[tuple[int, str], ...] = ()


ControlHandler = Callable[[ControlEvent], Awaitable[None]]
MessageHandler = Callable[[str], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """A live connection as the admin API lists it (never a token)."""

    conn_id: str
    sub: str
    endpoint: str
    client_ip: str
    worker: str
    connected_at: float
    tenant: str = ""  # "" for tokens without a tenant


class Engine(Protocol):
    """Limits, leases and cluster-wide messages.

    Guarantees, on both engines:

    - :meth:`check_ip` and :meth:`admit_user` are each one atomic step (one Redis round trip).
    - A slot taken by :meth:`admit_user` counts until :meth:`release`, or until its lease runs out
      without a :meth:`renew` (a killed worker's slots come back within ``lease_seconds``).
    - Sliding windows are exact: at most ``limit`` admitted attempts in any ``window`` seconds;
      refused attempts do not count; ``retry_after`` is when the oldest admitted one leaves.
    - A user is the pair (``tenant``, ``sub``): slots, attempt windows and listings of ``bob`` in
      tenant ``a`` never touch ``bob`` in tenant ``b`` (``tenant`` "" is "no tenant").
    """

    name: str
    worker_id: str

    async def start(self) -> None:
        """Connect and start background work (lease renewal, subscriptions)."""

    async def close(self) -> None:
        """Stop background work and disconnect. Idempotent."""

    async def ping(self) -> bool:
        """True when shared state is reachable now (readiness)."""

    async def check_ip(self, ip: str, *, limit: int, window: int = 60) -> IpVerdict:
        """Refuse a banned IP (``ip_banned``) or one over its attempt rate (``rate_limited``);
        otherwise count the attempt. One atomic step."""

    async def admit_user(
        self,
        sub: str,
        conn_id: str,
        *,
        tenant: str = "",
        rate_limit: int,
        max_connections: int,
        lease_seconds: int,
        window: int = 60,
        info: ConnectionInfo | None = None,
    ) -> UserVerdict:
        """Count an attempt of ``sub`` (``rate_limited`` past ``rate_limit`` per ``window``),
        then take a connection slot for ``conn_id`` (``connection_limit`` when
        ``max_connections`` are live). One atomic step: a refused attempt takes no slot.
        ``info`` is kept with the slot (same lease) for :meth:`list_connections`; re-admitting
        a held ``conn_id`` takes no second slot. ``info.tenant`` must be ``tenant``."""

    async def release(self, sub: str, conn_id: str, *, tenant: str = "") -> None:
        """Give a slot (and its info) back. Idempotent; never raises (a slot it cannot release
        expires). ``conn_id`` stays marked released for ``RELEASED_SECONDS`` (until admitted
        again): a :meth:`renew` that carries it does not take the slot back, even one sent
        before this call that reaches the store after it."""

    async def list_connections(
        self, sub: str | None = None, *, tenant: str | None = None
    ) -> list[ConnectionInfo]:
        """Live connections on every worker (expired leases left out): all of them, or only those
        of ``sub`` and/or of ``tenant`` (None: any)."""

    async def renew(
        self, connections: Iterable[ConnectionInfo], *, lease_seconds: int, max_connections: int
    ) -> list[ConnectionInfo]:
        """Extend the leases of this worker's live connections. A live connection whose slot is
        gone (its lease ran out during a Redis outage, or Redis lost its data) gets it back, with
        its info, only while its user holds fewer than ``max_connections`` live slots (live
        slots are extended first; atomic per user); one released lately (:meth:`release`) is
        skipped, as closed. Returns the connections that could not get their slot back: other
        connections took the user's slots meanwhile, and the caller closes these
        (``connection_limit``) so that the limit holds cluster-wide."""

    async def count_connections(self, sub: str, *, tenant: str = "") -> int:
        """Live (unexpired) slots of the user (``tenant``, ``sub``)."""

    async def record_auth_failure(
        self, ip: str, *, threshold: int, window: int, ban_seconds: int
    ) -> bool:
        """Count a failed authentication from ``ip``; at ``threshold`` failures within ``window``
        seconds, ban it for ``ban_seconds``. True when this call banned it."""

    async def ban_ip(self, ip: str, *, seconds: int) -> None:
        """Ban one address for ``seconds`` (what automatic bans use)."""

    async def unban_ip(self, ip: str) -> None:
        """Lift an automatic ban."""

    async def publish(self, event: ControlEvent) -> None:
        """Deliver ``event`` to every worker's handler, this one's included."""

    def subscribe(self, handler: ControlHandler) -> None:
        """Set the handler for control events (one per engine). Call before :meth:`start`."""

    # Routing and presence (the hub). ``tenant`` is "" for tokens without one. -------------------

    def on_message(self, handler: MessageHandler) -> None:
        """Set the handler for routed messages: those sent to this worker with
        :meth:`send_to_worker`, and those published for agents this worker :meth:`watch`es.
        Call before :meth:`start`."""

    async def agent_online(
        self, tenant: str, agent_id: str, conn_id: str, *, lease_seconds: int
    ) -> bool:
        """Record that ``conn_id`` (on this worker) serves ``agent_id``, leased like a slot. True
        when the agent was offline before (the caller then announces it online)."""

    async def agent_offline(self, tenant: str, agent_id: str, conn_id: str) -> bool:
        """Forget ``conn_id`` for ``agent_id``. True when the agent has no connection left.
        Idempotent; never raises (a lease it cannot release expires). As for :meth:`release`,
        ``conn_id`` stays marked for ``RELEASED_SECONDS`` (until :meth:`agent_online` again), so
        that :meth:`renew_agents` does not bring it back."""

    async def renew_agents(
        self, entries: Iterable[tuple[str, str, str]], *, lease_seconds: int
    ) -> None:
        """Extend the presence leases of live ``(tenant, agent_id, conn_id)`` entries of this
        worker; an entry whose lease ran out is re-established (as for :meth:`renew`), unless
        it went offline lately."""

    async def locate_agent(self, tenant: str, agent_id: str) -> tuple[str, str] | None:
        """``(worker_id, conn_id)`` of the agent's most recently connected live connection, the
        one that receives its commands; None when it is offline. One atomic step."""

    async def online_agents(self, tenant: str, among: Collection[str] | None = None) -> set[str]:
        """Agents of ``tenant`` with at least one live connection (expired leases left out).
        With ``among``, only those agents are looked up: the cost follows ``len(among)``, not
        the number of the tenant's agents."""

    async def send_to_worker(self, worker_id: str, message: str) -> None:
        """Deliver ``message`` to that worker's message handler (at most once; lost if the worker
        is gone). Crosses Redis once."""

    async def send_to_agent(self, tenant: str, agent_id: str, head: str, tail: str) -> bool:
        """:meth:`locate_agent` then :meth:`send_to_worker` of ``head + JSON(conn_id) + tail`` to
        that connection's worker; False when the agent is offline. On a single Redis primary
        (Sentinel included) also False when no worker of the agent's live connections listens
        (killed, or drained during a Redis fault, until the leases run out), and one round trip;
        two on a Redis Cluster."""

    async def publish_agent(self, tenant: str, agent_id: str, message: str) -> None:
        """Deliver ``message`` to every worker watching this agent or all of ``tenant``'s agents
        (each such worker gets it once, even if it watches both)."""

    async def watch(self, tenant: str, agent_id: str) -> None:
        """Start receiving :meth:`publish_agent` messages for one agent (``agent_id="*"``: every
        agent of ``tenant``). Watches are counted: each watch needs one unwatch."""

    async def unwatch(self, tenant: str, agent_id: str) -> None:
        """Undo one :meth:`watch`."""

    # Event history (missed events recovered on reconnect). ---------------------------------------

    async def append_event(
        self, tenant: str, agent_id: str, payload: str, *, policy: HistoryPolicy,
        last: tuple[str, int] | None = None,
    ) -> tuple[str, int]:
        """Give the agent's next event its ``(epoch, seq)`` and keep ``payload`` (JSON text) in the
        agent's history, trimmed to ``policy``. One atomic step: the numbers of one agent's events
        are 1, 2, 3... with no gap or repeat on every worker, and an event is held before its
        number is returned (so before it is published). A new epoch starts when the agent's
        history was lost (never kept, expired, or Redis lost its data), or when its counter is below
        ``last``, the ``(epoch, seq)`` the caller got for the agent's previous event under the
        same epoch (a failover lost the latest increments): no number is given twice under one
        epoch. Raises EngineUnavailable."""

    async def read_history(
        self, tenant: str, after: dict[str, int], *, policy: HistoryPolicy
    ) -> dict[str, History]:
        """For each ``agent_id -> seq`` of ``after``: the agent's held events with a greater
        ``seq`` no older than ``policy.seconds``. One round trip for the whole batch. Raises
        EngineUnavailable."""
