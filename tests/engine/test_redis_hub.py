"""The hub part of the Redis engine that needs several workers, a real server or key inspection:
cluster-wide info and presence, cross-worker routing, resubscription after an outage."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot
from structlog.testing import capture_logs

from app.engine._redis_client import MAX_CONNECTIONS
from app.engine.base import Admitted, ConnectionInfo
from tests.support.redis_server import RedisServer

from .conftest import RedisFactory, Wire, drain_until

pytestmark = pytest.mark.redis

LIMITS = {"rate_limit": 1000, "max_connections": 10, "lease_seconds": 30}




def info(sub: str, conn_id: str, worker: str, at: float) -> ConnectionInfo:
    return ConnectionInfo(conn_id, sub, "/ws/agent", "192.0.2.7", worker, at)


async def test_info_and_presence_are_cluster_wide_and_a_killed_worker_fades(
    any_redis_factory: RedisFactory,
) -> None:
    w1, w2 = await any_redis_factory(worker_id="w1"), await any_redis_factory(worker_id="w2")
    alive, killed = info("alice", "c1", "w1", 1.0), info("alice", "c2", "w2", 2.0)
    assert await w1.admit_user("alice", "c1", **{**LIMITS, "lease_seconds": 1}, info=alive) == (
        Admitted()
    )
    assert await w2.admit_user("alice", "c2", **{**LIMITS, "lease_seconds": 1}, info=killed) == (
        Admitted()
    )
    assert await w1.agent_online("acme", "a1", "c1", lease_seconds=1) is True
    assert await w2.agent_online("acme", "a1", "c2", lease_seconds=1) is False
    assert await w2.agent_online("acme", "a2", "c2", lease_seconds=1) is True

    for worker in (w1, w2):
        assert await worker.list_connections() == [alive, killed]
        assert await worker.locate_agent("acme", "a1") == ("w2", "c2")
        assert await worker.online_agents("acme") == {"a1", "a2"}

    # w2 is killed: it renews nothing any more; w1 keeps renewing its own.
    for _ in range(3):
        await asyncio.sleep(0.45)
        await w1.renew([alive], lease_seconds=1, max_connections=10)
        await w1.renew_agents([("acme", "a1", "c1")], lease_seconds=1)
    assert await w1.list_connections() == [alive]
    assert await w1.list_connections("alice") == [alive]
    assert await w1.locate_agent("acme", "a1") == ("w1", "c1")
    assert await w1.online_agents("acme") == {"a1"}


async def test_send_to_worker_reaches_only_that_worker(any_redis_factory: RedisFactory) -> None:
    inboxes: list[asyncio.Queue[str]] = [asyncio.Queue() for _ in range(3)]
    workers = [await any_redis_factory(worker_id=f"w{n}", inbox=q) for n, q in enumerate(inboxes)]
    await workers[0].send_to_worker("w1", "for w1")
    await workers[1].send_to_worker("w2", "for w2")
    await workers[2].send_to_worker("w0", "for w0")
    await workers[2].send_to_worker("gone", "for nobody")
    for n, worker in enumerate(workers):
        await worker.send_to_worker(f"w{n}", "end")
    assert await drain_until(inboxes[0], "end") == ["for w0"]
    assert await drain_until(inboxes[1], "end") == ["for w1"]
    assert await drain_until(inboxes[2], "end") == ["for w2"]


async def test_send_to_agent_skips_a_worker_nobody_listens_for(redis_factory: RedisFactory) -> None:
    """A drained or killed worker's presence entries outlive it until their leases run out when
    Redis could not take them back; a command published to its channel would be lost, so the
    next live entry gets it, and with none left the sender hears False (agent_offline)."""
    inbox: asyncio.Queue[str] = asyncio.Queue()
    w1 = await redis_factory(worker_id="w1", inbox=inbox)
    gone = await redis_factory(worker_id="gone")
    sender = await redis_factory(worker_id="sender")
    assert await w1.agent_online("acme", "a1", "c1", lease_seconds=30) is True
    await asyncio.sleep(0.01)  # the newer entry is gone's, the one commands go to first
    assert await gone.agent_online("acme", "a1", "c2", lease_seconds=30) is False
    assert await sender.locate_agent("acme", "a1") == ("gone", "c2")
    await gone.close()  # its subscription ends; its entry stays for its lease

    assert await sender.send_to_agent("acme", "a1", '{"to":', "}") is True
    await sender.send_to_worker("w1", "end")
    assert await drain_until(inbox, "end") == ['{"to":"c1"}']

    await w1.close()
    assert await sender.send_to_agent("acme", "a1", '{"to":', "}") is False


async def test_publish_agent_reaches_each_watching_worker_exactly_once(
    any_redis_factory: RedisFactory,
) -> None:
    names = ["agent", "tenant", "both", "none", "other"]
    inboxes = {name: asyncio.Queue[str]() for name in names}
    workers = {name: await any_redis_factory(worker_id=name, inbox=inboxes[name]) for name in names}
    await workers["agent"].watch("acme", "a1")
    await workers["tenant"].watch("acme", "*")
    await workers["both"].watch("acme", "a1")
    await workers["both"].watch("acme", "*")
    await workers["other"].watch("globex", "*")
    await workers["other"].watch("globex", "a1")

    publisher = workers["none"]
    await publisher.publish_agent("acme", "a1", "acme/a1")
    await publisher.publish_agent("acme", "a2", "acme/a2")
    for name, worker in workers.items():
        await publisher.send_to_worker(name, "end")
        assert worker.worker_id == name
    assert await drain_until(inboxes["agent"], "end") == ["acme/a1"]
    assert await drain_until(inboxes["tenant"], "end") == ["acme/a1", "acme/a2"]
    assert await drain_until(inboxes["both"], "end") == ["acme/a1", "acme/a2"]
    assert await drain_until(inboxes["none"], "end") == []
    assert await drain_until(inboxes["other"], "end") == []


async def test_watches_are_resubscribed_after_a_redis_restart(
    own_server: RedisServer, redis_factory: RedisFactory
) -> None:
    inbox: asyncio.Queue[str] = asyncio.Queue()
    with capture_logs() as logs:
        engine = await redis_factory(url=own_server.url, inbox=inbox)
        publisher = await redis_factory(worker_id="pub", url=own_server.url)
        await engine.watch("acme", "a1")
        await engine.watch("", "*")
        await publisher.publish_agent("acme", "a1", "before")
        await publisher.send_to_worker("w1", "end0")
        assert await drain_until(inbox, "end0") == ["before"]

        own_server.stop()
        await _wait_for(lambda: "engine.subscriber_lost" in _names(logs), 5)
        # Watched while Redis is down: no error, subscribed once it is back.
        await engine.watch("acme", "a2")
        await engine.unwatch("acme", "a1")
        own_server.start()

        # At most once: publish until the subscriber is back, then every watch must work.
        deadline = time.monotonic() + 10
        while inbox.empty():
            assert time.monotonic() < deadline, "the subscriber did not come back"
            await publisher.send_to_worker("w1", "ping")
            await asyncio.sleep(0.1)
        for message, tenant, agent in (("m-a1", "acme", "a1"), ("m-a2", "acme", "a2"),
                                       ("m-any", "", "x")):
            await publisher.publish_agent(tenant, agent, message)
        await publisher.send_to_worker("w1", "end1")
        seen = [m for m in await drain_until(inbox, "end1") if m != "ping"]
        assert seen == ["m-a2", "m-any"]
    names = _names(logs)
    assert names.index("engine.subscriber_lost") < names.index("engine.subscriber_restored")


async def test_a_drain_of_more_agents_than_pooled_connections_loses_no_presence(
    redis_factory: RedisFactory,
) -> None:
    """A drain closes every agent of a worker at once: more than the pool's connections."""
    engine = await redis_factory()
    agents = [f"a{n}" for n in range(MAX_CONNECTIONS + 200)]
    with capture_logs() as logs:
        online = await asyncio.gather(
            *(engine.agent_online("acme", a, f"c-{a}", lease_seconds=30) for a in agents))
        assert all(online)
        offline = await asyncio.gather(*(engine.agent_offline("acme", a, f"c-{a}") for a in agents))
    assert all(offline)
    assert [e for e in logs if e["event"] == "engine.agent_offline_failed"] == []
    assert await engine.online_agents("acme") == set()


