"""IP bans as every handshake sees them: configured CIDRs plus operators' bans, in memory.

Operators' bans are loaded from the store at start and kept current by control events, so the
check costs no I/O. Automatic bans (repeated failures) live in the engine instead, because every
worker must count the same failures.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from app.config import IPNetwork
from app.netaddr import IPAddress, NetworkSet, parse_ip, parse_network


class BanList:
    """Configured networks (for ever) and dynamic ones (by id, with an optional expiry)."""

    def __init__(self, configured: Iterable[IPNetwork], clock: Callable[[], float] = time.time) -> None:
        self._configured = NetworkSet(configured)
        self._dynamic: dict[str, tuple[IPNetwork, float | None]] = {}
        self._clock = clock

    def add(self, ban_id: str, cidr: str, expires_at: float | None = None) -> None:
        self._dynamic[ban_id] = (parse_network(cidr), expires_at)

    def replace(self, bans: Iterable[tuple[str, str, float | None]]) -> None:
        """Swap in the operators' bans as ``(id, cidr, expires_at)`` (a reload from the store)."""
        self._dynamic = {
            ban_id: (parse_network(cidr), expires)
            for ban_id, cidr, expires in bans
        }

    def remove(self, ban_id: str) -> None:
        self._dynamic.pop(ban_id, None)

    def is_banned(self, ip: str | IPAddress | None) -> bool:
        address = parse_ip(ip) if isinstance(ip, str) else ip
        if address is None:
            return False
        if address in self._configured:
            return True
        if not self._dynamic:
            return False
        now = self._clock()
        return any(
            address in network and (expires is None or expires > now)
            for network, expires in self._dynamic.values()
        )
