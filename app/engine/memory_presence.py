"""The embedded engine's presence: which connections serve each agent, in this process's memory.

Guarantees (on top of the presence methods of :class:`app.engine.base.Engine`):

- Entries are leased like slots and dropped when their lease is over (on access and by
  :meth:`MemoryPresence.sweep`); emptied agents and tenants go with them.
- "Most recently connected" is the order of :meth:`MemoryPresence.online` calls (a counter, not
  the clock, so ties cannot happen); re-registering a live connection keeps its place.
- :meth:`MemoryPresence.renew` re-establishes what ran out (the event loop stalled past a lease):
  the entry in its old place in the order when still known, else below every live connection of
  the agent (the newest only when it is alone); never an entry gone offline in the last
  ``RELEASED_SECONDS``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass

import structlog

from app.engine._shared import Released

log = structlog.get_logger("app.engine")


@dataclass(slots=True)
class _Presence:
    """One connection serving an agent: its worker, its connection order, its lease expiry."""

    worker: str
    order: int
    expiry: float


class MemoryPresence:
    """Agent presence of one process (see the module docstring). Every method runs without
    awaiting, so on one event loop each is atomic."""

    def __init__(self, worker_id: str, clock: Callable[[], float], released: Released) -> None:
        self.worker_id = worker_id
        self._clock = clock
        # Shared with the engine, which counts and purges the marks.
        self._released = released
        # tenant -> agent_id -> conn_id -> presence.
        self._agents: dict[str, dict[str, dict[str, _Presence]]] = {}
        self._order = itertools.count(1)

    def __len__(self) -> int:
        """Tenants held (the engine's bookkeeping counts one key per tenant)."""
        return len(self._agents)

    def online(self, tenant: str, agent_id: str, conn_id: str, lease_seconds: int) -> bool:
        now = self._clock()
        conns = self._live(tenant, agent_id, now)
        was_offline = not conns
        held = conns.get(conn_id)
        order = held.order if held is not None else next(self._order)
        self._released.clear(("agent", tenant, conn_id))
        conns[conn_id] = _Presence(self.worker_id, order, now + lease_seconds)
        self._agents.setdefault(tenant, {})[agent_id] = conns
        return was_offline

    def offline(self, tenant: str, agent_id: str, conn_id: str) -> bool:
        now = self._clock()
        self._released.mark(("agent", tenant, conn_id), now)
        conns = self._live(tenant, agent_id, now)
        conns.pop(conn_id, None)
        if not conns:
            self._forget(tenant, agent_id)
        return not conns

    def renew(self, entries: Iterable[tuple[str, str, str]], lease_seconds: int) -> None:
        now = self._clock()
        expiry = now + lease_seconds
        revived = 0
        for tenant, agent_id, conn_id in entries:
            # Read before the purge: an expired entry not yet dropped still knows its order.
            stale = self._agents.get(tenant, {}).get(agent_id, {}).get(conn_id)
            conns = self._live(tenant, agent_id, now)
            held = conns.get(conn_id)
            if held is not None:
                held.expiry = expiry
                continue
            if self._released.holds(("agent", tenant, conn_id), now):
                continue  # offline since the caller listed it
            # Re-established (the connection is open): it keeps its place in the connection
            # order when known; else it ranks below every live connection of the agent, so it
            # never takes "most recent" from a newer one (it is the newest only when alone).
            if stale is not None:
                order = stale.order
            elif conns:
                order = min(p.order for p in conns.values()) - 1
            else:
                order = next(self._order)
            conns[conn_id] = _Presence(self.worker_id, order, expiry)
            self._agents.setdefault(tenant, {})[agent_id] = conns
            revived += 1
        if revived:
            log.warning("engine.presence_revived", count=revived)

    def locate(self, tenant: str, agent_id: str) -> tuple[str, str] | None:
        conns = self._live(tenant, agent_id, self._clock())
        if not conns:
            return None
        conn_id, newest = max(conns.items(), key=lambda item: item[1].order)
        return newest.worker, conn_id

    def online_agents(self, tenant: str, among: Collection[str] | None = None) -> set[str]:
        now = self._clock()
        agents = self._agents.get(tenant, {})
        names = list(agents) if among is None else [a for a in among if a in agents]
        return {a for a in names if self._live(tenant, a, now)}

    def sweep(self) -> None:
        """Drop every entry whose lease is over."""
        now = self._clock()
        for tenant in list(self._agents):
            for agent_id in list(self._agents.get(tenant, {})):
                self._live(tenant, agent_id, now)

    def _live(self, tenant: str, agent_id: str, now: float) -> dict[str, _Presence]:
        """The unexpired connections of one agent; emptied containers are dropped."""
        conns = self._agents.get(tenant, {}).get(agent_id)
        if conns is None:
            return {}
        for conn_id in [c for c, p in conns.items() if p.expiry <= now]:
            del conns[conn_id]
        if not conns:
            self._forget(tenant, agent_id)
        return conns

    def _forget(self, tenant: str, agent_id: str) -> None:
        agents = self._agents.get(tenant)
        if agents is not None:
            agents.pop(agent_id, None)
            if not agents:
                del self._agents[tenant]
