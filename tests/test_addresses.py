"""Client addresses through real servers (issue 13, items 10, 11 and 12): IPv4-mapped bans, IPv6
clients counted by their /64, ports in X-Forwarded-For, and bans that would lock everyone out."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from tests.conftest import make_token
from tests.support.client import attempt
from tests.support.server import HubProcess

StartHub = Callable[..., HubProcess]
ADMIN = make_token("root-addr", ["admin"], ttl=3600)
BAD = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"  # well formed, wrong signature


def _admin(server: HubProcess, **headers: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=server.http, headers={"Authorization": f"Bearer {ADMIN}", **headers}, timeout=10
    )


async def test_ipv4_mapped_bans_cover_the_ipv4_client(start_hub: StartHub) -> None:
    hub = start_hub({"HUB_BANNED_CIDRS": "::ffff:127.0.0.12"}, name="mapped")
    url = f"{hub.url}/ws/agent"
    assert (await attempt(url, token=make_token("m-0"), local_addr=("127.0.0.12", 0))).code == "ip_banned"
    async with _admin(hub) as client:
        one = await client.post("/admin/bans", json={"cidr": "::ffff:127.0.0.11"})
        assert one.status_code == 201 and one.json()["cidr"] == "127.0.0.11/32"
        net = await client.post("/admin/bans", json={"cidr": "::ffff:127.0.0.16/124"})
        assert net.status_code == 201 and net.json()["cidr"] == "127.0.0.16/28"
    for address in ("127.0.0.11", "127.0.0.20"):
        refused = await attempt(url, token=make_token("m-1"), local_addr=(address, 0))
        assert refused.status == 403 and refused.code == "ip_banned", address
    assert (await attempt(url, token=make_token("m-2"), local_addr=("127.0.0.13", 0))).accepted


async def test_ipv6_clients_are_counted_by_their_64_and_ports_are_read_off(start_hub: StartHub) -> None:
    hub = start_hub(
        {"HUB_TRUSTED_PROXIES": "127.0.0.1", "HUB_AUTH_FAILURES_BEFORE_BAN": "5"}, name="v6"
    )
    url = f"{hub.url}/ws/agent"

    async def bad_from(forwarded: str) -> str | None:
        return (await attempt(url, token=BAD, headers={"X-Forwarded-For": forwarded})).code

    # Five /128s of one /64 are one client: the fifth failure bans the whole /64.
    for n in range(1, 6):
        assert await bad_from(f"2001:db8:1:2::{n:x}") == "token_invalid"
    assert await bad_from("2001:db8:1:2:ffff::1") == "ip_banned"
    assert await bad_from("[2001:db8:1:3::1]:443") == "token_invalid"  # another /64

    # A proxy that writes ip:port: each client is itself, not the proxy.
    for port in range(5):
        assert await bad_from(f"203.0.113.7:{5123 + port}") == "token_invalid"
    assert await bad_from("203.0.113.7:1") == "ip_banned"
    assert await bad_from("203.0.113.8:80") == "token_invalid"
    good = await attempt(url, token=make_token("v6-ok"), headers={"X-Forwarded-For": "203.0.113.9:80"})
    assert good.accepted
    assert "203.0.113.7" in hub.log_text() and "203.0.113.7:5123" not in hub.log_text()


async def test_bans_that_would_lock_everyone_out_are_refused(start_hub: StartHub) -> None:
    hub = start_hub({"HUB_TRUSTED_PROXIES": "127.0.0.1"}, name="lockout")
    async with _admin(hub) as client:
        for cidr in ("0.0.0.0/0", "::/0", "::ffff:0.0.0.0/96", "127.0.0.1", "127.0.0.0/8", "::ffff:127.0.0.1"):
            refused = await client.post("/admin/bans", json={"cidr": cidr})
            assert refused.status_code == 422, (cidr, refused.text)
            assert refused.json()["error"] == "would_lock_out"
        assert (await client.post("/admin/bans", json={"cidr": "127.0.0.99"})).status_code == 201
    # Behind the trusted proxy the caller is the forwarded address.
    async with _admin(hub, **{"X-Forwarded-For": "198.51.100.7"}) as client:
        refused = await client.post("/admin/bans", json={"cidr": "198.51.100.0/24"})
        assert refused.status_code == 422 and refused.json()["error"] == "would_lock_out"
        assert (await client.post("/admin/bans", json={"cidr": "127.0.0.1"})).status_code == 201
        assert (await client.get("/admin/bans")).status_code == 200
