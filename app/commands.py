"""The commands this worker's dashboards sent and still wait for: each ends with one answer.

A command accepted here is awaited until its ``result`` or an ``error`` about it arrives, which
is then delivered and ends it; one that gets neither within the command TTL ends with ``error``
``command_expired``. After that no answer can follow: the agent's side forgets a command the
same TTL after it was delivered (later than it was accepted here), so a result it still sends is
refused there, and one already on its way is dropped here. Without this a result lost with a
Redis failover, a partition or a killed worker left the operator with no answer at all.

Plain state, no I/O: the hub feeds it and sends what it returns.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

# A bound on one worker's awaited commands (a few hundred bytes each): past it the oldest end
# early, with `command_expired`, which a client must handle anyway.
MAX_AWAITED = 50_000


@dataclass(slots=True, frozen=True)
class Awaited:
    conn_id: str
    """The dashboard connection that sent the command."""
    ref: Any
    """The operator's message id of the command, echoed in the error that ends it."""
    expires_at: float


class AwaitedCommands:
    """Commands in acceptance order, which is also their expiry order (one TTL for all)."""

    def __init__(self, ttl_seconds: float, *, most: int = MAX_AWAITED) -> None:
        self._ttl = ttl_seconds
        self._most = most
        self._awaited: OrderedDict[str, Awaited] = OrderedDict()

    def __len__(self) -> int:
        return len(self._awaited)

    def await_answer(self, command_id: str, conn_id: str, ref: Any, now: float) -> None:
        """Wait for ``command_id``'s answer from now on (before it is sent: an answer may come
        back before the send returns)."""
        self._awaited[command_id] = Awaited(conn_id, ref, now + self._ttl)

    def answered(self, command_id: str) -> Awaited | None:
        """``command_id`` got its answer: what was awaited, or None when it no longer is
        (expired, already answered, or never sent from here), and the answer is dropped."""
        return self._awaited.pop(command_id, None)

    def expired(self, now: float) -> list[tuple[str, Awaited]]:
        """The commands whose time is up (and the oldest past the bound), no longer awaited."""
        ended: list[tuple[str, Awaited]] = []
        while self._awaited:
            command_id, first = next(iter(self._awaited.items()))
            if first.expires_at > now and len(self._awaited) <= self._most:
                break
            self._awaited.popitem(last=False)
            ended.append((command_id, first))
        return ended
