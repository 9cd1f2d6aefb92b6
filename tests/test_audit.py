"""The audit trail of admin actions (issue 14, part 3) through real servers: every admin request
that changes or tries to change state is stored with who, what, on what, how it ended and from
where; tenant admins read their tenant's entries; the trail survives restarts on SQLite and
PostgreSQL; ``hubctl audit`` reads it."""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.conftest import make_token
from tests.support.peer import Peer
from tests.support.postgres import pg_server_for_tests
from tests.support.server import HubProcess
from tests.test_cli_admin import hubctl

StartHub = Callable[..., HubProcess]


def _client(server: HubProcess, token: str | None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(base_url=server.http, headers=headers, timeout=10)


def _admin_token(sub: str, tenant: str | None = None) -> str:
    return make_token(sub, ["admin"], ttl=600, tenant=tenant)


async def _entries(client: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    response = await client.get("/admin/audit", params=params)
    assert response.status_code == 200, response.text
    entries: list[dict[str, Any]] = response.json()["entries"]
    return entries


async def test_every_admin_action_and_refused_attempt_is_recorded(start_hub: StartHub) -> None:
    server = start_hub(name=f"audit-{secrets.token_hex(3)}")
    root = f"root-{secrets.token_hex(3)}"
    async with _client(server, _admin_token(root)) as admin, \
            _client(server, _admin_token("acme-admin", "acme")) as acme, \
            _client(server, None) as anonymous, \
            _client(server, make_token("just-an-agent")) as agent:
        ban = await admin.post("/admin/bans", json={"cidr": "198.51.100.7/24", "reason": "x"})
        assert ban.status_code == 201
        ban_id = ban.json()["id"]
        assert (await admin.delete(f"/admin/bans/{ban_id}")).status_code == 204
        assert (await admin.delete(f"/admin/bans/{ban_id}")).status_code == 404
        assert (await admin.post("/admin/revocations", json={"jti": "j-1"})).status_code == 201
        peer = await Peer.connect(f"{server.url}/ws/agent", make_token("spiffe://x/agent-7"))
        kicked = await admin.post(f"/admin/users/{quote('spiffe://x/agent-7', safe='')}/disconnect")
        assert kicked.status_code == 202
        await peer.closed(4403, "kicked")
        assert (await admin.post("/admin/bans", json={"cidr": "0.0.0.0/0"})).status_code == 422
        pasted = make_token("leaked", ttl=600)
        assert (await admin.post("/admin/bans", json={"cidr": pasted})).status_code == 422
        # Refused before, or at, the token check: recorded too.
        assert (await anonymous.post("/admin/bans", json={"cidr": "192.0.2.1"})).status_code == 401
        assert (await acme.post("/admin/bans", json={"cidr": "192.0.2.2"})).status_code == 403
        assert (await agent.post("/admin/users/bob/disconnect")).status_code == 403
        assert (await acme.post("/admin/users/carol/disconnect")).status_code == 202
        # Reads are not audited.
        for path in ("/admin/bans", "/admin/revocations", "/admin/connections", "/admin/audit"):
            assert (await admin.get(path)).status_code == 200

        # Stored before each answer was sent: all there at once, no waiting.
        entries = await _entries(admin)
        assert len(entries) == 11, entries
        got = [(e["actor"], e["tenant"], e["action"], e["target"], e["outcome"]) for e in reversed(entries)]
        assert got == [
            (root, None, "ban", "198.51.100.7/24", "ok"),
            (root, None, "unban", ban_id, "ok"),
            (root, None, "unban", ban_id, "not_found"),
            (root, None, "revoke", "jti:j-1", "ok"),
            (root, None, "disconnect", "spiffe://x/agent-7", "ok"),
            (root, None, "ban", "0.0.0.0/0", "would_lock_out"),
            (root, None, "ban", got[6][3], "invalid_message"),
            (None, None, "ban", "192.0.2.1", "token_missing"),
            ("acme-admin", "acme", "ban", "192.0.2.2", "role_forbidden"),
            ("just-an-agent", None, "disconnect", "bob", "role_forbidden"),
            ("acme-admin", "acme", "disconnect", "carol", "ok"),
        ]
        assert pasted not in json.dumps(entries) and "[redacted" in got[6][3]
        assert {e["client_ip"] for e in entries} == {"127.0.0.1"}
        stamps = [datetime.fromisoformat(e["at"]) for e in entries]
        assert stamps == sorted(stamps, reverse=True)  # newest first

        # Filters and paging.
        assert [e["outcome"] for e in await _entries(admin, action="unban")] == ["not_found", "ok"]
        assert {e["actor"] for e in await _entries(admin, actor="acme-admin")} == {"acme-admin"}
        future = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
        assert await _entries(admin, since=future) == []
        first = (await admin.get("/admin/audit", params={"limit": 4})).json()
        second = (await admin.get("/admin/audit", params={"limit": 4, "before": first["next"]})).json()
        assert [e["id"] for e in first["entries"] + second["entries"]] == [e["id"] for e in entries[:8]]
        assert (await admin.get("/admin/audit", params={"action": "drop"})).status_code == 422
        assert (await admin.get("/admin/audit", params={"before": "garbage"})).status_code == 422

        # A tenant admin reads its own tenant's entries only.
        assert [(e["action"], e["outcome"]) for e in await _entries(acme)] == [
            ("disconnect", "ok"), ("ban", "role_forbidden")]
        assert await _entries(acme, actor=root) == []

    text = httpx.get(f"{server.http}/metrics", timeout=5).text
    assert 'hub_admin_actions_total{action="ban",outcome="would_lock_out"} 1.0' in text

    # hubctl audit: the same entries, filtered.
    code, page = hubctl("audit", "--action", "revoke", "--url", server.http)
    assert code == 0 and [e["target"] for e in page["entries"]] == ["jti:j-1"]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def database_env(request: pytest.FixtureRequest) -> AsyncIterator[dict[str, str]]:
    if request.param == "sqlite":
        yield {}
        return
    async with pg_server_for_tests() as pg:
        url = await pg.create_database()
        try:
            yield {"HUB_DATABASE_URL": url}
        finally:
            await pg.drop_database(url)


async def test_entries_survive_a_restart(start_hub: StartHub, database_env: dict[str, str]) -> None:
    name = f"audit-restart-{secrets.token_hex(3)}"
    first = start_hub(database_env, name=name)
    async with _client(first, _admin_token("restart-admin")) as admin:
        assert (await admin.post("/admin/revocations", json={"sub": "mallory"})).status_code == 201
    first.stop()
    second = start_hub(database_env, name=name)  # the same database
    async with _client(second, _admin_token("other-admin")) as admin:
        entries = await _entries(admin)
    assert [(e["actor"], e["action"], e["target"], e["outcome"]) for e in entries] == [
        ("restart-admin", "revoke", "sub:mallory", "ok")]


async def test_an_entry_the_database_refuses_does_not_change_the_answer(start_hub: StartHub) -> None:
    name = f"audit-broken-{secrets.token_hex(3)}"
    server = start_hub(name=name)
    with sqlite3.connect(server.workdir / f"{name}.db") as db:
        db.execute("DROP TABLE admin_audit")
    async with _client(server, _admin_token("ops-broken")) as admin:
        assert (await admin.post("/admin/users/nobody/disconnect")).status_code == 202
    failed = [json.loads(line) for line in server.log_text().splitlines() if "admin.audit_failed" in line]
    assert failed and failed[0]["actor"] == "ops-broken" and failed[0]["target"] == "nobody"
    assert "hub_admin_audit_failures_total 1.0" in httpx.get(f"{server.http}/metrics", timeout=5).text
