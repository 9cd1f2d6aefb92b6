"""Missed events, recovered on reconnect, through real servers and WebSocket clients: on the
embedded engine in one process, and on Redis with the agent and the two connections of the
dashboard on different processes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import make_token, redis_env
from tests.support.peer import Peer
from tests.support.server import HubProcess

StartHub = Callable[..., HubProcess]
Pair = Callable[..., tuple[HubProcess, HubProcess]]
# Agents in these tests publish fast.
FAST = {"HUB_MESSAGE_RATE_PER_SECOND": "10000", "HUB_MESSAGE_BURST": "10000"}


@pytest.fixture(params=["embedded", pytest.param("redis", marks=pytest.mark.redis)])
def start_pair(request: pytest.FixtureRequest, start_hub: StartHub) -> Pair:
    """(A, B) with extra settings: the same process on the embedded engine, two processes on
    one Redis."""

    def start(**env: str) -> tuple[HubProcess, HubProcess]:
        if request.param == "embedded":
            server = start_hub({**FAST, **env})
            return server, server
        shared = redis_env(request.getfixturevalue("redis_url"), **FAST, **env)
        return start_hub(shared, name="a"), start_hub(shared, name="b")

    return start


async def _dashboard(server: HubProcess, sub: str = "view") -> Peer:
    return await Peer.connect(f"{server.url}/ws/dashboard", make_token(sub, ["dashboard"]))


async def _agent(server: HubProcess, sub: str) -> Peer:
    return await Peer.connect(f"{server.url}/ws/agent", make_token(sub, ["agent"]))


async def _subscribe(peer: Peer, agents: Any, **since: dict[str, Any]) -> dict[str, Any]:
    await peer.send(type="subscribe", id="s", agents=agents, **({"since": since} if since else {}))
    return await peer.expect("subscribed", ref="s")


async def _events(peer: Peer, count: int, agent_id: str) -> list[dict[str, Any]]:
    return [await peer.expect("event", agent_id=agent_id) for _ in range(count)]


async def _publish(agent: Peer, numbers: range) -> None:
    for n in numbers:
        await agent.send(type="event", payload={"n": n})


async def _seen_by_witness(witness: Peer, agent_id: str, n: int) -> None:
    """Wait until the hub has published event ``n`` (a dashboard that stays connected saw it)."""
    await witness.expect("event", timeout=10, agent_id=agent_id, payload={"n": n})


async def test_missed_events_are_replayed_in_order_then_live_ones(start_pair: Pair) -> None:
    a, b = start_pair()
    agent, witness, dash = await _agent(a, "ag-r"), await _dashboard(b), await _dashboard(a)
    await _subscribe(witness, ["ag-r"])
    assert (await _subscribe(dash, ["ag-r"]))["recovered"] == {}
    await _publish(agent, range(10))
    seen = await _events(dash, 10, "ag-r")
    epoch = seen[0]["epoch"]
    assert [(e["seq"], e["epoch"], e["payload"]) for e in seen] == [
        (n + 1, epoch, {"n": n}) for n in range(10)]
    await dash.close()
    await _publish(agent, range(10, 15))
    await _seen_by_witness(witness, "ag-r", 14)

    # Back, on the other process, with where it left off.
    back = await _dashboard(b)
    subscribed = await _subscribe(back, ["ag-r"], **{"ag-r": {"epoch": epoch, "seq": 10}})
    assert subscribed["recovered"] == {"ag-r": True}
    await _publish(agent, range(15, 18))
    got = await _events(back, 8, "ag-r")
    assert [(e["seq"], e["payload"]["n"]) for e in got] == [(s, s - 1) for s in range(11, 19)]
    assert {e["epoch"] for e in got} == {epoch}
    await back.quiet("event")
    for peer in (agent, witness, back):
        await peer.close()


async def test_a_wrong_epoch_is_not_recovered_and_replays_nothing(start_pair: Pair) -> None:
    a, b = start_pair()
    agent, dash = await _agent(a, "ag-e"), await _dashboard(b)
    await _subscribe(dash, "*")
    await _publish(agent, range(3))
    epoch = (await _events(dash, 3, "ag-e"))[0]["epoch"]
    back = await _dashboard(a)
    subscribed = await _subscribe(back, "*", **{"ag-e": {"epoch": "not-" + epoch, "seq": 1},
                                                 "ag-never": {"epoch": epoch, "seq": 0}})
    assert subscribed["recovered"] == {"ag-e": False, "ag-never": False}
    await back.quiet("event")
    await _publish(agent, range(3, 4))
    assert (await back.expect("event", agent_id="ag-e"))["seq"] == 4
    for peer in (agent, dash, back):
        await peer.close()


async def test_a_trimmed_history_is_not_recovered_but_what_is_held_is_replayed(
    start_pair: Pair,
) -> None:
    a, b = start_pair(HUB_EVENT_HISTORY_SIZE="3")
    agent, witness = await _agent(a, "ag-t"), await _dashboard(a)
    await _subscribe(witness, ["ag-t"])
    await _publish(agent, range(8))
    epoch = (await _events(witness, 8, "ag-t"))[0]["epoch"]
    back = await _dashboard(b)
    subscribed = await _subscribe(back, ["ag-t"], **{"ag-t": {"epoch": epoch, "seq": 2}})
    assert subscribed["recovered"] == {"ag-t": False}
    assert [(await back.expect("event"))["seq"] for _ in range(3)] == [6, 7, 8]
    # Already up to date: recovered, nothing replayed.
    again = await _dashboard(b)
    assert (await _subscribe(again, ["ag-t"], **{"ag-t": {"epoch": epoch, "seq": 8}}))[
        "recovered"] == {"ag-t": True}
    await again.quiet("event")
    # Operators see recoveries by outcome (one incomplete, one complete here).
    metrics = httpx.get(f"{a.http}/metrics").text + httpx.get(f"{b.http}/metrics").text
    assert 'hub_event_recoveries_total{outcome="incomplete"} 1.0' in metrics
    assert 'hub_event_recoveries_total{outcome="recovered"} 1.0' in metrics
    for peer in (agent, witness, back, again):
        await peer.close()


async def test_a_bad_since_is_refused_with_invalid_message(start_pair: Pair) -> None:
    a, _ = start_pair()
    dash = await _dashboard(a)
    for since in ({"ag": {"epoch": "e", "seq": -1}}, {"ag": {"seq": 1}}, ["ag"],
                  {"ag": {"epoch": "e" * 65, "seq": 1}}, {"": {"epoch": "e", "seq": 1}}):
        await dash.send(type="subscribe", id="bad", agents="*", since=since)
        assert (await dash.expect("error", ref="bad"))["error"] == "invalid_message"
    # The connection is still good.
    assert (await _subscribe(dash, "*"))["recovered"] == {}
    await dash.close()


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    total=st.integers(5, 40),
    cut=st.floats(0, 1),
    away=st.sampled_from([0.0, 0.001, 0.01, 0.05]),
    two_agents=st.booleans(),
    resubscribe=st.booleans(),
)
async def test_publishing_while_subscribing_leaves_no_gap_or_duplicate(
    start_pair: Pair, started: dict[str, tuple[HubProcess, HubProcess]],
    total: int, cut: float, away: float, two_agents: bool, resubscribe: bool,
) -> None:
    """The dashboard leaves and comes back (on the other process, or re-subscribes on the same
    connection) while the agent publishes, possibly from two connections on two processes at once:
    what it receives over both connections is exactly 1..total, in order."""
    if "pair" not in started:
        started["pair"] = start_pair()
    a, b = started["pair"]
    agent_id = f"ag-{uuid.uuid4().hex[:8]}"
    agents = [await _agent(a, agent_id)] + ([await _agent(b, agent_id)] if two_agents else [])
    first = await _dashboard(a)
    await _subscribe(first, [agent_id])

    async def publish() -> None:
        for n in range(total):
            await agents[n % len(agents)].send(type="event", payload={"n": n})
            await asyncio.sleep(0.001 if n % 3 == 0 else 0)

    publisher = asyncio.create_task(publish())
    received: list[tuple[str, int]] = []
    # At least one seen, so that the dashboard knows where it left off.
    target = max(1, int(cut * total))
    while len(received) < target:
        event = await first.expect("event", agent_id=agent_id)
        received.append((event["epoch"], event["seq"]))
    epoch, last = received[-1] if received else ("", 0)
    since = {agent_id: {"epoch": epoch, "seq": last}} if received else {}
    if resubscribe:
        second = first
        # Whatever the first subscription still delivers is left unread, as if lost.
        await second.send(type="subscribe", id="r", agents=[agent_id], since=since)
        while (await _next(second))["type"] != "subscribed":
            pass
    else:
        await first.close()
        await asyncio.sleep(away)
        second = await _dashboard(b)
        await _subscribe(second, [agent_id], **since)
    while len(received) < total:
        event = await second.expect("event", agent_id=agent_id)
        received.append((event["epoch"], event["seq"]))
    await publisher
    assert [s for _, s in received] == list(range(1, total + 1))
    assert len({e for e, _ in received}) == 1
    await second.quiet("event", seconds=0.1)
    for peer in {*agents, first, second}:
        await peer.close()


async def _next(peer: Peer) -> dict[str, Any]:
    import json

    message: dict[str, Any] = json.loads(await asyncio.wait_for(peer.ws.recv(), 5))
    return message


@pytest.fixture
def started() -> dict[str, tuple[HubProcess, HubProcess]]:
    """Servers started once for all the examples of one hypothesis test."""
    return {}
