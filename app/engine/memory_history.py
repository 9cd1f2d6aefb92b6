"""The embedded engine's event history: each agent's recent events in this process's memory.

Guarantees (on top of :meth:`app.engine.base.Engine.append_event` and ``read_history``):

- Each (tenant, agent) has an epoch (random, new for every process, so a restarted hub never
  claims to hold what it lost) and a counter; its last ``policy.size`` events no older than
  ``policy.seconds`` are kept in a deque.
- Memory stays bounded: an agent's events leave with the policy; its epoch and counter are dropped
  by :meth:`MemoryHistory.sweep` after ``META_TTL_SECONDS`` without an event (a dashboard then
  gets ``recovered: false``, the truth: the hub no longer knows what it sent).
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from app.engine.base import History, HistoryPolicy

# How long an agent's epoch and counter outlive its last event (both engines).
META_TTL_SECONDS = 86_400


@dataclass(slots=True)
class _Agent:
    epoch: str
    seq: int = 0
    touched: float = 0.0
    # (time, seq, payload), oldest first.
    events: deque[tuple[float, int, str]] = field(default_factory=deque)

    def trim(self, now: float, policy: HistoryPolicy) -> None:
        edge = now - policy.seconds
        while self.events and (len(self.events) > policy.size or self.events[0][0] <= edge):
            self.events.popleft()


class MemoryHistory:
    """Per-agent event histories of one process (see the module docstring)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._agents: dict[tuple[str, str], _Agent] = {}

    def append(self, tenant: str, agent_id: str, payload: str, policy: HistoryPolicy) -> tuple[str, int]:
        now = self._clock()
        agent = self._agents.get((tenant, agent_id))
        if agent is None:
            agent = self._agents[(tenant, agent_id)] = _Agent(secrets.token_hex(8))
        agent.seq += 1
        agent.touched = now
        agent.events.append((now, agent.seq, payload))
        agent.trim(now, policy)
        return agent.epoch, agent.seq

    def read(self, tenant: str, after: dict[str, int], policy: HistoryPolicy) -> dict[str, History]:
        now = self._clock()
        found: dict[str, History] = {}
        for agent_id, seq in after.items():
            agent = self._agents.get((tenant, agent_id))
            if agent is None:
                found[agent_id] = History("", 0)
                continue
            agent.trim(now, policy)
            held = tuple((s, p) for _, s, p in agent.events if s > seq)
            found[agent_id] = History(agent.epoch, agent.seq, held)
        return found

    def sweep(self) -> None:
        edge = self._clock() - META_TTL_SECONDS
        for key in [k for k, a in self._agents.items() if a.touched <= edge]:
            del self._agents[key]

    def __len__(self) -> int:
        return len(self._agents)
