"""What only the embedded engine promises: exact arithmetic on its own clock, bounded memory,
scheduled (not re-entrant) delivery."""

from __future__ import annotations

import asyncio

from structlog.testing import capture_logs

from app.engine._delivery import MessageInbox
from app.engine.base import Admitted, ConnectionInfo, ControlEvent, Refused
from app.engine.memory import MemoryEngine
from app.errors import Code

from .conftest import ManualClock


async def test_retry_after_is_exact_on_a_controlled_clock() -> None:
    clock = ManualClock()
    engine = MemoryEngine(worker_id="w1", clock=clock)
    for _ in range(3):
        assert await engine.check_ip("10.0.0.1", limit=3, window=60) == Admitted()
        clock.advance(10)
    # Attempts at 0, 10, 20; now 30: the one at 0 leaves at 60.
    assert await engine.check_ip("10.0.0.1", limit=3, window=60) == Refused(Code.RATE_LIMITED, 30)
    clock.advance(29.5)
    assert await engine.check_ip("10.0.0.1", limit=3, window=60) == Refused(Code.RATE_LIMITED, 1)
    clock.advance(0.5)
    assert await engine.check_ip("10.0.0.1", limit=3, window=60) == Admitted()
    assert await engine.check_ip("10.0.0.1", limit=3, window=60) == Refused(Code.RATE_LIMITED, 10)


async def test_rotating_addresses_do_not_grow_memory() -> None:
    clock = ManualClock()
    engine = MemoryEngine(worker_id="w1", clock=clock)
    peak = 0
    for round_ in range(20):
        for n in range(2000):
            ip = f"10.{round_}.{n // 256}.{n % 256}"
            await engine.check_ip(ip, limit=5, window=1)
            await engine.record_auth_failure(ip, threshold=5, window=1, ban_seconds=1)
            await engine.admit_user(f"u{round_}-{n}", "c", rate_limit=5, max_connections=1,
                                    lease_seconds=1, window=1)
            peak = max(peak, engine.tracked_keys())
        clock.advance(2)
    # 40,000 addresses and users went by; only about two rounds' worth is ever held.
    assert peak < 2 * 4 * 2000 + 1024
    engine.sweep()
    assert engine.tracked_keys() == 0


async def test_past_the_cap_counters_are_evicted_but_bans_and_slots_stay() -> None:
    engine = MemoryEngine(worker_id="w1", clock=ManualClock(), max_keys=100)
    await engine.ban_ip("192.0.2.1", seconds=600)
    await engine.admit_user("alice", "c0", rate_limit=5, max_connections=1, lease_seconds=600)
    with capture_logs() as logs:
        for n in range(5000):
            await engine.check_ip(f"10.0.{n // 256}.{n % 256}", limit=5, window=600)
    assert engine.tracked_keys() <= 1024 + 100
    assert "engine.keys_evicted" in [entry["event"] for entry in logs]
    assert await engine.check_ip("192.0.2.1", limit=5) == Refused(Code.IP_BANNED, 600)
    assert await engine.count_connections("alice") == 1


async def test_periodic_sweep_empties_idle_state() -> None:
    clock = ManualClock()
    engine = MemoryEngine(worker_id="w1", clock=clock, sweep_interval=0.02)
    await engine.start()
    try:
        await engine.check_ip("10.0.0.1", limit=5, window=1)
        await engine.admit_user("alice", "c0", rate_limit=5, max_connections=1, lease_seconds=1,
                                window=1)
        await engine.ban_ip("10.0.0.2", seconds=1)
        assert engine.tracked_keys() == 4
        clock.advance(1.5)
        await asyncio.sleep(0.1)
        assert engine.tracked_keys() == 0
    finally:
        await engine.close()


async def test_publish_schedules_delivery_and_survives_a_failing_handler() -> None:
    engine = MemoryEngine(worker_id="w1")
    seen: list[ControlEvent] = []

    async def handler(event: ControlEvent) -> None:
        seen.append(event)
        if event.kind == "kick":
            # Re-entrant publish: scheduled, so no recursion into this handler.
            await engine.publish(ControlEvent("route", {"from": "kick"}))
        if event.kind == "ban":
            raise RuntimeError("handler bug")

    engine.subscribe(handler)
    await engine.start()
    with capture_logs() as logs:
        await engine.publish(ControlEvent("kick", {"sub": "alice"}))
        assert seen == []  # not called inline
        await engine.publish(ControlEvent("ban", {"cidr": "192.0.2.0/24"}))
        for _ in range(5):
            await asyncio.sleep(0)
    assert [e.kind for e in seen] == ["kick", "ban", "route"]
    assert [entry["event"] for entry in logs] == ["engine.handler_failed"]
    await engine.close()
    # After close nothing is delivered any more.
    await engine.publish(ControlEvent("kick", {"sub": "bob"}))
    await asyncio.sleep(0)
    assert len(seen) == 3


async def test_sweep_drops_expired_presence_and_info() -> None:
    clock = ManualClock()
    engine = MemoryEngine(worker_id="w1", clock=clock)
    row = ConnectionInfo("c0", "alice", "/ws/agent", "192.0.2.1", "w1", 1.0)
    await engine.admit_user("alice", "c0", rate_limit=5, max_connections=1, lease_seconds=1,
                            window=1, info=row)
    await engine.agent_online("acme", "a1", "c0", lease_seconds=1)
    assert engine.tracked_keys() == 3  # rate, slots, one tenant's agents
    clock.advance(1.5)
    engine.sweep()
    assert engine.tracked_keys() == 0
    assert engine._slots == {}  # the info went with its slot
    assert await engine.list_connections() == []


async def test_routed_messages_are_scheduled_and_stop_at_close() -> None:
    engine = MemoryEngine(worker_id="w1")
    seen: list[str] = []

    async def handler(message: str) -> None:
        seen.append(message)

    engine.on_message(handler)
    await engine.start()
    await engine.send_to_worker("w1", "one")
    await engine.send_to_worker("w2", "for another worker: dropped")
    assert seen == []  # not called inline
    for _ in range(3):
        await asyncio.sleep(0)
    assert seen == ["one"]
    await engine.close()
    await engine.send_to_worker("w1", "after close")
    await asyncio.sleep(0)
    assert seen == ["one"]


async def test_a_full_inbox_drops_and_logs() -> None:
    inbox = MessageInbox(maxsize=2)
    gate = asyncio.Event()
    seen: list[str] = []

    async def handler(message: str) -> None:
        await gate.wait()
        seen.append(message)

    inbox.handler = handler
    with capture_logs() as logs:
        for n in range(5):
            inbox.put(f"m{n}")
        await asyncio.sleep(0)
        # Put without yielding: m0 and m1 filled the queue, m2 to m4 had no room.
        assert inbox.dropped == 3
        gate.set()
        for _ in range(5):
            await asyncio.sleep(0)
    assert seen == ["m0", "m1"]
    assert [e["event"] for e in logs] == ["engine.inbox_full"]
    await inbox.close()
