"""Retention: prune() and the periodic run_retention() task."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from app.store import PruneResult, Store, prune, run_retention
from tests.store.conftest import T0, FakeClock, make_event


async def test_prune_deletes_old_events_and_expired_entries(store: Store) -> None:
    await store.add_events(
        [make_event(T0 - timedelta(days=31)), make_event(T0 - timedelta(days=29))]
    )
    await store.add_ban("10.0.0.1", "r", "a", expires_at=T0 - timedelta(minutes=1))
    await store.add_revocation(jti="j", created_by="a", expires_at=T0 - timedelta(minutes=1))
    await store.add_revocation(jti="k", created_by="a")

    assert await prune(store, days=30, now=T0) == PruneResult(events=1, bans=1, revocations=1)
    assert len(await store.query_events()) == 1
    assert await store.list_bans(include_expired=True) == []
    assert [r.jti for r in await store.list_revocations(active_only=False)] == ["k"]
    assert await prune(store, days=30, now=T0) == PruneResult(0, 0, 0)


async def test_prune_refuses_a_non_positive_retention(store: Store) -> None:
    with pytest.raises(ValueError, match="positive"):
        await prune(store, days=0)


async def test_run_retention_prunes_at_once_then_periodically(
    store: Store, clock: FakeClock
) -> None:
    # run_retention uses the real "now": events from 2030 are recent, events from 2000 are old.
    old = T0.replace(year=2000)
    await store.add_events([make_event(old)])
    task = asyncio.create_task(run_retention(store, days=30, interval_seconds=0.05))
    try:
        async with asyncio.timeout(5):
            while await store.query_events():
                await asyncio.sleep(0.01)
        await store.add_events([make_event(old)])  # pruned on the next pass
        async with asyncio.timeout(5):
            while await store.query_events():
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_run_retention_survives_failures(database_url: str) -> None:
    broken = Store(database_url)  # never opened: every pass fails
    task = asyncio.create_task(run_retention(broken, days=30, interval_seconds=0.01))
    await asyncio.sleep(0.1)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
