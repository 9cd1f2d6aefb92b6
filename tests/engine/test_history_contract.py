"""The event-history part of the engine contract, on the memory engine and Redis (single primary,
cluster, Sentinel): numbering, trimming by count and age, epochs, tenants, several workers."""

from __future__ import annotations

import asyncio

import pytest

from app.engine.base import Engine, History, HistoryPolicy
from app.engine.memory import MemoryEngine
from app.engine.memory_history import META_TTL_SECONDS

from .conftest import Advance, ManualClock, RedisFactory

POLICY = HistoryPolicy(size=5, seconds=300)


async def test_events_are_numbered_and_held_in_order(engine: Engine) -> None:
    numbers = [await engine.append_event("", "ag", f'{{"n":{n}}}', policy=POLICY) for n in range(3)]
    epoch = numbers[0][0]
    assert epoch and numbers == [(epoch, 1), (epoch, 2), (epoch, 3)]
    found = await engine.read_history("", {"ag": 1, "never": 0}, policy=POLICY)
    assert found["ag"] == History(epoch, 3, ((2, '{"n":1}'), (3, '{"n":2}')))
    # An agent that never published has no epoch.
    assert found["never"] == History("", 0)
    assert (await engine.read_history("", {"ag": 3}, policy=POLICY))["ag"] == History(epoch, 3)


async def test_history_is_trimmed_by_count(engine: Engine) -> None:
    for n in range(8):
        epoch, _ = await engine.append_event("", "ag", str(n), policy=POLICY)
    held = (await engine.read_history("", {"ag": 0}, policy=POLICY))["ag"]
    # The oldest events are gone: what is held is contiguous and ends at the last seq.
    assert held == History(epoch, 8, tuple((s, str(s - 1)) for s in range(4, 9)))


async def test_history_is_trimmed_by_age(engine: Engine, advance: Advance) -> None:
    policy = HistoryPolicy(size=100, seconds=1)
    epoch, _ = await engine.append_event("", "ag", "1", policy=policy)
    await advance(1.2)
    await engine.append_event("", "ag", "2", policy=policy)
    assert (await engine.read_history("", {"ag": 0}, policy=policy))["ag"] == History(
        epoch, 2, ((2, "2"),))
    await advance(1.2)
    # Old events are not replayed even before a new event trims them; the counter stays.
    assert (await engine.read_history("", {"ag": 0}, policy=policy))["ag"] == History(epoch, 2)


async def test_size_zero_keeps_only_the_numbers(engine: Engine) -> None:
    off = HistoryPolicy(size=0, seconds=300)
    assert [s for _, s in [await engine.append_event("", "ag", "x", policy=off) for _ in range(3)]] == [1, 2, 3]
    held = (await engine.read_history("", {"ag": 0}, policy=off))["ag"]
    assert held.seq == 3 and held.events == ()


async def test_histories_are_per_tenant_and_agent(engine: Engine) -> None:
    await engine.append_event("t1", "ag", "t1", policy=POLICY)
    await engine.append_event("t2", "ag", "t2", policy=POLICY)
    await engine.append_event("t2", "*", "star", policy=POLICY)
    t1 = await engine.read_history("t1", {"ag": 0, "*": 0}, policy=POLICY)
    assert [p for _, p in t1["ag"].events] == ["t1"] and t1["*"] == History("", 0)
    t2 = await engine.read_history("t2", {"ag": 0}, policy=POLICY)
    assert [p for _, p in t2["ag"].events] == ["t2"]


