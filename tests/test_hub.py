"""The hub between dashboards and agents, through real servers and clients: on the embedded
engine in one process, and on Redis with the two sides on two processes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import make_token, redis_env
from tests.support.peer import Peer
from tests.support.server import HubProcess

StartHub = Callable[..., HubProcess]
OPERATOR = ["dashboard", "operator"]


def _start_pair(request: pytest.FixtureRequest, start_hub: StartHub, **env: str) -> tuple[HubProcess, HubProcess]:
    """(A, B): the same process on the embedded engine, two processes on one Redis."""
    env = {"HUB_CONNECTION_LEASE_SECONDS": "3", **env}
    if request.param == "embedded":
        server = start_hub(env)
        return server, server
    shared = redis_env(request.getfixturevalue("redis_url"), **env)
    return start_hub(shared, name="a"), start_hub(shared, name="b")


@pytest.fixture(params=["embedded", pytest.param("redis", marks=pytest.mark.redis)])
def pair(request: pytest.FixtureRequest, start_hub: StartHub) -> tuple[HubProcess, HubProcess]:
    return _start_pair(request, start_hub)


async def _dashboard(server: HubProcess, sub: str, roles: list[str] | None = None, **kw: Any) -> Peer:
    return await Peer.connect(f"{server.url}/ws/dashboard", make_token(sub, roles or OPERATOR, **kw))


async def _agent(server: HubProcess, sub: str, **kw: Any) -> Peer:
    return await Peer.connect(f"{server.url}/ws/agent", make_token(sub, ["agent"], **kw))


async def test_command_crosses_to_the_agent_and_the_result_comes_back(pair: tuple[HubProcess, HubProcess]) -> None:
    a, b = pair
    agent = await _agent(b, "agent-cmd")
    dash = await _dashboard(a, "op-1")
    await dash.send(type="command", id="c1", agent_id="agent-cmd", payload={"run": "uptime"})
    accepted = await dash.expect("command.accepted", ref="c1")
    command = await agent.expect("command")
    assert command == {"type": "command", "command_id": accepted["command_id"], "from": "op-1",
                       "payload": {"run": "uptime"}}
    await agent.send(type="result", command_id=command["command_id"], payload={"out": "up 3 days"})
    result = await dash.expect("result")
    assert result == {"type": "result", "command_id": accepted["command_id"], "agent_id": "agent-cmd",
                      "payload": {"out": "up 3 days"}}
    # Answered once: a second result for the same command is refused.
    await agent.send(type="result", id="again", command_id=command["command_id"], payload=None)
    assert (await agent.expect("error", ref="again"))["error"] == "forbidden"
    await asyncio.gather(agent.close(), dash.close())


async def test_events_reach_every_subscribed_dashboard_on_both_processes(pair: tuple[HubProcess, HubProcess]) -> None:
    a, b = pair
    agent = await _agent(a, "agent-ev")
    watchers = [await _dashboard(a, "view-a", ["dashboard"]), await _dashboard(b, "view-b", ["dashboard"])]
    star = await _dashboard(b, "view-star", ["dashboard"])
    other = await _dashboard(a, "view-other", ["dashboard"])
    for peer in watchers:
        await peer.send(type="subscribe", id="s", agents=["agent-ev"])
        await peer.expect("subscribed", ref="s")
        assert (await peer.expect("presence", agent_id="agent-ev"))["status"] == "online"
    await star.send(type="subscribe", agents="*")
    await star.expect("presence", agent_id="agent-ev", status="online")
    await other.send(type="subscribe", id="o", agents=["someone-else"])
    await other.expect("subscribed", ref="o")
    for n in range(3):
        await agent.send(type="event", payload={"n": n})
    epochs = set()
    for peer in [*watchers, star]:
        for n in range(3):
            event = await peer.expect("event", agent_id="agent-ev")
            epochs.add(event.pop("epoch"))
            assert event == {"type": "event", "agent_id": "agent-ev", "payload": {"n": n}, "seq": n + 1}
    # One numbering, whichever process the dashboard is on.
    assert len(epochs) == 1
    await other.quiet("event")
    for peer in [agent, *watchers, star, other]:
        await peer.close()


async def test_presence_follows_the_agent(pair: tuple[HubProcess, HubProcess]) -> None:
    a, b = pair
    dash = await _dashboard(a, "view-pres", ["dashboard"])
    await dash.send(type="subscribe", agents=["agent-pres"])
    await dash.expect("presence", agent_id="agent-pres", status="offline")
    agent = await _agent(b, "agent-pres")
    await dash.expect("presence", agent_id="agent-pres", status="online")
    second = await _agent(b, "agent-pres")
    await agent.close()
    await dash.quiet("presence", agent_id="agent-pres", status="offline")  # one connection left
    await second.close()
    await dash.expect("presence", agent_id="agent-pres", status="offline")
    await dash.close()


@pytest.mark.redis
async def test_agents_of_a_killed_worker_go_offline_within_the_lease(start_hub: StartHub, redis_url: str) -> None:
    env = redis_env(redis_url, HUB_CONNECTION_LEASE_SECONDS="3")
    a, b = start_hub(env, name="a"), start_hub(env, name="b")
    agent = await _agent(b, "agent-killed")
    dash = await _dashboard(a, "op-kill")
    await dash.send(type="subscribe", agents="*")
    await dash.expect("presence", agent_id="agent-killed", status="online")
    b.kill()
    await dash.expect("presence", timeout=8, agent_id="agent-killed", status="offline")
    await dash.send(type="command", id="k", agent_id="agent-killed", payload=None)
    await dash.expect("error", ref="k", error="agent_offline")
    await dash.close()
    del agent


async def test_viewer_cannot_command(pair: tuple[HubProcess, HubProcess]) -> None:
    a, b = pair
    agent = await _agent(b, "agent-view")
    viewer = await _dashboard(a, "viewer", ["dashboard"])
    await viewer.send(type="command", id="v", agent_id="agent-view", payload={"rm": "-rf"})
    assert (await viewer.expect("error", ref="v"))["error"] == "forbidden"
    await agent.quiet("command")
    await asyncio.gather(agent.close(), viewer.close())


async def test_tenants_do_not_reach_each_other(pair: tuple[HubProcess, HubProcess]) -> None:
    a, b = pair
    agent = await _agent(b, "agent-t2", tenant="t2")
    dash = await _dashboard(a, "op-t1", tenant="t1")
    await dash.send(type="command", id="x", agent_id="agent-t2", payload=None)
    assert (await dash.expect("error", ref="x"))["error"] == "agent_offline"
    await dash.send(type="subscribe", agents="*")
    await dash.expect("subscribed")
    await agent.send(type="event", payload="secret")
    await dash.quiet("event")
    await dash.quiet("presence", agent_id="agent-t2")
    same = await _dashboard(a, "op-t2", tenant="t2")
    await same.send(type="command", id="y", agent_id="agent-t2", payload=None)
    await same.expect("command.accepted", ref="y")
    await agent.expect("command")
    for peer in (agent, dash, same):
        await peer.close()


async def test_forged_result_is_refused(pair: tuple[HubProcess, HubProcess]) -> None:
    a, b = pair
    victim = await _agent(b, "agent-victim")
    forger = await _agent(a, "agent-forger")
    dash = await _dashboard(a, "op-forge")
    await dash.send(type="command", agent_id="agent-victim", payload=1)
    command_id = (await dash.expect("command.accepted"))["command_id"]
    await victim.expect("command")
    await forger.send(type="result", id="f", command_id=command_id, payload="forged")
    assert (await forger.expect("error", ref="f"))["error"] == "forbidden"
    await dash.quiet("result")
    for peer in (victim, forger, dash):
        await peer.close()


async def test_sides_cannot_send_each_others_messages(pair: tuple[HubProcess, HubProcess]) -> None:
    a, _ = pair
    agent = await _agent(a, "agent-side")
    dash = await _dashboard(a, "op-side")
    await agent.send(type="subscribe", id="1", agents="*")
    assert (await agent.expect("error", ref="1"))["error"] == "forbidden"
    await agent.send(type="command", id="2", agent_id="agent-side", payload=None)
    assert (await agent.expect("error", ref="2"))["error"] == "forbidden"
    await dash.send(type="event", id="3", payload=None)
    assert (await dash.expect("error", ref="3"))["error"] == "forbidden"
    await dash.send(type="result", id="4", command_id="c", payload=None)
    assert (await dash.expect("error", ref="4"))["error"] == "forbidden"
    await asyncio.gather(agent.close(), dash.close())


@pytest.fixture(params=["embedded", pytest.param("redis", marks=pytest.mark.redis)])
def short_ttl_pair(request: pytest.FixtureRequest, start_hub: StartHub) -> tuple[HubProcess, HubProcess]:
    """As ``pair``, with commands that expire after 1 s."""
    return _start_pair(request, start_hub, HUB_COMMAND_TTL_SECONDS="1")


async def test_a_command_nobody_answers_in_time_ends_with_command_expired(
    short_ttl_pair: tuple[HubProcess, HubProcess],
) -> None:
    a, b = short_ttl_pair
    agent = await _agent(b, "agent-slow")
    dash = await _dashboard(a, "op-slow")
    await dash.send(type="command", id="s1", agent_id="agent-slow", payload=None)
    await dash.expect("command.accepted", ref="s1")
    command = await agent.expect("command")
    expired = await dash.expect("error", ref="s1", timeout=5)
    assert expired["error"] == "command_expired"
    # Too late: the agent's answer is refused, and the operator hears nothing more of it.
    await agent.send(type="result", id="late", command_id=command["command_id"], payload=None)
    assert (await agent.expect("error", ref="late"))["error"] == "forbidden"
    await dash.quiet("result", seconds=1.0)
    await asyncio.gather(agent.close(), dash.close())


async def test_command_to_an_offline_agent(pair: tuple[HubProcess, HubProcess]) -> None:
    a, _ = pair
    dash = await _dashboard(a, "op-offline")
    await dash.send(type="command", id="o", agent_id="nobody-here", payload=None)
    assert (await dash.expect("error", ref="o"))["error"] == "agent_offline"
    await dash.close()


async def test_an_agent_is_reachable_as_soon_as_it_has_its_welcome(pair: tuple[HubProcess, HubProcess]) -> None:
    # The hub registers an agent before it sends the welcome: a command sent the moment the
    # welcome arrives (on Redis, from another worker) is routed, never refused agent_offline.
    a, b = pair
    dash = await _dashboard(a, "op-at-once")
    for n in range(20):
        agent = await _agent(b, f"agent-at-once-{n}")
        await dash.send(type="command", id=f"n{n}", agent_id=f"agent-at-once-{n}", payload=n)
        answer = json.loads(await asyncio.wait_for(dash.ws.recv(), 5))
        assert (answer["type"], answer["ref"]) == ("command.accepted", f"n{n}"), answer
        command = await agent.expect("command")
        assert command["payload"] == n
        await agent.send(type="result", command_id=command["command_id"], payload=n)
        await dash.expect("result", command_id=command["command_id"])
        await agent.close()
    await dash.close()


async def test_an_agent_that_leaves_with_a_command_unanswered_is_reported_offline(
    pair: tuple[HubProcess, HubProcess],
) -> None:
    a, b = pair
    agent = await _agent(b, "agent-leaves")
    dash = await _dashboard(a, "op-leaves")
    await dash.send(type="command", id="l1", agent_id="agent-leaves", payload=None)
    await dash.expect("command.accepted", ref="l1")
    await agent.expect("command")
    await agent.close()
    # Not left waiting for a result that cannot come (the soak found such commands).
    assert (await dash.expect("error", ref="l1"))["error"] == "agent_offline"
    await dash.close()
