"""EventWriter: batches to the store, never blocks the caller, counts every event it loses."""

from __future__ import annotations

import asyncio
import inspect
from collections import deque

from prometheus_client import REGISTRY
from sqlalchemy import func, select

from app.security_log import SecurityEvent, SecurityLog
from app.store import EventWriter, Store
from app.store.models import SecurityEventRow
from tests.store.conftest import make_event


def dropped_metric() -> float:
    value = REGISTRY.get_sample_value("hub_security_events_dropped_total")
    return value or 0.0


async def count_events(store: Store) -> int:
    async with store.engine.connect() as conn:
        return int((await conn.execute(select(func.count(SecurityEventRow.id)))).scalar_one())


class FlakyStore:
    """Fails while ``failing`` is set; hangs while ``hanging`` is set; records what it got."""

    def __init__(self) -> None:
        self.failing = False
        self.hanging = False
        self.received: list[SecurityEvent] = []
        self.calls = 0

    async def add_events(self, events: list[SecurityEvent]) -> int:
        self.calls += 1
        if self.hanging:
            await asyncio.Event().wait()
        if self.failing:
            raise ConnectionError("database is down")
        self.received.extend(events)
        return len(events)


async def wait_until(predicate: object, seconds: float = 10.0) -> None:
    async with asyncio.timeout(seconds):
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0.01)


async def test_a_burst_of_5000_events_is_written(store: Store) -> None:
    writer = EventWriter(store)
    writer.start()
    for i in range(5_000):
        writer.submit(make_event(detail=str(i)))
    await writer.stop()
    assert writer.submitted == 5_000
    assert writer.written + writer.dropped == 5_000
    assert writer.dropped == 0  # the buffer (10,000) was never full
    assert await count_events(store) == writer.written == 5_000


async def test_the_security_log_feeds_the_store(store: Store) -> None:
    writer = EventWriter(store, interval=0.05)
    writer.start()
    security_log = SecurityLog()
    security_log.set_sink(writer.submit)
    security_log.record(make_event(code="token_revoked", verified_sub="agent-1"))
    await wait_until(lambda: writer.written == 1)
    await writer.stop()
    (event,) = await store.query_events(sub="agent-1")
    assert event.code == "token_revoked"


async def test_submit_is_plain_and_the_buffer_is_bounded() -> None:
    assert not inspect.iscoroutinefunction(EventWriter.submit)
    writer = EventWriter(FlakyStore(), capacity=1_000)
    assert isinstance(writer._buffer, deque)
    assert writer._buffer.maxlen == 1_000
    for _ in range(10_000):  # not started: nothing drains the buffer
        writer.submit(make_event())
    assert writer.pending == 1_000
    assert writer.dropped == 9_000


async def test_overflow_drops_and_counts(store: Store) -> None:
    before = dropped_metric()
    writer = EventWriter(store, capacity=10, batch=4)
    for _ in range(25):
        writer.submit(make_event())
    assert (writer.pending, writer.dropped) == (10, 15)
    assert dropped_metric() - before == 15
    writer.start()
    await writer.stop()
    assert (writer.written, writer.dropped, writer.pending) == (10, 15, 0)
    assert await count_events(store) == 10


async def test_a_failing_store_does_not_stop_the_writer() -> None:
    flaky = FlakyStore()
    flaky.failing = True
    before = dropped_metric()
    writer = EventWriter(flaky, batch=5, interval=0.02)
    writer.start()
    for _ in range(12):
        writer.submit(make_event())
    await wait_until(lambda: writer.dropped == 12)
    assert writer.running
    assert dropped_metric() - before == 12

    flaky.failing = False  # the database comes back
    for _ in range(7):
        writer.submit(make_event())
    await wait_until(lambda: writer.written == 7)
    await writer.stop()
    assert (writer.submitted, writer.written, writer.dropped) == (19, 7, 12)
    assert len(flaky.received) == 7


async def test_a_hanging_store_times_out_and_counts_the_batch() -> None:
    flaky = FlakyStore()
    flaky.hanging = True
    writer = EventWriter(flaky, batch=3, interval=0.02, write_timeout=0.1)
    writer.start()
    for _ in range(3):
        writer.submit(make_event())
    await wait_until(lambda: writer.dropped == 3)
    assert writer.running
    flaky.hanging = False
    writer.submit(make_event())
    await writer.stop()
    assert (writer.written, writer.dropped) == (1, 3)


async def test_stop_is_bounded_and_honest_when_the_store_hangs() -> None:
    flaky = FlakyStore()
    flaky.hanging = True
    writer = EventWriter(flaky, batch=10, interval=0.02, write_timeout=60)
    writer.start()
    for _ in range(25):
        writer.submit(make_event())
    await wait_until(lambda: flaky.calls == 1)
    async with asyncio.timeout(5):
        await writer.stop(timeout=0.2)
    assert not writer.running
    assert writer.written == 0
    assert writer.dropped == 25  # the batch in flight and the 15 never sent


async def test_events_after_stop_are_dropped_and_counted() -> None:
    writer = EventWriter(FlakyStore())
    writer.start()
    await writer.stop()
    await writer.stop()  # idempotent
    writer.submit(make_event())
    assert (writer.written, writer.dropped, writer.pending) == (0, 1, 0)


async def test_stop_without_start_counts_the_buffer_as_dropped() -> None:
    writer = EventWriter(FlakyStore())
    writer.submit(make_event())
    await writer.stop()
    assert (writer.dropped, writer.pending) == (1, 0)
