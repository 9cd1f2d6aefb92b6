"""The engine interface shared by the embedded and the Redis engines.

Every method that consults shared state raises :class:`EngineUnavailable` when that state cannot be
reached; callers fail closed on it (``unavailable``). Time is the engine's own clock (Redis ``TIME``
on the Redis engine) so that several hosts agree on windows and leases.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
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

ControlKind = Literal["kick", "revoke_jti", "revoke_sub", "ban", "route"]


@dataclass(frozen=True, slots=True)
class ControlEvent:
    """A cluster-wide instruction, delivered to every worker (the publishing one included).

    ``kind`` says what to do; ``data`` holds its JSON-safe arguments (``sub``, ``jti``,
    ``issued_before``, ``cidr``...). Delivery is at most once: a worker that is down misses it,
    which is why durable state (bans, revocations) is also re-read at start.
    """

    kind: ControlKind
    data: dict[str, Any] = field(default_factory=dict)


ControlHandler = Callable[[ControlEvent], Awaitable[None]]


class Engine(Protocol):
    """Limits, leases and cluster-wide messages.

    Guarantees, on both engines:

    - :meth:`check_ip` and :meth:`admit_user` are each one atomic step (one Redis round trip).
    - A slot taken by :meth:`admit_user` counts until :meth:`release`, or until its lease runs out
      without a :meth:`renew` (a killed worker's slots come back within ``lease_seconds``).
    - Sliding windows are exact: at most ``limit`` admitted attempts in any ``window`` seconds;
      refused attempts do not count; ``retry_after`` is when the oldest admitted one leaves.
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
        rate_limit: int,
        max_connections: int,
        lease_seconds: int,
        window: int = 60,
    ) -> UserVerdict:
        """Count an attempt of ``sub`` (``rate_limited`` past ``rate_limit`` per ``window``), then take
        a connection slot for ``conn_id`` (``connection_limit`` when ``max_connections`` are live).
        One atomic step: a refused attempt takes no slot."""

    async def release(self, sub: str, conn_id: str) -> None:
        """Give a slot back. Idempotent; never raises (a slot it cannot release expires)."""

    async def renew(self, leases: Iterable[tuple[str, str]], *, lease_seconds: int) -> None:
        """Extend the leases of live ``(sub, conn_id)`` slots."""

    async def count_connections(self, sub: str) -> int:
        """Live (unexpired) slots of ``sub``."""

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
