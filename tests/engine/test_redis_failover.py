"""The Redis engine across a failover of a Redis Cluster primary (``kill -9``): it fails closed
while the slot has no primary, then works again with no restart, scripts and messaging included.
The hub-level proof, through real servers and on Sentinel too, is tests/test_redis_ha.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from redis.crc import key_slot
from structlog.testing import capture_logs

from app.engine.base import Admitted, ConnectionInfo, EngineUnavailable
from tests.support.redis_ha import RedisCluster6, cli

from .conftest import RedisFactory, drain_until

pytestmark = [pytest.mark.redis, pytest.mark.slow]

LIMITS = {"rate_limit": 1000, "max_connections": 10, "lease_seconds": 30}
RECOVERY_SECONDS = 20.0


@pytest.fixture
def cluster() -> Iterator[RedisCluster6]:
    with RedisCluster6() as running:
        yield running


async def test_scripts_and_messaging_come_back_after_a_primary_is_killed(
    cluster: RedisCluster6, redis_factory: RedisFactory
) -> None:
    inbox: asyncio.Queue[str] = asyncio.Queue()
    w1 = await redis_factory(worker_id="w1", url=cluster.url, inbox=inbox)
    w2 = await redis_factory(worker_id="w2", url=cluster.url)
    rows = [ConnectionInfo(f"c{n}", f"user-{n}", "/ws/agent", "192.0.2.1", "w1", float(n))
            for n in range(30)]
    for row in rows:
        assert await w1.admit_user(row.sub, row.conn_id, **LIMITS, info=row) == Admitted()
    # The messaging slot's primary dies: the one that carries every channel.
    victim = cluster.primary_of(w1.channel)
    owners = cluster.slot_owners()
    on_victim = [r for r in rows if owners[key_slot(w1.keys.user_key(r.sub, "slots").encode())] == victim.port]
    assert on_victim, "no user on the killed primary: the test would prove nothing"
    victim.kill()
    killed_at = time.monotonic()

    # Fails closed while the slot has no primary, within about a second per call.
    started = time.monotonic()
    with pytest.raises(EngineUnavailable):
        await w1.count_connections(on_victim[0].sub)
    assert time.monotonic() - started < 3
    assert await w1.ping() is False

    # Then the pipelined renewal (split by node, NOSCRIPT on the promoted replica) gets through.
    while True:
        try:
            await w1.renew(rows, lease_seconds=30, max_connections=10)
            break
        except EngineUnavailable:
            assert time.monotonic() - killed_at < RECOVERY_SECONDS, "no recovery"
            await asyncio.sleep(0.2)
    assert await w1.list_connections() == rows
    assert await w1.count_connections(on_victim[0].sub) == 1
    assert await w1.ping() is True

    # The subscriber found the new primary by itself: routed messages flow again.
    while True:
        try:
            await w2.send_to_worker("w1", "probe")
            await asyncio.wait_for(inbox.get(), 0.5)
            break
        except (EngineUnavailable, TimeoutError):
            assert time.monotonic() - killed_at < RECOVERY_SECONDS, "messaging did not come back"
    await w1.watch("acme", "*")
    await w2.publish_agent("acme", "a1", "after")
    await w2.send_to_worker("w1", "end")
    assert [m for m in await drain_until(inbox, "end") if m != "probe"] == ["after"]


async def test_batched_scripts_are_reloaded_on_every_node_that_lost_them(
    cluster: RedisCluster6, redis_factory: RedisFactory
) -> None:
    # What a promoted replica looks like to the hub: no scripts (they are not replicated).
    engine = await redis_factory(url=cluster.url)
    rows = [ConnectionInfo(f"c{n}", f"user-{n}", "/ws/agent", "192.0.2.1", "w1", float(n))
            for n in range(20)]
    for row in rows:
        assert await engine.admit_user(row.sub, row.conn_id, **LIMITS, info=row) == Admitted()
    for node in cluster.primaries():
        assert cli(node.port, "SCRIPT", "FLUSH") == "OK"
    # One pipeline split over three nodes, each answering NOSCRIPT: loaded everywhere, re-sent.
    await engine.renew(rows, lease_seconds=30, max_connections=10)
    assert await engine.list_connections() == rows
    for node in cluster.primaries():
        assert cli(node.port, "SCRIPT", "FLUSH") == "OK"
    await engine.renew_agents([("acme", f"a{n}", f"c{n}") for n in range(20)], lease_seconds=30)
    assert await engine.online_agents("acme") == {f"a{n}" for n in range(20)}


async def test_messaging_follows_a_manual_failover_of_its_slot(
    cluster: RedisCluster6, redis_factory: RedisFactory
) -> None:
    # CLUSTER FAILOVER: the old primary stays up as a replica and tells its sharded subscribers
    # that the slot moved (sunsubscribe); the subscriber must follow the slot to the new primary.
    inbox: asyncio.Queue[str] = asyncio.Queue()
    with capture_logs() as logs:
        w1 = await redis_factory(worker_id="w1", url=cluster.url, inbox=inbox)
        w2 = await redis_factory(worker_id="w2", url=cluster.url)
        await w1.watch("acme", "*")
        await w2.send_to_worker("w1", "before")
        assert await asyncio.wait_for(inbox.get(), 2) == "before"
        old = cluster.primary_of(w1.channel)
        replica = cluster.replica_of(old)
        assert cli(replica.port, "CLUSTER", "FAILOVER") == "OK"
        started = time.monotonic()
        while cluster.primary_of(w1.channel) is old:
            assert time.monotonic() - started < RECOVERY_SECONDS, "no manual failover"
            await asyncio.sleep(0.1)
        while True:
            try:
                await w2.publish_agent("acme", "a1", "probe")
                await asyncio.wait_for(inbox.get(), 0.5)
                break
            except (EngineUnavailable, TimeoutError):
                assert time.monotonic() - started < RECOVERY_SECONDS, "messaging stayed on the old node"
        await w2.send_to_worker("w1", "end")
        assert [m for m in await drain_until(inbox, "end") if m != "probe"] == []
    assert "engine.subscriber_restored" in [e["event"] for e in logs]