async def test_hub_keys_are_cluster_safe_and_expire(
    redis_factory: RedisFactory, raw: aioredis.Redis, prefix: str
) -> None:
    engine = await redis_factory()
    ids = ["", "*", "{x}", "a}{:b", "t:*"]
    for tenant in ids:
        for agent in ids:
            assert await engine.agent_online(tenant, agent, "c0", lease_seconds=30) is True
        assert await engine.online_agents(tenant) == set(ids)
    for sub in ids:
        row = ConnectionInfo("c0", sub, "/ws/agent", "192.0.2.1", "w1", 1.0)
        assert await engine.admit_user(sub, "c0", **LIMITS, info=row) == Admitted()
        assert await engine.list_connections(sub) == [row]
        assert await engine.admit_user(sub, "c1", **LIMITS) == Admitted()
        await engine.release(sub, "c1")
    await engine.agent_online(ids[0], "gone", "c1", lease_seconds=30)
    await engine.agent_offline(ids[0], "gone", "c1")

    keys = [k.decode() async for k in raw.scan_iter(match=f"{prefix}:*")]
    b64 = "[A-Za-z0-9_-]*"
    presence = [
        k for k in keys if re.fullmatch(rf"{prefix}:\{{t:{b64}\}}:(agents|a:{b64}|released)", k)
    ]
    users = [
        k for k in keys if re.fullmatch(rf"{prefix}:\{{u:{b64}\}}:(slots|rate|info|released)", k)
    ]
    assert len(presence) == len(ids) * (len(ids) + 1) + 1
    assert len(users) == 4 * len(ids)
    assert sorted(presence + users) == sorted(keys)
    for key in keys:
        assert (await raw.pttl(key)) > 0, f"{key} has no TTL"
    for tenant in ids:
        slot = key_slot(engine.keys.agents_key(tenant).encode())
        assert all(key_slot(engine.keys.agent_key(tenant, a).encode()) == slot for a in ids)
    assert engine.keys.user_key("x", "info") != engine.keys.user_key("x", "slots")
    assert key_slot(engine.keys.user_key("x", "info").encode()) == key_slot(
        engine.keys.user_key("x", "slots").encode()
    ) == key_slot(engine.keys.user_key("x", "released").encode())
    assert key_slot(engine.keys.released_key("t").encode()) == key_slot(
        engine.keys.agents_key("t").encode()
    )
    # The tenant-wide channel cannot be an agent's: base64url has no "*".
    assert engine.agent_channel("t", "*").endswith(":*")
    assert len({engine.agent_channel(t, a) for t in ids for a in ids}) == len(ids) ** 2

    for tenant in ids:
        for agent in ids:
            assert await engine.agent_offline(tenant, agent, "c0") is True
        await engine.release(tenant, "c0")
    left = [k.decode() async for k in raw.scan_iter(match=f"{prefix}:*")]
    # Only the rate windows and the release marks remain (they expire with their window/mark).
    assert all(k.endswith((":rate", ":released")) for k in left), left
    marks = [await raw.pttl(k) for k in left if k.endswith(":released")]
    assert len(marks) == 2 * len(ids) and all(0 < ttl <= 60_000 for ttl in marks), marks


