"""Subscribing to a large fleet, and bursts within the limits (issue 13, item 1), on both engines:
1,000 agents online, dashboards subscribing to "*" and to 1,000 ids are never closed
`slow_consumer`, and get the presence of every agent (as `presence.snapshot` batches)."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from tests.conftest import make_token, redis_env
from tests.support.server import HubProcess

StartHub = Callable[..., HubProcess]
FLEET = 1000
BATCH = 100


@pytest.fixture(params=["embedded", pytest.param("redis", marks=pytest.mark.redis)])
def fleet_hub(request: pytest.FixtureRequest, start_hub: StartHub) -> HubProcess:
    env: dict[str, str] = {}
    if request.param == "redis":
        env = redis_env(request.getfixturevalue("redis_url"))
    return start_hub(env, name=f"fleet-{request.param}")


async def _connect(url: str, token: str) -> ClientConnection:
    ws = await websockets.connect(url, additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=30)
    assert json.loads(await ws.recv())["type"] == "welcome"
    return ws


async def _statuses_until(ws: ClientConnection, wanted: int, ref: str) -> tuple[dict[str, str], list[str]]:
    """Read after a `subscribe`: the statuses of ``wanted`` agents, and the message types seen."""
    statuses: dict[str, str] = {}
    kinds: list[str] = []
    while len(statuses) < wanted:
        message: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 20))
        kinds.append(message["type"])
        if message["type"] == "subscribed":
            assert message["ref"] == ref
        elif message["type"] == "presence":
            statuses[message["agent_id"]] = message["status"]
        elif message["type"] == "presence.snapshot":
            statuses.update((a["agent_id"], a["status"]) for a in message["agents"])
    return statuses, kinds


async def _alive(ws: ClientConnection) -> None:
    await ws.send(json.dumps({"type": "ping", "id": "alive"}))
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), 10))
        if message["type"] == "pong":
            assert message["ref"] == "alive"
            return


@pytest.fixture
async def fleet(fleet_hub: HubProcess) -> AsyncIterator[tuple[str, list[str]]]:
    """FLEET agents online in one tenant (connected BATCH at a time)."""
    tenant = f"fleet-{secrets.token_hex(3)}"
    ids = [f"agent-{i:04d}" for i in range(FLEET)]
    url = f"{fleet_hub.url}/ws/agent"
    agents: list[ClientConnection] = []
    try:
        for start in range(0, FLEET, BATCH):
            agents += await asyncio.gather(*(
                _connect(url, make_token(agent_id, tenant=tenant, ttl=600)) for agent_id in ids[start : start + BATCH]
            ))
        yield tenant, ids
    finally:
        await asyncio.gather(*(ws.close() for ws in agents), return_exceptions=True)


@pytest.mark.slow
async def test_subscribing_to_a_large_fleet_never_closes_the_dashboard(
    fleet_hub: HubProcess, fleet: tuple[str, list[str]]
) -> None:
    tenant, ids = fleet
    dash = await _connect(f"{fleet_hub.url}/ws/dashboard", make_token("fleet-dash", ["dashboard"], tenant=tenant))
    try:
        await dash.send(json.dumps({"type": "subscribe", "agents": "*", "id": "all"}))
        statuses, kinds = await _statuses_until(dash, FLEET, "all")
        assert statuses == dict.fromkeys(ids, "online")
        assert kinds[0] == "subscribed" and "presence.snapshot" in kinds and len(kinds) <= 1 + FLEET // 100
        await _alive(dash)

        # A list of 1,000 ids: 999 of the fleet and one that is offline.
        listed = [*ids[1:], "not-here"]
        await dash.send(json.dumps({"type": "subscribe", "agents": listed, "id": "list"}))
        statuses, _ = await _statuses_until(dash, FLEET, "list")
        assert statuses == {**dict.fromkeys(ids[1:], "online"), "not-here": "offline"}
        await _alive(dash)
    finally:
        await dash.close()
    assert "slow_consumer" not in fleet_hub.log_text()


@pytest.mark.parametrize("engine", ["embedded", pytest.param("redis", marks=pytest.mark.redis)])
async def test_a_burst_within_the_limits_never_closes_a_reading_dashboard(
    start_hub: StartHub, request: pytest.FixtureRequest, engine: str
) -> None:
    env = redis_env(request.getfixturevalue("redis_url")) if engine == "redis" else {}
    hub = start_hub(env, name=f"burst-{engine}")
    dash = await _connect(f"{hub.url}/ws/dashboard", make_token("burst-dash", ["dashboard"]))
    await dash.send(json.dumps({"type": "subscribe", "agents": ["burst-agent"], "id": "s"}))
    await _statuses_until(dash, 1, "s")
    # One agent identity at its limits: 10 connections, 40 events each (the message burst).
    agents = [await _connect(f"{hub.url}/ws/agent", make_token("burst-agent", ttl=600)) for _ in range(10)]
    event = json.dumps({"type": "event", "payload": {"data": "x" * 200}})
    await asyncio.gather(*(ws.send(event) for ws in agents for _ in range(40)))
    received = 0
    while received < 400:
        message = json.loads(await asyncio.wait_for(dash.recv(), 20))
        received += message["type"] == "event"
    await _alive(dash)
    await asyncio.gather(dash.close(), *(ws.close() for ws in agents))
    assert "slow_consumer" not in hub.log_text()


async def test_the_client_library_reads_snapshots_as_presence(hub: HubProcess) -> None:
    from hubclient import connect_dashboard

    async def token() -> str:
        return make_token("snap-dash", ["dashboard"])

    ids = [f"snap-{i:02d}" for i in range(30)]
    agents = [await _connect(f"{hub.url}/ws/agent", make_token(agent_id)) for agent_id in ids[:20]]
    try:
        async with connect_dashboard(hub.url, token) as dash:
            presence = dash.presence()
            await dash.subscribe(ids)
            seen = {}
            while len(seen) < len(ids):
                item = await asyncio.wait_for(anext(presence), 5)
                seen[item.agent_id] = item.status
        assert seen == {**dict.fromkeys(ids[:20], "online"), **dict.fromkeys(ids[20:], "offline")}
    finally:
        await asyncio.gather(*(ws.close() for ws in agents))
