"""Tenants through real servers (issue 13, items 4 and 5): per-user state belongs to (tenant, sub),
and a tenant admin sees and acts on its own tenant only."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable

import httpx
import pytest

from tests.conftest import make_token, redis_env
from tests.support.client import attempt
from tests.support.peer import Peer
from tests.support.server import HubProcess

StartHub = Callable[..., HubProcess]


def _admin(server: HubProcess, tenant: str | None) -> httpx.AsyncClient:
    token = make_token(f"admin-{tenant}", ["admin"], ttl=600, tenant=tenant)
    return httpx.AsyncClient(base_url=server.http, headers={"Authorization": f"Bearer {token}"}, timeout=10)


async def _events_until(admin: httpx.AsyncClient, sub: str, code: str) -> list[dict[str, object]]:
    """The events of ``sub`` once one with ``code`` is stored (they are written in batches)."""
    for _ in range(100):
        events: list[dict[str, object]] = (await admin.get("/admin/security-events", params={"sub": sub})).json()["events"]
        if any(e["code"] == code for e in events):
            return events
        await asyncio.sleep(0.1)
    raise AssertionError(f"no {code} event stored for {sub}")


@pytest.fixture(params=["embedded", pytest.param("redis", marks=pytest.mark.redis)])
def tenant_hub(request: pytest.FixtureRequest, start_hub: StartHub) -> HubProcess:
    env = {"HUB_MAX_CONNECTIONS_PER_USER": "2"}
    if request.param == "redis":
        env |= redis_env(request.getfixturevalue("redis_url"))
    return start_hub(env, name=f"tenants-{request.param}")


async def test_connection_slots_belong_to_tenant_and_sub(tenant_hub: HubProcess) -> None:
    url = f"{tenant_hub.url}/ws/agent"
    held = [await Peer.connect(url, make_token("shared", tenant="a")) for _ in range(2)]
    try:
        third = await attempt(url, token=make_token("shared", tenant="a"))
        assert third.code == "connection_limit"
        # The same sub in another tenant, and without a tenant, is another user.
        for tenant in ("b", None):
            other = await attempt(url, token=make_token("shared", tenant=tenant))
            assert other.accepted, (tenant, other)
    finally:
        for peer in held:
            await peer.close()


async def test_tenant_admin_sees_and_acts_on_its_own_tenant_only(tenant_hub: HubProcess) -> None:
    url = f"{tenant_hub.url}/ws/agent"
    sub = f"bob-{secrets.token_hex(3)}"
    bob_a = await Peer.connect(url, make_token(sub, tenant="a"))
    bob_b = await Peer.connect(url, make_token(sub, tenant="b"))
    bob_none = await Peer.connect(url, make_token(sub))
    try:
        async with _admin(tenant_hub, "a") as admin_a, _admin(tenant_hub, None) as platform:
            listed = (await admin_a.get("/admin/connections")).json()
            assert {(c["sub"], c["tenant"]) for c in listed} == {(sub, "a")}
            assert (await admin_a.get("/admin/connections", params={"sub": sub, "tenant": "b"})).json() == [
                c for c in listed if c["sub"] == sub
            ]
            everyone = (await platform.get("/admin/connections", params={"sub": sub})).json()
            assert sorted(c["tenant"] for c in everyone) == ["", "a", "b"]

            # Bans are global: platform admins only.
            for method, path, body in (("GET", "/admin/bans", None),
                                       ("POST", "/admin/bans", {"cidr": "192.0.2.1"}),
                                       ("DELETE", "/admin/bans/x", None)):
                refused = await admin_a.request(method, path, json=body)
                assert refused.status_code == 403 and refused.json()["error"] == "role_forbidden"

            # A tenant admin's kick reaches its own tenant's bob only.
            assert (await admin_a.post(f"/admin/users/{sub}/disconnect")).status_code == 202
            await bob_a.closed(4403, "kicked")
            await bob_b.send(type="ping", id=1)
            assert (await bob_b.expect("pong"))["ref"] == 1

            # And its revocation too: bob of tenant b connects again, bob of tenant a does not.
            revoked = await admin_a.post("/admin/revocations", json={"sub": sub, "tenant": "b"})
            assert revoked.status_code == 201 and revoked.json()["tenant"] == "a"
            earlier = time.time() - 60
            assert (await attempt(url, token=make_token(sub, tenant="a", now=earlier, ttl=600))).code == "token_revoked"
            assert (await attempt(url, token=make_token(sub, tenant="b", now=earlier, ttl=600))).accepted
            await bob_b.send(type="ping", id=2)
            assert (await bob_b.expect("pong"))["ref"] == 2
            listed_revocations = (await admin_a.get("/admin/revocations")).json()
            assert [r["sub"] for r in listed_revocations] == [sub]
            # A jti is one row: another tenant's admin neither sees nor re-scopes its revocation.
            jti_a = await admin_a.post("/admin/revocations", json={"jti": f"jti-{sub}"})
            assert jti_a.status_code == 201 and jti_a.json()["tenant"] == "a"
            async with _admin(tenant_hub, "b") as admin_b:
                clash = await admin_b.post("/admin/revocations", json={"jti": f"jti-{sub}", "reason": "b"})
            assert clash.status_code == 422 and "a" not in clash.json().get("message", "").split()
            again = await admin_a.post("/admin/revocations", json={"jti": f"jti-{sub}"})
            assert again.status_code == 201 and again.json()["id"] == jti_a.json()["id"]

            # Security events: tenant a's refusal and kick are visible to a, not to b.
            events_a = await _events_until(admin_a, sub, "token_revoked")
            async with _admin(tenant_hub, "b") as admin_b:
                assert (await admin_b.get("/admin/revocations")).json() == []
                events_b = (await admin_b.get("/admin/security-events", params={"sub": sub})).json()["events"]
            assert all(e["tenant"] == "a" for e in events_a)
            assert events_b == []
    finally:
        for peer in (bob_a, bob_b, bob_none):
            await peer.close()
