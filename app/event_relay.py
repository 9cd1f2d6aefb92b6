"""Agents' events between the engine and this worker's dashboards.

Guarantees:

- An event is numbered and kept in the agent's history by the engine before it is published, so
  a dashboard that misses the publication can find it there.
- A dashboard's catch-up (``subscribe`` with ``since``, or a live event that overtook its
  predecessor) sends the missing events first, then the live ones held back meanwhile, in ``seq``
  order, each once (the decisions are :class:`app.recovery.Cursor`'s).
- A live event is encoded once per worker, whatever the number of dashboards watching it.
- When the history cannot be read, what was held back is sent anyway: nothing stays stuck.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from pydantic import JsonValue

from app import metrics
from app.engine import EngineUnavailable, History, HistoryPolicy
from app.messages import EventDelivery, encode
from app.recovery import Cursor, Render

if TYPE_CHECKING:
    from app.connections import Connection
    from app.engine import Engine

NO_HISTORY = History("", 0)
# A seq past any real one: reading after it returns only the epoch and the last seq.
HEAD = 2**62
# Agents whose last numbers a worker remembers (the least recently publishing are forgotten).
LAST_NUMBERS_KEPT = 65_536
# agent_id -> cursor, of one dashboard connection.
Cursors = dict[str, Cursor]


def renderer(agent_id: str) -> Render:
    """Encodes an event of ``agent_id`` read back from its history."""
    def render(epoch: str, seq: int, payload: str) -> str:
        return encode(EventDelivery(agent_id=agent_id, seq=seq, epoch=epoch, payload=json.loads(payload)))
    return render


class EventRelay:
    """Publishes agents' events and delivers them to this worker's dashboards (see the module
    docstring for the guarantees)."""

    def __init__(self, engine: Engine, policy: HistoryPolicy) -> None:
        self._engine = engine
        self._policy = policy
        # (tenant, agent_id) -> the (epoch, seq) this worker last got, newest last: lets the
        # engine start a new epoch when a failover took numbers already given out.
        self._last: dict[tuple[str, str], tuple[str, int]] = {}

    async def publish(self, tenant: str, agent_id: str, payload: JsonValue) -> None:
        """Number, keep and publish one event. Raises EngineUnavailable."""
        stored = json.dumps(payload, separators=(",", ":"))
        key = (tenant, agent_id)
        epoch, seq = await self._engine.append_event(
            tenant, agent_id, stored, policy=self._policy, last=self._last.get(key))
        self._last.pop(key, None)
        self._last[key] = (epoch, seq)
        if len(self._last) > LAST_NUMBERS_KEPT:
            del self._last[next(iter(self._last))]
        await self._engine.publish_agent(tenant, agent_id, json.dumps(
            {"k": "event", "t": tenant, "a": agent_id, "e": epoch, "s": seq, "p": payload}))

    async def read(self, tenant: str, after: Mapping[str, int]) -> dict[str, History]:
        """The histories after these points (one round trip). Raises EngineUnavailable."""
        if not after:
            return {}
        return await self._engine.read_history(tenant, dict(after), policy=self._policy)

    @staticmethod
    def finish(cursors: Cursors, agents: Iterable[str], histories: Mapping[str, History]) -> list[str]:
        """End the catch-ups of ``agents`` with ``histories``: the texts to send, in order. A
        cursor that live events overtook stays held (see :meth:`complete`)."""
        texts: list[str] = []
        for agent_id in agents:
            cursor = cursors.get(agent_id)
            if cursor is not None and cursor.held is not None:
                texts += cursor.finish(histories.get(agent_id, NO_HISTORY), renderer(agent_id), final=False)
        return texts

    @staticmethod
    def give_up(cursors: Cursors, agents: Iterable[str]) -> list[str]:
        """End the catch-ups of ``agents`` without their histories: the held live events."""
        texts: list[str] = []
        for agent_id in agents:
            cursor = cursors.get(agent_id)
            if cursor is not None and cursor.held is not None:
                texts += cursor.give_up()
        return texts

    async def complete(self, conn: Connection, cursors: Cursors, tenant: str, agents: Iterable[str]) -> None:
        """Fill what the first read of a catch-up could not (live events overtook it)."""
        for agent_id in list(agents):
            cursor = cursors.get(agent_id)
            if cursor is not None and cursor.held is not None:
                await self.fill_gap(conn, cursors, tenant, agent_id, cursor)

    async def deliver(
        self, envelope: Mapping[str, Any], dashboards: Iterable[tuple[Connection, Cursors]]
    ) -> None:
        """One published event to the watching ``dashboards`` of this worker."""
        tenant, agent_id, epoch, seq = envelope["t"], envelope["a"], str(envelope["e"]), int(envelope["s"])
        text = encode(EventDelivery(agent_id=agent_id, seq=seq, epoch=epoch, payload=envelope["p"]))
        gaps: list[tuple[Connection, Cursors, Cursor]] = []
        for conn, cursors in dashboards:
            cursor = cursors.setdefault(agent_id, Cursor())
            texts = cursor.offer(epoch, seq, text)
            if texts is None:
                gaps.append((conn, cursors, cursor))
            else:
                for item in texts:
                    conn.send(item)
        for conn, cursors, cursor in gaps:
            await self.fill_gap(conn, cursors, tenant, agent_id, cursor)

    async def fill_gap(self, conn: Connection, cursors: Cursors, tenant: str, agent_id: str,
                       cursor: Cursor) -> None:
        """Events came before their predecessors: send those from the history first. Read once
        more when live ones overtook the first read; past that a gap is given up."""
        metrics.RECOVERIES.labels("gap").inc()
        for final in (False, True):
            try:
                found = await self.read(tenant, {agent_id: cursor.last})
                texts = cursor.finish(found.get(agent_id, NO_HISTORY), renderer(agent_id), final=final)
            except EngineUnavailable:
                metrics.ENGINE_ERRORS.labels("history").inc()
                texts = cursor.give_up()
            if cursors.get(agent_id) is cursor:
                # (A cursor replaced by a new subscribe meanwhile sends nothing.)
                for text in texts:
                    conn.send(text)
            if cursor.held is None:
                return
