"""Small rules both engines apply identically to limits and connection listings."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from app.engine.base import ConnectionInfo


def normalize_ip(ip: str) -> str:
    """One spelling per address; a string that is not an address is kept as it is."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def check_info(sub: str, conn_id: str, info: ConnectionInfo | None) -> None:
    """Refuse an ``info`` that describes another slot (a caller bug that would mislist it)."""
    if info is not None and (info.sub != sub or info.conn_id != conn_id):
        raise ValueError("ConnectionInfo.sub and .conn_id must match the slot being admitted")


def sort_connections(rows: Iterable[ConnectionInfo]) -> list[ConnectionInfo]:
    """One order on both engines: oldest connection first."""
    return sorted(rows, key=lambda c: (c.connected_at, c.sub, c.conn_id))
