"""Client addresses: who is really connecting, and whether a network list contains them.

Guarantees:

- An IPv4-mapped IPv6 address (``::ffff:a.b.c.d``) is the IPv4 address ``a.b.c.d`` everywhere, and
  a network inside ``::ffff:0:0/96`` is the matching IPv4 network (``::ffff:127.0.0.0/120`` is
  ``127.0.0.0/24``), so a ban spelled either way covers the client.
- ``X-Forwarded-For`` entries may carry a port (``203.0.113.7:5123``, ``[2001:db8::1]:443``).
- :func:`limit_key` is what per-address limits count: the address for IPv4, its network of the
  configured prefix length for IPv6 (one host owns a whole /64).
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable, Sequence

from app.config import IPNetwork

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_BRACKETED = re.compile(r"^\[([0-9A-Fa-f:.]+)\](?::\d{1,5})?$")
_V4_PORT = re.compile(r"^(\d{1,3}(?:\.\d{1,3}){3}):\d{1,5}$")


# Every handshake parses its peer's address (and counts it by its limit key): a reconnect storm
# comes from the same addresses again and again, so recent answers are kept. Only values short
# enough to be an address with a port are: a long header value is parsed, not stored.
_CACHE_SIZE = 4096
_CACHED_CHARS = 64


def parse_ip(value: str) -> IPAddress | None:
    """An address, or None. Accepts a port after an IPv4 address or a bracketed IPv6 one."""
    parsed = _parse_text(value)
    return parsed[0] if parsed is not None else None


def _parse_text(value: str) -> tuple[IPAddress, str] | None:
    return _parsed_cached(value) if len(value) <= _CACHED_CHARS else _parsed(value)


def _parsed(value: str) -> tuple[IPAddress, str] | None:
    """The address in ``value`` and its canonical text, or None."""
    text = value.strip()
    if (match := _BRACKETED.match(text)) or (match := _V4_PORT.match(text)):
        text = match.group(1)
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    # An IPv4-mapped IPv6 peer (::ffff:1.2.3.4) is the IPv4 client; bans and limits key on that.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address, str(address)


_parsed_cached = functools.lru_cache(maxsize=_CACHE_SIZE)(_parsed)


def normalize_network(network: IPNetwork) -> IPNetwork:
    """``network``, with an IPv4-mapped IPv6 network given as the IPv4 network it means."""
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96 and network.subnet_of(_MAPPED):
        mapped = network.network_address.ipv4_mapped
        assert mapped is not None
        return ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return network


def parse_network(value: str) -> IPNetwork:
    """An address (a /32 or /128) or CIDR, normalised; raises ValueError."""
    return normalize_network(ipaddress.ip_network(value.strip(), strict=False))


def limit_key(ip: str, ipv6_prefix_length: int) -> str:
    """What per-address limits and automatic bans count for ``ip``: the IPv4 address itself, or
    the IPv6 address's ``/ipv6_prefix_length`` network (``2001:db8:1:2::/64``)."""
    if len(ip) <= _CACHED_CHARS:
        return _limit_key_cached(ip, ipv6_prefix_length)
    return _limit_key(ip, ipv6_prefix_length)


def _limit_key(ip: str, ipv6_prefix_length: int) -> str:
    address = parse_ip(ip)
    if isinstance(address, ipaddress.IPv6Address) and ipv6_prefix_length < 128:
        return str(ipaddress.IPv6Network((address, ipv6_prefix_length), strict=False))
    return str(address) if address is not None else ip


_limit_key_cached = functools.lru_cache(maxsize=_CACHE_SIZE)(_limit_key)


class NetworkSet:
    """A fixed list of networks with a membership test."""

    __slots__ = ("_contains", "_networks")

    def __init__(self, networks: Iterable[IPNetwork]) -> None:
        self._networks = tuple(normalize_network(n) for n in networks)
        # The list never changes, so an address's answer does not either.
        self._contains = functools.lru_cache(maxsize=_CACHE_SIZE)(self._search)

    def __bool__(self) -> bool:
        return bool(self._networks)

    def __contains__(self, address: IPAddress | None) -> bool:
        if address is None or not self._networks:
            return False
        return self._contains(address)

    def _search(self, address: IPAddress) -> bool:
        return any(address in network for network in self._networks)


def client_ip(peer: str | None, forwarded_for: Sequence[str], trusted: NetworkSet) -> str:
    """The client's address.

    The socket peer, unless the peer is a trusted proxy: then the right-most address of
    ``X-Forwarded-For`` that is not itself a trusted proxy (anything left of it could have been
    written by the client). A peer we cannot parse is returned as is; an unparsable forwarded
    entry stops the walk, so a client cannot smuggle a value past it.
    """
    parsed = _parse_text(peer) if peer else None
    if parsed is None:
        return peer or "unknown"
    peer_address, peer_text = parsed
    if not trusted or peer_address not in trusted:
        return peer_text
    hops = [hop for header in forwarded_for for hop in header.split(",")]
    for hop in reversed(hops):
        address = parse_ip(hop)
        if address is None:
            break
        if address not in trusted:
            return str(address)
    return str(peer_address)
