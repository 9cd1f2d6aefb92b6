"""What both engines share: small rules for limits and listings, and the delegation of their
messaging methods to their messaging half."""

from __future__ import annotations

import ipaddress
import json
from collections import OrderedDict
from collections.abc import Hashable, Iterable
from typing import Protocol

from app.engine.base import ConnectionInfo, ControlEvent, ControlHandler, MessageHandler

# How long a released connection id (a slot given back, an agent gone offline) stays marked: a
# renewal filtered just before the connection closed, then sent on another Redis connection than
# the release (or queued behind a slow pipeline, or retried after a reconnect), must not take the
# slot or the presence back. Seconds, well past any renewal in flight; conn_ids are never reused.
RELEASED_SECONDS = 60


class Released:
    """Connection ids marked released, each for ``RELEASED_SECONDS``: the embedded engine's twin
    of the Redis ``released`` zsets. Marks end in the order they were made, so purging them costs
    amortised O(1) per mark."""

    __slots__ = ("_until",)

    def __init__(self) -> None:
        self._until: OrderedDict[Hashable, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._until)

    def mark(self, key: Hashable, now: float) -> None:
        self.purge(now)
        self._until.pop(key, None)
        self._until[key] = now + RELEASED_SECONDS

    def clear(self, key: Hashable) -> None:
        self._until.pop(key, None)

    def holds(self, key: Hashable, now: float) -> bool:
        until = self._until.get(key)
        return until is not None and until > now

    def purge(self, now: float) -> None:
        while self._until:
            key, until = next(iter(self._until.items()))
            if until > now:
                return
            del self._until[key]


def normalize_ip(ip: str) -> str:
    """One spelling per address; a string that is not an address is kept as it is."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def check_info(sub: str, conn_id: str, info: ConnectionInfo | None, tenant: str = "") -> None:
    """Refuse an ``info`` that describes another slot (a caller bug that would mislist it)."""
    if info is not None and (info.sub != sub or info.conn_id != conn_id or info.tenant != tenant):
        raise ValueError(
            "ConnectionInfo.sub, .tenant and .conn_id must match the slot being admitted"
        )


def matches(info: ConnectionInfo, sub: str | None, tenant: str | None) -> bool:
    """``info`` passes the optional ``sub`` and ``tenant`` filters of a listing."""
    return (sub is None or info.sub == sub) and (tenant is None or info.tenant == tenant)


def sort_connections(rows: Iterable[ConnectionInfo]) -> list[ConnectionInfo]:
    """One order on both engines: oldest connection first."""
    return sorted(rows, key=lambda c: (c.connected_at, c.sub, c.conn_id))


class Messaging(Protocol):
    """The messaging half of an engine (see :mod:`app.engine.base` for the guarantees)."""

    async def publish(self, event: ControlEvent) -> None: ...
    def subscribe(self, handler: ControlHandler) -> None: ...
    def on_message(self, handler: MessageHandler) -> None: ...
    async def send_to_worker(self, worker_id: str, message: str) -> None: ...
    async def publish_agent(self, tenant: str, agent_id: str, message: str) -> None: ...
    async def watch(self, tenant: str, agent_id: str) -> None: ...
    async def unwatch(self, tenant: str, agent_id: str) -> None: ...


class DelegatedMessaging:
    """Both engines hand their messaging methods to ``self._messaging``."""

    _messaging: Messaging

    async def publish(self, event: ControlEvent) -> None:
        await self._messaging.publish(event)

    def subscribe(self, handler: ControlHandler) -> None:
        self._messaging.subscribe(handler)

    def on_message(self, handler: MessageHandler) -> None:
        self._messaging.on_message(handler)

    async def send_to_worker(self, worker_id: str, message: str) -> None:
        await self._messaging.send_to_worker(worker_id, message)

    async def locate_agent(self, tenant: str, agent_id: str) -> tuple[str, str] | None:
        raise NotImplementedError  # each engine's own

    async def send_to_agent(self, tenant: str, agent_id: str, head: str, tail: str) -> bool:
        """The lookup, then the send (an engine that can fold the two overrides this)."""
        target = await self.locate_agent(tenant, agent_id)
        if target is None:
            return False
        worker, conn_id = target
        await self.send_to_worker(worker, head + json.dumps(conn_id) + tail)
        return True

    async def publish_agent(self, tenant: str, agent_id: str, message: str) -> None:
        await self._messaging.publish_agent(tenant, agent_id, message)

    async def watch(self, tenant: str, agent_id: str) -> None:
        await self._messaging.watch(tenant, agent_id)

    async def unwatch(self, tenant: str, agent_id: str) -> None:
        await self._messaging.unwatch(tenant, agent_id)
