"""Handshake decisions without a socket: where the token travels, who the client is."""

from __future__ import annotations

import ipaddress

import pytest

from app.netaddr import NetworkSet, client_ip
from app.roles import Endpoint, may_command, may_connect
from app.transports import TokenSearchError, find_token

TRUSTED = NetworkSet([ipaddress.ip_network("10.0.0.0/8")])


def test_header_first_then_subprotocol_then_query() -> None:
    assert find_token({"authorization": "Bearer a.b.c"}, ["hub.v1", "bearer.x.y.z"], b"token=q.q.q",
                      True) == ("a.b.c", "header")
    assert find_token({}, ["hub.v1", "bearer.x.y.z"], b"token=q.q.q", True) == ("x.y.z", "subprotocol")
    assert find_token({}, ["hub.v1"], b"a=1&token=q.q.q", True) == ("q.q.q", "query")
    assert find_token({}, [], b"token=q.q.q", False) is None
    assert find_token({}, ["hub.v1"], b"", True) is None


@pytest.mark.parametrize(
    ("headers", "protocols", "query"),
    [
        ({"authorization": "Basic abc"}, [], b""),
        ({"authorization": "Bearer "}, [], b""),
        ({}, ["bearer.a.b.c", "bearer.d.e.f"], b""),
        ({}, [], b"token=a.b.c&token=d.e.f"),
        ({}, [], b"token=a%2Eb.c"),
    ],
)
def test_unusable_transport_is_malformed(headers: dict[str, str], protocols: list[str], query: bytes) -> None:
    with pytest.raises(TokenSearchError):
        find_token(headers, protocols, query, True)


def test_encoded_parameter_name_is_not_a_token() -> None:
    assert find_token({}, [], b"%74oken=a.b.c", True) is None
    assert find_token({}, [], b"xtoken=a.b.c", True) is None


def test_client_ip_ignores_forwarded_for_from_untrusted_peers() -> None:
    assert client_ip("127.0.0.1", ["9.9.9.9"], NetworkSet([])) == "127.0.0.1"
    assert client_ip("192.0.2.1", ["9.9.9.9"], TRUSTED) == "192.0.2.1"


def test_client_ip_takes_rightmost_untrusted_hop() -> None:
    assert client_ip("10.0.0.1", ["1.1.1.1, 9.9.9.9"], TRUSTED) == "9.9.9.9"
    assert client_ip("10.0.0.1", ["1.1.1.1, 9.9.9.9, 10.0.0.7"], TRUSTED) == "9.9.9.9"
    assert client_ip("10.0.0.1", ["1.1.1.1", "9.9.9.9"], TRUSTED) == "9.9.9.9"
    assert client_ip("10.0.0.1", ["10.0.0.2"], TRUSTED) == "10.0.0.1"
    assert client_ip("10.0.0.1", ["1.1.1.1, garbage"], TRUSTED) == "10.0.0.1"
    assert client_ip("::ffff:10.0.0.1", ["2001:db8::1"], TRUSTED) == "2001:db8::1"


def test_roles_fit_endpoints() -> None:
    assert may_connect({"agent"}, Endpoint.AGENT)
    assert not may_connect({"agent"}, Endpoint.DASHBOARD)
    assert may_connect({"dashboard", "operator"}, Endpoint.DASHBOARD)
    assert not may_connect({"agent", "dashboard"}, Endpoint.AGENT)
    assert not may_connect({"operator"}, Endpoint.DASHBOARD)
    assert may_command({"dashboard", "operator"}) and not may_command({"dashboard"})
