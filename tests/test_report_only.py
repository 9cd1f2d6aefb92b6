"""Report-only rollout (issue 14, part 1) through real servers: the clients of the replaced,
unauthenticated hub are admitted unverified and reported until the deadline, then cut off."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import SECRET, make_token, redis_env
from tests.support.cli import run_cli
from tests.support.client import attempt, refused_socket
from tests.support.peer import Peer
from tests.support.server import HubProcess

StartHub = Callable[..., HubProcess]
HOUR = 3600


def _until(seconds: float) -> tuple[str, float]:
    moment = time.time() + seconds
    return datetime.fromtimestamp(moment, UTC).isoformat(), moment


def _report_only(endpoints: str, seconds: float = HOUR, **extra: str) -> tuple[dict[str, str], float]:
    until, moment = _until(seconds)
    return {"HUB_AUTH_REPORT_ONLY": endpoints, "HUB_AUTH_REPORT_ONLY_UNTIL": until, **extra}, moment


def _admin(server: HubProcess, tenant: str | None = None) -> httpx.AsyncClient:
    token = make_token(f"admin-{secrets.token_hex(3)}", ["admin"], ttl=600, tenant=tenant)
    return httpx.AsyncClient(base_url=server.http, headers={"Authorization": f"Bearer {token}"}, timeout=10)


async def _unverified(url: str, token: str | None = None, **kw: Any) -> Peer:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    peer = Peer(await websockets.connect(url, additional_headers=headers, **kw))
    peer.welcome = await peer.expect("welcome")
    assert peer.welcome["auth"] == "unverified", peer.welcome
    return peer


def _metric(server: HubProcess, name: str, **labels: str) -> float:
    text = httpx.get(f"{server.http}/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


def _log_events(server: HubProcess, event: str) -> list[dict[str, Any]]:
    found = []
    for line in server.log_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == event:
            found.append(record)
    return found


async def _stored(admin: httpx.AsyncClient, code: str, event: str) -> list[dict[str, Any]]:
    """The stored security events with ``code`` named ``event``, once there is one (they are
    written in batches)."""
    for _ in range(100):
        page = (await admin.get("/admin/security-events", params={"code": code})).json()
        rows = [e for e in page["events"] if e["event"] == event]
        if rows:
            return rows
        await asyncio.sleep(0.1)
    raise AssertionError(f"no stored {event} event with code {code}")


async def test_tokenless_and_expired_agents_are_admitted_unverified_and_reported(
    start_hub: StartHub,
) -> None:
    env, until = _report_only("agent")
    server = start_hub(env, name="report-only")
    url = f"{server.url}/ws/agent"

    missing = await attempt(url)
    assert missing.accepted, missing
    welcome = missing.messages[0]
    assert welcome["auth"] == "unverified" and welcome["would_refuse"] == "token_missing"
    assert welcome["tenant"] is None and welcome["sub"].startswith("unverified:")
    assert welcome["expires_at"] == int(until)  # the session ends with the report-only window

    expired_token = make_token("legacy-7", ttl=-120, jti="legacy-7-jti")
    expired = await attempt(url, token=expired_token)
    assert expired.accepted and expired.messages[0]["would_refuse"] == "token_expired", expired
    # A browser-style client offering hub.v1 with a mangled token: admitted, hub.v1 selected.
    mangled = await attempt(url, token="not.a-token", transport="subprotocol")
    assert mangled.accepted and mangled.subprotocol == "hub.v1", mangled
    assert mangled.messages[0]["would_refuse"] == "token_malformed"
    # A dashboard token on the agent endpoint: role_forbidden, relaxed too.
    wrong_role = await attempt(url, token=make_token("viewer", ["dashboard"]))
    assert wrong_role.messages[0]["would_refuse"] == "role_forbidden", wrong_role

    verified = await attempt(url, token=make_token("agent-ok"))
    assert verified.messages[0]["auth"] == "verified" and verified.messages[0]["would_refuse"] is None

    # Logged, stored as a security event, counted by code; the token itself nowhere.
    logged = _log_events(server, "ws.auth_would_refuse")
    assert {r["code"] for r in logged} >= {"token_missing", "token_expired", "token_malformed",
                                           "role_forbidden"}
    assert expired_token not in server.log_text()
    async with _admin(server) as admin:
        rows = await _stored(admin, "token_expired", "ws.auth_would_refuse")
        assert rows[0]["claimed_sub"] == "legacy-7" and rows[0]["endpoint"] == "/ws/agent"
        assert expired_token not in json.dumps(rows)
    assert _metric(server, "hub_auth_would_refuse_total", endpoint="agent", code="token_missing") == 1
    assert _metric(server, "hub_auth_would_refuse_total", endpoint="agent", code="token_expired") == 1
    started = _log_events(server, "hub.report_only")
    assert started and started[0]["endpoints"] == ["agent"] and started[0]["over"] is False
    # Not an authentication failure: a legacy fleet behind one address must not get it banned.
    assert _metric(server, "hub_auth_failures_total", reason="token_missing") == 0


async def test_enforced_checks_stay_enforced(start_hub: StartHub) -> None:
    """Only token and role codes are relaxed, and only on the listed endpoints."""
    origin = "https://console.example"
    env, _ = _report_only("agent", HUB_ALLOWED_ORIGINS=origin, HUB_MAX_CONNECTIONS_PER_USER="1")
    server = start_hub(env, name="report-only-enforced")
    agent_url, dashboard_url = f"{server.url}/ws/agent", f"{server.url}/ws/dashboard"
    good_origin = {"Origin": origin}

    # The dashboard endpoint is not listed: it enforces.
    dashboard = await attempt(dashboard_url, headers=good_origin)
    assert (dashboard.status, dashboard.code) == (401, "token_missing"), dashboard
    # Origin is always enforced.
    foreign = await attempt(agent_url, headers={"Origin": "https://evil.example"})
    assert (foreign.status, foreign.code) == (403, "origin_forbidden"), foreign
    # A revoked token is refused, not admitted unverified.
    jti = f"revoked-{secrets.token_hex(4)}"
    async with _admin(server) as admin:
        assert (await admin.post("/admin/revocations", json={"jti": jti})).status_code == 201
    revoked = await attempt(agent_url, token=make_token("agent-r", jti=jti), headers=good_origin)
    assert (revoked.status, revoked.code) == (401, "token_revoked"), revoked
    # A valid token is a verified user with its limits: the second connection is over them.
    held = await Peer.connect(agent_url, make_token("agent-l"), origin=origin)
    try:
        over = await attempt(agent_url, token=make_token("agent-l"), headers=good_origin)
        assert over.code == "connection_limit", over
    finally:
        await held.close()
    # Unverified connections are users of their own: many from one address are all admitted.
    peers = [await _unverified(agent_url, origin=origin) for _ in range(3)]
    assert len({p.welcome["sub"] for p in peers}) == 3
    for peer in peers:
        await peer.close()


async def test_unverified_clients_do_what_the_old_hub_allowed_within_no_tenant(
    start_hub: StartHub,
) -> None:
    env, _ = _report_only("agent,dashboard")
    server = start_hub(env, name="report-only-both")
    agent_url, dashboard_url = f"{server.url}/ws/agent", f"{server.url}/ws/dashboard"

    plain = await Peer.connect(agent_url, make_token("plain-agent"))
    tenant_agent = await Peer.connect(agent_url, make_token("tenant-agent", tenant="acme"))
    legacy_agent = await _unverified(agent_url)
    legacy_id = legacy_agent.welcome["sub"]
    legacy_dashboard = await _unverified(dashboard_url)
    tenant_dashboard = await Peer.connect(dashboard_url, make_token("acme-viewer", ["dashboard"],
                                                                    tenant="acme"))
    try:
        assert legacy_dashboard.welcome["roles"] == ["dashboard", "operator"]
        await legacy_dashboard.send(type="subscribe", agents="*", id=1)
        await legacy_dashboard.expect("subscribed", ref=1)
        await legacy_dashboard.expect("presence", agent_id="plain-agent", status="online")
        await legacy_dashboard.expect("presence", agent_id=legacy_id, status="online")
        await tenant_dashboard.send(type="subscribe", agents="*", id=2)
        await tenant_dashboard.expect("subscribed", ref=2)

        # Events of the unverified agent reach the no-tenant dashboards, never a tenant's.
        await legacy_agent.send(type="event", payload={"n": 1})
        got = await legacy_dashboard.expect("event", agent_id=legacy_id)
        assert got["payload"] == {"n": 1}
        await tenant_dashboard.quiet("event", agent_id=legacy_id)
        # The tenant's agent is invisible to the unverified dashboard: no presence, no command.
        await tenant_agent.send(type="event", payload={"secret": True})
        await legacy_dashboard.quiet("event", agent_id="tenant-agent")
        assert not [m for m in legacy_dashboard.seen if m.get("agent_id") == "tenant-agent"]
        await legacy_dashboard.send(type="command", agent_id="tenant-agent", payload={}, id=3)
        assert (await legacy_dashboard.expect("error", ref=3))["error"] == "agent_offline"
        # Commands work as they did on the old hub, and say who sent them.
        await legacy_dashboard.send(type="command", agent_id="plain-agent", payload={"do": 1}, id=4)
        await legacy_dashboard.expect("command.accepted", ref=4)
        command = await plain.expect("command")
        assert command["from"] == legacy_dashboard.welcome["sub"]
        # A tenant admin does not see unverified connections; a platform admin does.
        async with _admin(server, "acme") as acme, _admin(server) as platform:
            assert {c["sub"] for c in (await acme.get("/admin/connections")).json()} == {
                "tenant-agent", "acme-viewer"}
            subs = {c["sub"] for c in (await platform.get("/admin/connections")).json()}
            assert {legacy_id, legacy_dashboard.welcome["sub"]} <= subs
    finally:
        for peer in (plain, tenant_agent, legacy_agent, legacy_dashboard, tenant_dashboard):
            await peer.close()


async def test_a_good_refresh_turns_an_unverified_session_into_a_verified_one(
    start_hub: StartHub,
) -> None:
    env, _ = _report_only("agent")
    server = start_hub(env, name="report-only-refresh")
    agent_url = f"{server.url}/ws/agent"
    legacy = await _unverified(agent_url)
    watcher = await Peer.connect(f"{server.url}/ws/dashboard", make_token("watcher", ["dashboard"]))
    try:
        await watcher.send(type="subscribe", agents=["agent-up"], id=1)
        await watcher.expect("presence", agent_id="agent-up", status="offline")

        # A token for the wrong endpoint is refused; the session goes on unverified.
        await legacy.send(type="auth.refresh", token=make_token("agent-up", ["dashboard"]), id=1)
        assert (await legacy.expect("error", ref=1))["error"] == "role_forbidden"

        token = make_token("agent-up", ttl=600)
        await legacy.send(type="auth.refresh", token=token, id=2)
        refreshed = await legacy.expect("auth.refreshed", ref=2)
        assert refreshed["expires_at"] > time.time() + 500
        await watcher.expect("presence", agent_id="agent-up", status="online")
        await legacy.send(type="event", payload="after")
        assert (await watcher.expect("event", agent_id="agent-up"))["payload"] == "after"

        async with _admin(server) as admin:
            listed = (await admin.get("/admin/connections")).json()
            subs = [c["sub"] for c in listed if c["endpoint"] == "agent"]
            assert subs == ["agent-up"], listed  # the unverified identity's slot is gone
            assert _log_events(server, "ws.auth_upgraded")[0]["sub"] == "agent-up"
    finally:
        await legacy.close()
        await watcher.close()
    # And its slot is given back when it leaves.
    async with _admin(server) as admin:
        for _ in range(50):
            if not (await admin.get("/admin/connections", params={"sub": "agent-up"})).json():
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the upgraded connection's slot was not released")


@pytest.mark.redis
async def test_the_deadline_closes_unverified_sessions_and_enforces_without_restart(
    start_hub: StartHub, redis_url: str,
) -> None:
    env, until = _report_only("agent", 20, **redis_env(redis_url))
    server = start_hub(env, workers=2, name="report-only-deadline")
    pid = server.process.pid if server.process else None
    url = f"{server.url}/ws/agent"

    legacy = [await _unverified(url) for _ in range(4)]
    wrong_role = await _unverified(url, make_token("viewer-d", ["dashboard"]))
    upgraded = await _unverified(url)
    verified = await Peer.connect(url, make_token("agent-d", ttl=600))
    await upgraded.send(type="auth.refresh", token=make_token("agent-u", ttl=600), id=1)
    await upgraded.expect("auth.refreshed", ref=1)
    assert time.time() < until - 2, "the hub took too long to start for this test's deadline"
    # Still report-only: one more is admitted.
    assert (await attempt(url)).messages[0]["auth"] == "unverified"

    wait = until - time.time() + 5
    for peer in legacy:
        await peer.closed(4401, "token_missing", timeout=wait)
    await wrong_role.closed(4401, "role_forbidden", timeout=5)
    # Verified sessions, upgraded ones included, go on.
    for peer, ref in ((verified, 7), (upgraded, 8)):
        await peer.send(type="ping", id=ref)
        await peer.expect("pong", ref=ref)
    # From now on handshakes enforce, on the same processes.
    for _ in range(4):
        refused = await attempt(url)
        assert (refused.status, refused.code) == (401, "token_missing"), refused
    assert (await refused_socket(url, None)).close_code == 4401
    assert server.process is not None and server.process.pid == pid and server.process.poll() is None
    await verified.close()
    await upgraded.close()


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({"HUB_AUTH_REPORT_ONLY": "agent"}, "HUB_AUTH_REPORT_ONLY_UNTIL"),
        ({"HUB_AUTH_REPORT_ONLY": "agent", "HUB_AUTH_REPORT_ONLY_UNTIL": "2030-01-01T00:00:00"},
         "HUB_AUTH_REPORT_ONLY_UNTIL"),  # no time zone: not an instant
        ({"HUB_AUTH_REPORT_ONLY": "agent,admin", "HUB_AUTH_REPORT_ONLY_UNTIL": "2030-01-01T00:00:00Z"},
         "HUB_AUTH_REPORT_ONLY"),
    ],
)
def test_start_up_is_refused_without_a_deadline(
    tmp_path: Path, variables: dict[str, str], named: str
) -> None:
    result = run_cli(tmp_path, "serve", HUB_JWT_SECRET=SECRET, **variables)
    assert result.returncode != 0
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and named in lines[0], result.stderr
    assert "Traceback" not in result.stderr