@pytest.mark.redis
async def test_workers_share_one_sequence_and_a_lost_history_gets_a_new_epoch(
    any_redis_factory: RedisFactory,
) -> None:
    w1, w2 = await any_redis_factory("w1"), await any_redis_factory("w2")
    replies = await asyncio.gather(*(
        (w1 if n % 2 else w2).append_event("", "ag", str(n), policy=POLICY) for n in range(20)
    ))
    epochs = {e for e, _ in replies}
    assert len(epochs) == 1 and sorted(s for _, s in replies) == list(range(1, 21))
    held = (await w2.read_history("", {"ag": 14}, policy=POLICY))["ag"]
    assert [s for s, _ in held.events] == [16, 17, 18, 19, 20]
    # Redis lost the history (a flush, an eviction, a restart without persistence).
    await w1._client.delete(*w1.keys.history_keys("", "ag"))
    epoch, seq = await w2.append_event("", "ag", "again", policy=POLICY)
    assert seq == 1 and epoch not in epochs


@pytest.mark.redis
async def test_a_counter_that_went_back_starts_a_new_epoch(any_redis_factory: RedisFactory) -> None:
    engine = await any_redis_factory("w1")
    last = None
    for n in range(3):
        last = await engine.append_event("", "ag", str(n), policy=POLICY, last=last)
    epoch = last[0]
    assert last == (epoch, 3)
    # A failover lost the last increment (asynchronous replication): the promoted replica says 2.
    meta, _ = engine.keys.history_keys("", "ag")
    await engine._client.hset(meta, "s", 2)
    # Told what it gave out last, the engine never gives 3 again under the same epoch...
    fresh = await engine.append_event("", "ag", "after", policy=POLICY, last=last)
    assert fresh[0] != epoch and fresh[1] == 1
    assert (await engine.read_history("", {"ag": 0}, policy=POLICY))["ag"] == History(
        fresh[0], 1, ((1, "after"),))
    # ...and a caller whose numbers are behind (another worker) changes nothing.
    assert await engine.append_event("", "ag", "next", policy=POLICY, last=(fresh[0], 1)) == (fresh[0], 2)
    assert await engine.append_event("", "ag", "old", policy=POLICY, last=(epoch, 9)) == (fresh[0], 3)


@pytest.mark.redis
async def test_history_keys_are_in_one_slot_and_expire(any_redis_factory: RedisFactory) -> None:
    engine = await any_redis_factory("w1")
    meta, stream = engine.keys.history_keys("t{1}", "a}{:*")
    assert meta.split("{h:")[1].split("}")[0] == stream.split("{h:")[1].split("}")[0]
    await engine.append_event("t{1}", "a}{:*", "1", policy=HistoryPolicy(size=3, seconds=60))
    client = engine._client
    assert 0 < int(await client.ttl(stream)) <= 60
    assert int(await client.ttl(meta)) > 60


async def test_a_retried_append_is_answered_again_not_appended_twice(any_redis_factory: RedisFactory) -> None:
    # redis-py re-sends a command once when its connection drops; the reply of the first run may
    # have been lost with it. The same call (same nonce) must not number the event twice.
    engine = await any_redis_factory("w1")
    keys = engine.keys.history_keys("", "retried")
    args: list[str | int] = ["nonce-1", 5, 300, 3600, '"payload"']
    first = await engine._scripts.run("append_event", keys, args)
    again = await engine._scripts.run("append_event", keys, args)
    assert again == first and int(first[1]) == 1
    assert await engine._client.xlen(keys[1]) == 1
    _, seq = await engine.append_event("", "retried", '"next"', policy=POLICY)
    assert seq == 2


async def test_an_idle_agents_numbering_is_forgotten_in_memory_after_a_day() -> None:
    clock = ManualClock()
    engine = MemoryEngine(worker_id="w1", clock=clock)
    epoch, _ = await engine.append_event("", "ag", "1", policy=POLICY)
    clock.advance(META_TTL_SECONDS - 1)
    engine.sweep()
    assert (await engine.read_history("", {"ag": 0}, policy=POLICY))["ag"].epoch == epoch
    clock.advance(2)
    engine.sweep()
    # Bounded memory: gone, and a new numbering starts (recoveries then say false, the truth).
    assert (await engine.read_history("", {"ag": 0}, policy=POLICY))["ag"] == History("", 0)
    again, seq = await engine.append_event("", "ag", "2", policy=POLICY)
    assert seq == 1 and again != epoch
