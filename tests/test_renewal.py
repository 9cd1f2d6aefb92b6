"""Lease renewal (app.renewal): a renewal cut by its time bound resumes where it stopped."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

import pytest

from app import renewal
from app.engine import ConnectionInfo, EngineUnavailable
from app.engine.memory import MemoryEngine
from app.renewal import LeaseRenewal, RenewalCursor


def conn(n: int) -> ConnectionInfo:
    return ConnectionInfo(f"c{n}", f"user{n}", "/ws/agent", "192.0.2.1", "w1", 1.0)


class SlowEngine(MemoryEngine):
    """The embedded engine on a saturated worker: each renew call takes ``delay`` seconds."""

    def __init__(self, delay: float) -> None:
        super().__init__(worker_id="w1")
        self.delay = delay
        self.renewed: list[str] = []
        self.presence_renewals = 0

    async def renew(
        self, connections: Iterable[ConnectionInfo], *, lease_seconds: int, max_connections: int
    ) -> list[ConnectionInfo]:
        batch = list(connections)
        await asyncio.sleep(self.delay)
        self.renewed += [info.conn_id for info in batch]
        return await super().renew(batch, lease_seconds=lease_seconds, max_connections=max_connections)

    async def renew_agents(self, entries: Iterable[tuple[str, str, str]], *, lease_seconds: int) -> None:
        self.presence_renewals += 1
        await super().renew_agents(entries, lease_seconds=lease_seconds)


class OneChunkEngine(SlowEngine):
    """Each renewal's first chunk is renewed at once and its second hangs until the renewal's
    bound cuts it: a cut that does not depend on how busy the machine is."""

    def __init__(self) -> None:
        super().__init__(delay=0)
        self.hang = True
        self._chunks = 0

    async def renew_agents(self, entries: Iterable[tuple[str, str, str]], *, lease_seconds: int) -> None:
        self._chunks = 0  # presence goes first in every renewal
        await super().renew_agents(entries, lease_seconds=lease_seconds)

    async def renew(
        self, connections: Iterable[ConnectionInfo], *, lease_seconds: int, max_connections: int
    ) -> list[ConnectionInfo]:
        self._chunks += 1
        if self.hang and self._chunks > 1:
            await asyncio.Event().wait()
        return await super().renew(connections, lease_seconds=lease_seconds, max_connections=max_connections)


def renewal_of(
    engine: MemoryEngine, leases: list[ConnectionInfo], *, lease_seconds: int = 30,
    is_open: Callable[[str], bool] = lambda _: True,
    over_limit: Callable[[list[ConnectionInfo]], None] = lambda _: None,
) -> LeaseRenewal:
    """The renewal loop of a worker whose open connections are ``leases`` (no agents)."""
    return LeaseRenewal(
        engine, leases=lambda: leases, is_open=is_open, presence_leases=list, sweep=engine.close,
        over_limit=over_limit, lease_seconds=lease_seconds, max_connections=10,
    )


def test_cursor_wraps_around_from_where_it_stopped() -> None:
    cursor = RenewalCursor()
    leases = [conn(n) for n in range(5)]
    assert [[c.conn_id for c in chunk] for chunk in cursor.chunks(leases, 2)] == [
        ["c0", "c1"], ["c2", "c3"], ["c4"]]
    cursor.advance(2)
    assert [[c.conn_id for c in chunk] for chunk in cursor.chunks(leases, 2)] == [
        ["c2", "c3"], ["c4", "c0"], ["c1"]]
    cursor.advance(3)
    # Fewer connections than the cursor's position (some closed): it wraps.
    assert [c.conn_id for c in cursor.chunks(leases[:4], 10)[0]] == ["c1", "c2", "c3", "c0"]
    assert cursor.chunks([], 2) == []


async def test_a_renewal_cut_by_its_bound_resumes_so_every_lease_gets_renewed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 10 connections in chunks of 2; a renewal is bounded by 0.5 s (a 3 s lease: an interval of
    # 1 s), and the engine hangs on each renewal's second chunk, so every renewal is cut after
    # one. Starting over each time would renew c0 and c1 forever and let the others' leases run out.
    monkeypatch.setattr(renewal, "RENEW_CHUNK", 2)
    engine = OneChunkEngine()
    leases = [conn(n) for n in range(10)]
    closed: list[ConnectionInfo] = []
    loop = renewal_of(engine, leases, lease_seconds=3, over_limit=closed.extend)
    results = [await loop.renew() for _ in range(5)]
    assert results[0] is False, "the bound did not cut the renewal"
    assert set(engine.renewed) == {info.conn_id for info in leases}
    # Presence goes first: a renewal cut among the connection chunks still renewed it.
    assert engine.presence_renewals == 5
    assert closed == []
    # Without the hang one renewal gets through whole.
    engine.hang = False
    engine.renewed.clear()
    assert await loop.renew() is True
    assert sorted(engine.renewed) == sorted(info.conn_id for info in leases)


async def test_a_connection_closed_during_a_renewal_is_not_renewed_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Chunks of 2 taking 0.1 s each; c3 closes (and releases its slot) while the first chunk is
    # on its way. Renewing it from the list made before would take its released slot again.
    monkeypatch.setattr(renewal, "RENEW_CHUNK", 2)
    engine = SlowEngine(delay=0.1)
    leases = [conn(n) for n in range(4)]
    open_ids = {info.conn_id for info in leases}
    loop = renewal_of(engine, leases, is_open=open_ids.__contains__)
    renewing = asyncio.create_task(loop.renew())
    await asyncio.sleep(0.05)
    open_ids.discard("c3")
    assert await renewing is True
    assert engine.renewed == ["c0", "c1", "c2"]


class FailingEngine(MemoryEngine):
    """Renewals get through until ``failing`` is set (a partition from Redis)."""

    def __init__(self) -> None:
        super().__init__(worker_id="w1")
        self.failing = False

    async def renew(
        self, connections: Iterable[ConnectionInfo], *, lease_seconds: int, max_connections: int
    ) -> list[ConnectionInfo]:
        if self.failing:
            raise EngineUnavailable("cut off")
        return await super().renew(connections, lease_seconds=lease_seconds, max_connections=max_connections)


async def test_connections_whose_lease_cannot_be_confirmed_are_given_up_before_it_ends() -> None:
    engine = FailingEngine()
    now = time.time()
    old = ConnectionInfo("c-old", "u1", "/ws/agent", "192.0.2.1", "w1", now - 100)
    leases = [old]
    loop = renewal_of(engine, leases)
    assert await loop.renew() is True
    fence = 30 - renewal.fence_margin(30)
    assert fence == 25
    # Confirmed just now: nothing to give up until shortly before the lease may end.
    assert loop.unconfirmed(lambda: leases, time.time() + fence - 1) == []
    engine.failing = True
    assert await loop.renew() is False
    # A connection admitted since is vouched for by its own admission.
    new = ConnectionInfo("c-new", "u2", "/ws/agent", "192.0.2.1", "w1", time.time() + 10)
    leases.append(new)
    assert loop.unconfirmed(lambda: leases, time.time() + fence + 1) == [old]
    assert loop.unconfirmed(lambda: leases, time.time() + fence + 11) == [old, new]
