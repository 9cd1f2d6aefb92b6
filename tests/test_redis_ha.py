"""The hub on highly available Redis, through real ``hubctl serve`` processes: a Redis Cluster and
a Sentinel group, each of which loses a primary to ``kill -9`` in the middle of the test.

Each test starts a topology of its own (a few seconds), since it kills part of it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from redis.crc import key_slot

from app.engine.redis import RedisEngine
from tests.conftest import make_token, redis_env
from tests.support.client import attempt
from tests.support.peer import Peer
from tests.support.redis_ha import RedisCluster6, SentinelGroup
from tests.support.server import HubProcess

StartHub = Callable[..., HubProcess]
OPERATOR = ["dashboard", "operator"]
LIMIT = 10
# Longer than a failover plus a renewal interval: a worker gives up connections whose lease it
# cannot confirm for five sixths of a lease (app/renewal.py), and these must stay open.
LEASE_SECONDS = 10
# Failover takes about 2-3 s with a 1 s node timeout / down-after; a generous, bounded wait.
RECOVERY_SECONDS = 20.0

pytestmark = [pytest.mark.redis, pytest.mark.slow]


@pytest.fixture(params=["cluster", "sentinel"])
def topology(request: pytest.FixtureRequest) -> Iterator[tuple[str, RedisCluster6 | SentinelGroup]]:
    group: RedisCluster6 | SentinelGroup = (
        RedisCluster6() if request.param == "cluster" else SentinelGroup()
    )
    with group:
        yield request.param, group


def _victim(group: RedisCluster6 | SentinelGroup, prefix: str, sub: str) -> Callable[[], None]:
    """What to kill: the Sentinel primary, or the cluster primary that holds both the hub's
    messaging slot and ``sub``'s connection slots (the test picks such a ``sub``)."""
    if isinstance(group, SentinelGroup):
        return group.primary.kill
    engine = RedisEngine(group.url, prefix=prefix, worker_id="probe")
    node = group.primary_of(engine.keys.user_key(sub, "slots"))
    assert node is group.primary_of(engine.channel)
    return node.kill


def _subs_on_messaging_node(group: RedisCluster6 | SentinelGroup, prefix: str) -> list[str]:
    """Subjects whose slots live on the primary that carries the messaging slot."""
    candidates = [f"ha-user-{n}" for n in range(1000)]
    if isinstance(group, SentinelGroup):
        return candidates
    engine = RedisEngine(group.url, prefix=prefix, worker_id="probe")
    target = group.primary_of(engine.channel)
    owners = group.slot_owners()
    return [sub for sub in candidates
            if owners[key_slot(engine.keys.user_key(sub, "slots").encode())] == target.port]


async def _agent(server: HubProcess, sub: str) -> Peer:
    return await Peer.connect(f"{server.url}/ws/agent", make_token(sub, ["agent"]))


async def _limit_refused_on_both(servers: tuple[HubProcess, HubProcess], sub: str) -> None:
    for server in servers:
        outcome = await attempt(f"{server.url}/ws/agent", token=make_token(sub))
        assert (outcome.status, outcome.code) == (429, "connection_limit"), outcome


async def _relay(dash: Peer, agent: Peer, agent_id: str, tag: str) -> bool:
    """True when a command from ``dash`` reaches ``agent`` and its result comes back; False when
    the hub refused it or it was lost (pub/sub is at most once, notably during a failover)."""
    await dash.send(type="command", id=tag, agent_id=agent_id, payload={"n": tag})
    while True:
        reply = json.loads(await asyncio.wait_for(dash.ws.recv(), 5))
        if reply.get("ref") == tag and reply["type"] in ("command.accepted", "error"):
            break
    if reply["type"] == "error":
        return False
    try:
        command = await agent.expect("command", timeout=2, command_id=reply["command_id"])
    except AssertionError:
        return False
    await agent.send(type="result", command_id=command["command_id"], payload={"ok": tag})
    result = await dash.expect("result", command_id=reply["command_id"])
    assert result["payload"] == {"ok": tag}
    return True


async def _ready(server: HubProcess) -> int:
    response = await asyncio.to_thread(httpx.get, f"{server.http}/readyz", timeout=5)
    return response.status_code


async def test_limits_and_relay_survive_the_loss_of_a_primary(
    topology: tuple[str, RedisCluster6 | SentinelGroup], start_hub: StartHub
) -> None:
    _, group = topology
    env = redis_env(group.url, HUB_CONNECTION_LEASE_SECONDS=str(LEASE_SECONDS))
    prefix = env["HUB_REDIS_PREFIX"]
    # Both on the primary that dies (on a cluster, that of the messaging slot too).
    sub, newcomer = _subs_on_messaging_node(group, prefix)[:2]
    kill = _victim(group, prefix, sub)
    a, b = start_hub(env, name="a"), start_hub(env, name="b")

    # The limit split over two hubs, the 11th refused on both.
    peers = [await _agent(a, sub) for _ in range(5)] + [await _agent(b, sub) for _ in range(5)]
    await _limit_refused_on_both((a, b), sub)
    # A command relayed from a dashboard on A to an agent on B, and back.
    agent = await _agent(b, "ha-agent")
    dash = await Peer.connect(f"{a.url}/ws/dashboard", make_token("ha-op", OPERATOR))
    await dash.send(type="subscribe", agents=["ha-agent"])
    await dash.expect("presence", agent_id="ha-agent", status="online")
    assert await _relay(dash, agent, "ha-agent", "before")
    assert await _ready(a) == 200

    kill()
    killed_at = time.monotonic()
    # Every primary counts: /readyz says so while one is gone (the failover takes over 1 s).
    assert await _ready(a) == 503

    # New handshakes fail closed, then are accepted again on both hubs with no restart.
    for server in (a, b):
        while True:
            outcome = await attempt(f"{server.url}/ws/agent", token=make_token(newcomer))
            if outcome.accepted:
                break
            assert outcome.code == "unavailable", outcome
            assert outcome.headers.get("retry-after"), outcome
            assert time.monotonic() - killed_at < RECOVERY_SECONDS, "no recovery after failover"
            await asyncio.sleep(0.2)
    for server in (a, b):
        while await _ready(server) != 200:
            assert time.monotonic() - killed_at < RECOVERY_SECONDS, "/readyz stayed 503"
            await asyncio.sleep(0.2)

    # The open connections stayed open.
    for n, peer in enumerate([*peers, agent, dash]):
        await peer.send(type="ping", id=f"alive-{n}")
        await peer.expect("pong", ref=f"alive-{n}")
    # After a lease renewal the limit is exact again on both hubs, whatever the failover lost.
    await asyncio.sleep(LEASE_SECONDS)
    await _limit_refused_on_both((a, b), sub)
    await peers.pop().close()
    deadline = time.monotonic() + RECOVERY_SECONDS
    while not (await attempt(f"{b.url}/ws/agent", token=make_token(sub))).accepted:
        assert time.monotonic() < deadline, "a freed slot was not given back"
        await asyncio.sleep(0.2)

    # The relay works again (presence is rebuilt by the agent's next renewal).
    deadline = time.monotonic() + RECOVERY_SECONDS
    n = 0
    while not await _relay(dash, agent, "ha-agent", f"after-{n}"):
        assert time.monotonic() < deadline, "the relay did not come back"
        n += 1
        await asyncio.sleep(0.2)
    for peer in [*peers, agent, dash]:
        await peer.close()
