"""Client addresses: who is really connecting, and whether a network list contains them."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from app.config import IPNetwork

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_ip(value: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(value.strip())
    except ValueError:
        return None
    # An IPv4-mapped IPv6 peer (::ffff:1.2.3.4) is the IPv4 client; bans and limits key on that.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class NetworkSet:
    """A fixed list of networks with a membership test."""

    __slots__ = ("_networks",)

    def __init__(self, networks: Iterable[IPNetwork]) -> None:
        self._networks = tuple(networks)

    def __bool__(self) -> bool:
        return bool(self._networks)

    def __contains__(self, address: IPAddress | None) -> bool:
        if address is None:
            return False
        return any(address in network for network in self._networks)


def client_ip(peer: str | None, forwarded_for: Sequence[str], trusted: NetworkSet) -> str:
    """The client's address.

    The socket peer, unless the peer is a trusted proxy: then the right-most address of
    ``X-Forwarded-For`` that is not itself a trusted proxy (anything left of it could have been
    written by the client). A peer we cannot parse is returned as is; an unparsable forwarded
    entry stops the walk, so a client cannot smuggle a value past it.
    """
    peer_address = parse_ip(peer) if peer else None
    if peer_address is None:
        return peer or "unknown"
    if not trusted or peer_address not in trusted:
        return str(peer_address)
    hops = [hop for header in forwarded_for for hop in header.split(",")]
    for hop in reversed(hops):
        address = parse_ip(hop)
        if address is None:
            break
        if address not in trusted:
            return str(address)
    return str(peer_address)