async def test_one_round_trip_per_hub_call(redis_factory: RedisFactory, wire: Wire) -> None:
    engine = await redis_factory()
    row = ConnectionInfo("c1", "alice", "/ws/agent", "192.0.2.1", "w1", 1.0)
    bob = ConnectionInfo("c1", "bob", "/ws/agent", "192.0.2.1", "w1", 1.0)
    # Warm up: connections open (AUTH/SETNAME happen once per connection, not per call).
    await engine.admit_user("alice", "c0", **LIMITS)
    await engine.publish_agent("acme", "a1", "warm")

    calls: list[tuple[Any, bytes]] = [
        (lambda: engine.admit_user("alice", "c1", **LIMITS, info=row), b"EVALSHA"),
        # One user is (tenant, sub): without a tenant, a sub is looked for in every tenant (SCAN).
        (lambda: engine.list_connections("alice", tenant=""), b"EVALSHA"),
        (lambda: engine.renew([row, bob], lease_seconds=30, max_connections=10), b"EVALSHA"),
        (lambda: engine.release("alice", "c1"), b"EVALSHA"),
        (lambda: engine.agent_online("acme", "a1", "c1", lease_seconds=30), b"EVALSHA"),
        (lambda: engine.locate_agent("acme", "a1"), b"EVALSHA"),
        (lambda: engine.online_agents("acme"), b"EVALSHA"),
        (lambda: engine.renew_agents([("acme", "a1", "c1"), ("b", "a", "c")], lease_seconds=30),
         b"EVALSHA"),
        (lambda: engine.agent_offline("acme", "a1", "c1"), b"EVALSHA"),
        (lambda: engine.send_to_worker("w2", "hi"), b"PUBLISH"),
        (lambda: engine.publish_agent("acme", "a1", "hi"), b"PUBLISH"),
    ]
    for call, command in calls:
        wire.clear()
        await call()
        # Pipelines go out as one write: one round trip.
        assert len(wire.sent) == 1, wire.sent
        assert command in wire.sent[0]
        assert b"SCRIPT" not in wire.sent[0]


