"""The admin API through real servers: auth like the sockets, bans, revocations and kicks that
reach live connections on another process within a second, and durability across restarts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from tests.conftest import make_token, redis_env
from tests.support.client import attempt
from tests.support.peer import Peer
from tests.support.server import HubProcess

StartHub = Callable[..., HubProcess]
ADMIN = make_token("root", ["admin"], ttl=3600)


def _admin(server: HubProcess, token: str = ADMIN) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.http, headers={"Authorization": f"Bearer {token}"}, timeout=10)


async def _closed_within(peer: Peer, seconds: float) -> tuple[int, str]:
    started = time.monotonic()
    with pytest.raises(websockets.ConnectionClosed) as info:
        while True:
            await asyncio.wait_for(peer.ws.recv(), seconds)
    assert time.monotonic() - started < seconds
    assert info.value.rcvd is not None
    return info.value.rcvd.code, info.value.rcvd.reason


@pytest.fixture
def cluster(start_hub: StartHub, redis_url: str, tmp_path: Path) -> tuple[HubProcess, HubProcess]:
    env = redis_env(redis_url, HUB_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}")
    return start_hub(env, name="a"), start_hub(env, name="b")


async def test_admin_api_refuses_like_the_sockets(hub: HubProcess) -> None:
    cases: list[tuple[dict[str, str], int, str]] = [
        ({}, 401, "token_missing"),
        ({"Authorization": "Bearer nope"}, 401, "token_malformed"),
        ({"Authorization": f"Bearer {make_token('root', ['admin'], ttl=-5)}"}, 401, "token_expired"),
        ({"Authorization": f"Bearer {make_token('op', ['dashboard', 'operator'])}"}, 403, "role_forbidden"),
    ]
    async with httpx.AsyncClient(base_url=hub.http) as client:
        for headers, status, code in cases:
            response = await client.get("/admin/bans", headers=headers)
            assert response.status_code == status, (headers, response.text)
            assert response.json()["error"] == code
        ok = await client.get("/admin/bans", headers={"Authorization": f"Bearer {ADMIN}"})
        assert ok.status_code == 200


async def test_validation_and_not_found(hub: HubProcess) -> None:
    async with _admin(hub) as client:
        assert (await client.post("/admin/bans", json={"cidr": "10.0.0.0/33"})).status_code == 422
        assert (await client.post("/admin/bans", json={})).status_code == 422
        assert (await client.post("/admin/revocations", json={"jti": "a", "sub": "b"})).status_code == 422
        missing = await client.delete("/admin/bans/does-not-exist")
        assert missing.status_code == 404 and missing.json()["error"] == "not_found"


@pytest.mark.redis
async def test_ban_on_one_process_closes_and_refuses_on_the_other(cluster: tuple[HubProcess, HubProcess]) -> None:
    a, b = cluster
    victim = await Peer.connect(f"{b.url}/ws/agent", make_token("ban-victim"), local_addr=("127.0.0.2", 0))
    bystander = await Peer.connect(f"{b.url}/ws/agent", make_token("ban-bystander"))
    async with _admin(a) as client:
        created = await client.post("/admin/bans", json={"cidr": "127.0.0.2", "reason": "test"})
        assert created.status_code == 201, created.text
        ban = created.json()
        assert ban["cidr"] == "127.0.0.2/32" and ban["created_by"] == "root"
        assert await _closed_within(victim, 1.5) == (4403, "ip_banned")
        refused = await attempt(f"{b.url}/ws/agent", token=make_token("ban-victim"), local_addr=("127.0.0.2", 0))
        assert (refused.status, refused.code) == (403, "ip_banned")
        await bystander.send(type="ping", id="x")
        await bystander.expect("pong", ref="x")
        assert [x["id"] for x in (await client.get("/admin/bans")).json()] == [ban["id"]]
        assert (await client.delete(f"/admin/bans/{ban['id']}")).status_code == 204
    # b lifts the ban when the event reaches it through Redis: retry rather than guess how long.
    deadline = time.monotonic() + 5
    while not (again := await attempt(f"{b.url}/ws/agent", token=make_token("ban-victim"),
                                      local_addr=("127.0.0.2", 0))).accepted:
        assert again.code == "ip_banned" and time.monotonic() < deadline, again
        await asyncio.sleep(0.2)


@pytest.mark.redis
async def test_revocation_by_jti_and_by_sub_reach_live_connections(cluster: tuple[HubProcess, HubProcess]) -> None:
    a, b = cluster
    revoked_token = make_token("rev-1", jti="jti-revoked")
    peer = await Peer.connect(f"{b.url}/ws/agent", revoked_token)
    other = await Peer.connect(f"{b.url}/ws/agent", make_token("rev-1", jti="jti-kept"))
    async with _admin(a) as client:
        response = await client.post("/admin/revocations", json={"jti": "jti-revoked", "reason": "leaked"})
        assert response.status_code == 201, response.text
        assert await _closed_within(peer, 1.5) == (4403, "token_revoked")
        refused = await attempt(f"{a.url}/ws/agent", token=revoked_token)
        assert (refused.status, refused.code) == (401, "token_revoked")
        # A refresh to a revoked token is refused too; the session goes on under its own token.
        await other.send(type="auth.refresh", id="r", token=revoked_token)
        assert (await other.expect("error", ref="r"))["error"] == "token_revoked"
        # Everything of the sub issued before now.
        await asyncio.sleep(1.1)
        response = await client.post("/admin/revocations", json={"sub": "rev-1"})
        assert response.status_code == 201
        assert await _closed_within(other, 1.5) == (4403, "token_revoked")
        # `iat` has whole seconds: a token of the cut-off's own second counts as issued before it.
        await asyncio.sleep(1.1)
        fresh = await attempt(f"{b.url}/ws/agent", token=make_token("rev-1"))
        assert fresh.accepted
        listed = (await client.get("/admin/revocations")).json()
        assert {(r["jti"], r["sub"]) for r in listed} == {("jti-revoked", None), (None, "rev-1")}


@pytest.mark.redis
async def test_disconnect_kicks_every_connection_of_the_user(cluster: tuple[HubProcess, HubProcess]) -> None:
    a, b = cluster
    peers = [await Peer.connect(f"{s.url}/ws/agent", make_token("kick-me")) for s in (a, b)]
    keep = await Peer.connect(f"{b.url}/ws/agent", make_token("kick-not-me"))
    async with _admin(a) as client:
        listed = (await client.get("/admin/connections", params={"sub": "kick-me"})).json()
        assert len(listed) == 2 and {c["sub"] for c in listed} == {"kick-me"}
        assert len({c["worker"] for c in listed}) == 2
        response = await client.post("/admin/users/kick-me/disconnect")
        assert response.status_code == 202
    for peer in peers:
        assert await _closed_within(peer, 1.5) == (4403, "kicked")
    await keep.send(type="ping", id="k")
    await keep.expect("pong", ref="k")


@pytest.mark.redis
async def test_bans_and_revocations_survive_a_restart(start_hub: StartHub, redis_url: str, tmp_path: Path) -> None:
    env = redis_env(redis_url, HUB_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'durable.db'}")
    a, b = start_hub(env, name="a"), start_hub(env, name="b")
    async with _admin(a) as client:
        assert (await client.post("/admin/bans", json={"cidr": "127.0.0.2/32"})).status_code == 201
        assert (await client.post("/admin/revocations", json={"jti": "gone"})).status_code == 201
    a.stop()
    b.stop()
    # A fresh Redis prefix too: the state must come from the database, not from Redis.
    env2 = {**env, "HUB_REDIS_PREFIX": env["HUB_REDIS_PREFIX"] + "x"}
    for server in (start_hub(env2, name="a2"), start_hub(env2, name="b2")):
        banned = await attempt(f"{server.url}/ws/agent", token=make_token("x"), local_addr=("127.0.0.2", 0))
        assert banned.code == "ip_banned"
        revoked = await attempt(f"{server.url}/ws/agent", token=make_token("y", jti="gone"))
        assert revoked.code == "token_revoked"


async def test_security_events_are_queryable_newest_first_with_pages(start_hub: StartHub) -> None:
    server = start_hub()
    tokens = [make_token(f"ev-{i}", ttl=-5) for i in range(5)]
    for token in tokens:
        await attempt(f"{server.url}/ws/agent", token=token)
    await attempt(f"{server.url}/ws/agent", token=make_token("ev-role", ["dashboard"]))
    async with _admin(server) as client:
        events: list[dict[str, Any]] = []
        for _ in range(50):
            page = (await client.get("/admin/security-events", params={"code": "token_expired"})).json()
            events = page["events"]
            if len(events) == 5:
                break
            await asyncio.sleep(0.1)
        assert [e["claimed_sub"] for e in events] == [f"ev-{i}" for i in reversed(range(5))]
        assert all(e["code"] == "token_expired" and e["endpoint"] == "/ws/agent" for e in events)
        first = (await client.get("/admin/security-events", params={"code": "token_expired", "limit": 2})).json()
        second = (await client.get("/admin/security-events",
                                   params={"code": "token_expired", "limit": 2, "before": first["next"]})).json()
        assert [e["claimed_sub"] for e in first["events"] + second["events"]] == ["ev-4", "ev-3", "ev-2", "ev-1"]
        by_sub = (await client.get("/admin/security-events", params={"sub": "ev-role"})).json()["events"]
        assert [e["code"] for e in by_sub] == ["role_forbidden"]
        assert by_sub[0]["verified_sub"] == "ev-role"
        text = (await client.get("/admin/security-events", params={"limit": 500})).text
    for token in tokens:
        assert token.split(".")[2] not in text