async def test_pipelined_scripts_survive_a_redis_restart(
    own_server: RedisServer, redis_factory: RedisFactory
) -> None:
    engine = await redis_factory(url=own_server.url)
    row = info("alice", "c1", "w1", 1.0)
    own_server.stop()
    own_server.start()  # empty: no scripts loaded, NOSCRIPT on the first EVALSHA
    assert await engine.admit_user("alice", "c1", **LIMITS, info=row) == Admitted()
    await engine.renew([row], lease_seconds=30, max_connections=10)
    assert await engine.agent_online("acme", "a1", "c1", lease_seconds=30) is True
    own_server.stop()
    own_server.start()
    # Restarted without persistence: the renewals write back what the connection still holds.
    await engine.renew_agents([("acme", "a1", "c1")], lease_seconds=30)
    await engine.renew([row], lease_seconds=30, max_connections=10)
    assert await engine.list_connections() == [row]
    assert await engine.locate_agent("acme", "a1") == ("w1", "c1")


async def test_renewals_rebuild_slots_info_and_presence_after_redis_lost_its_data(
    own_server: RedisServer, redis_factory: RedisFactory, prefix: str
) -> None:
    w1 = await redis_factory(worker_id="w1", url=own_server.url)
    w2 = await redis_factory(worker_id="w2", url=own_server.url)
    limits = {**LIMITS, "max_connections": 2}
    a, b = info("alice", "c1", "w1", 1.0), info("alice", "c2", "w2", 2.0)
    assert await w1.admit_user("alice", "c1", **limits, info=a) == Admitted()
    assert await w2.admit_user("alice", "c2", **limits, info=b) == Admitted()
    assert await w1.agent_online("acme", "a1", "c1", lease_seconds=30) is True
    assert await w2.agent_online("acme", "a1", "c2", lease_seconds=30) is False
    assert await w1.agent_online("acme", "a2", "c1", lease_seconds=30) is True

    own_server.flushall()
    assert await w1.list_connections() == []
    assert await w1.count_connections("alice") == 0
    assert await w1.online_agents("acme") == set()
    assert await w1.locate_agent("acme", "a1") is None
    # Before the renewals come, a new connection takes one of the two slots.
    c = info("alice", "c3", "w1", 3.0)
    assert await w1.admit_user("alice", "c3", **limits, info=c) == Admitted()

    with capture_logs() as logs:
        await w1.renew([a], lease_seconds=30, max_connections=10)
        await w1.renew_agents([("acme", "a1", "c1"), ("acme", "a2", "c1")], lease_seconds=30)
        await w2.renew([b], lease_seconds=30, max_connections=10)
        await w2.renew_agents([("acme", "a1", "c2")], lease_seconds=30)
    assert [e["event"] for e in logs].count("engine.leases_revived") == 2
    assert [e["event"] for e in logs].count("engine.presence_revived") == 2

    # Every open connection is counted again, past max_connections; each is listed with its info.
    for worker in (w1, w2):
        assert await worker.count_connections("alice") == 3
        assert await worker.list_connections() == [a, b, c]
        assert await worker.online_agents("acme") == {"a1", "a2"}
        # The first entry revived keeps "most recent": one of unknown age never takes it over.
        assert await worker.locate_agent("acme", "a1") == ("w1", "c1")
        assert await worker.locate_agent("acme", "a2") == ("w1", "c1")
    assert await w1.agent_offline("acme", "a1", "c1") is False
    assert await w1.locate_agent("acme", "a1") == ("w2", "c2")

    # The rebuilt keys are as the scripts always write them: tagged and with a TTL.
    raw = aioredis.Redis.from_url(own_server.url)
    try:
        keys = [k.decode() async for k in raw.scan_iter(match=f"{prefix}:*")]
        assert set(keys) >= {
            w1.keys.user_key("alice", "slots"), w1.keys.user_key("alice", "info"),
            w1.keys.agents_key("acme"), w1.keys.agent_key("acme", "a1"), w1.keys.agent_key("acme", "a2"),
        }
        for key in keys:
            assert (await raw.pttl(key)) > 0, f"{key} has no TTL"
    finally:
        await raw.aclose()


def _names(logs: list[Any]) -> list[str]:
    return [str(entry["event"]) for entry in logs]


async def _wait_for(predicate: Any, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_everyone_is_listed_whichever_node_holds_them(any_redis_factory: RedisFactory) -> None:
    # On a cluster these users spread over every primary: SCAN answers one cursor per node.
    w1 = await any_redis_factory(worker_id="w1")
    rows = [info(f"user-{n}", f"c{n}", "w1", float(n)) for n in range(40)]
    for row in rows:
        assert await w1.admit_user(row.sub, row.conn_id, **LIMITS, info=row) == Admitted()
    assert await w1.list_connections() == rows
    await w1.renew(rows, lease_seconds=30, max_connections=10)  # one pipeline, split by node on a cluster
    assert await w1.list_connections() == rows
