"""The engine contract (app.engine.base.Engine), run identically against both engines."""

from __future__ import annotations

import asyncio
import time

from app.engine.base import Admitted, ConnectionInfo, ControlEvent, Engine, Refused
from app.errors import Code

from .conftest import Advance

LIMITS = {"rate_limit": 100, "max_connections": 3, "lease_seconds": 30}


def conn(sub: str, conn_id: str, at: float = 1.0) -> ConnectionInfo:
    """An open connection of worker w1, as its registry hands it to renew()."""
    return ConnectionInfo(conn_id, sub, "/ws/dashboard", "192.0.2.1", "w1", at)


async def test_ping_and_idempotent_close(realtime_engine: Engine) -> None:
    assert await realtime_engine.ping() is True
    await realtime_engine.close()
    await realtime_engine.close()


async def test_acquire_release_and_max(engine: Engine) -> None:
    for n in range(3):
        assert await engine.admit_user("alice", f"c{n}", **LIMITS) == Admitted()
    assert await engine.count_connections("alice") == 3
    assert await engine.admit_user("alice", "c3", **LIMITS) == Refused(Code.CONNECTION_LIMIT)
    # Another user is not affected by alice's slots.
    assert await engine.admit_user("bob", "c0", **LIMITS) == Admitted()

    await engine.release("alice", "c1")
    assert await engine.count_connections("alice") == 2
    assert await engine.admit_user("alice", "c3", **LIMITS) == Admitted()
    assert await engine.admit_user("alice", "c4", **LIMITS) == Refused(Code.CONNECTION_LIMIT)


async def test_a_user_is_the_pair_tenant_and_sub(engine: Engine) -> None:
    limits = {**LIMITS, "max_connections": 1}

    def info(tenant: str, conn_id: str) -> ConnectionInfo:
        return ConnectionInfo(conn_id, "shared", "agent", "192.0.2.1", "w1", 1.0, tenant=tenant)

    for tenant in ("a", "b", ""):
        verdict = await engine.admit_user("shared", f"c-{tenant}", tenant=tenant, info=info(tenant, f"c-{tenant}"), **limits)
        assert verdict == Admitted(), tenant
    assert await engine.admit_user("shared", "c-a2", tenant="a", **limits) == Refused(Code.CONNECTION_LIMIT)
    assert await engine.count_connections("shared", tenant="a") == 1
    assert [c.tenant for c in await engine.list_connections("shared", tenant="b")] == ["b"]
    assert sorted(c.tenant for c in await engine.list_connections("shared")) == ["", "a", "b"]
    assert [c.conn_id for c in await engine.list_connections(tenant="a")] == ["c-a"]
    await engine.release("shared", "c-a", tenant="a")
    assert await engine.count_connections("shared", tenant="a") == 0
    assert await engine.count_connections("shared", tenant="b") == 1
    await engine.renew([info("b", "c-b"), info("", "c-")], lease_seconds=30, max_connections=10)
    assert sorted(c.tenant for c in await engine.list_connections("shared")) == ["", "b"]


async def test_release_is_idempotent_and_never_raises(engine: Engine) -> None:
    assert await engine.admit_user("alice", "c0", **LIMITS) == Admitted()
    await engine.release("alice", "c0")
    await engine.release("alice", "c0")
    await engine.release("nobody", "never-admitted")
    assert await engine.count_connections("alice") == 0
    assert await engine.count_connections("nobody") == 0


async def test_readmitting_a_held_conn_id_takes_no_second_slot(engine: Engine) -> None:
    limits = {**LIMITS, "max_connections": 1}
    assert await engine.admit_user("alice", "c0", **limits) == Admitted()
    assert await engine.admit_user("alice", "c0", **limits) == Admitted()
    assert await engine.count_connections("alice") == 1


async def test_lease_expires_without_renewal(engine: Engine, advance: Advance) -> None:
    limits = {**LIMITS, "max_connections": 1, "lease_seconds": 1}
    assert await engine.admit_user("alice", "dead-worker", **limits) == Admitted()
    assert await engine.admit_user("alice", "c1", **limits) == Refused(Code.CONNECTION_LIMIT)
    await advance(1.1)
    # The killed worker never released its slot; the lease gave it back.
    assert await engine.count_connections("alice") == 0
    assert await engine.admit_user("alice", "c1", **limits) == Admitted()


async def test_real_time_lease_expiry(realtime_engine: Engine) -> None:
    limits = {**LIMITS, "lease_seconds": 1}
    assert await realtime_engine.admit_user("alice", "c0", **limits) == Admitted()
    assert await realtime_engine.count_connections("alice") == 1
    await asyncio.sleep(1.15)
    assert await realtime_engine.count_connections("alice") == 0


async def test_renew_keeps_a_slot_past_its_first_lease(engine: Engine, advance: Advance) -> None:
    limits = {**LIMITS, "lease_seconds": 2}
    assert await engine.admit_user("alice", "c0", **limits) == Admitted()
    assert await engine.admit_user("bob", "c0", **limits) == Admitted()
    assert await engine.admit_user("alice", "c1", **limits) == Admitted()
    await advance(1.2)
    await engine.renew([conn("alice", "c0"), conn("bob", "c0")], lease_seconds=2, max_connections=10)
    await advance(1.2)
    # Past the first lease: the renewed slots live, the one not renewed is gone.
    assert await engine.count_connections("alice") == 1
    assert await engine.count_connections("bob") == 1
    await advance(1.2)
    # No renewal came (a killed worker): the lease ran out.
    assert await engine.count_connections("alice") == 0
    await engine.renew([], lease_seconds=2, max_connections=10)


async def test_renew_revives_an_open_connection_whose_lease_ran_out(
    engine: Engine, advance: Advance
) -> None:
    limits = {**LIMITS, "max_connections": 2, "lease_seconds": 1}
    open_conn = conn("alice", "open", at=1)
    assert await engine.admit_user("alice", "open", **limits, info=open_conn) == Admitted()
    # Renewals could not get through for longer than the lease (an outage): the slot is gone...
    await advance(1.1)
    assert await engine.count_connections("alice") == 0
    assert await engine.list_connections("alice") == []
    # ...and meanwhile another connection took one of the two slots.
    newer = conn("alice", "newer", at=2)
    assert await engine.admit_user("alice", "newer", **limits, info=newer) == Admitted()
    # The connection is still open and there is room: the next renewal counts it again.
    assert await engine.renew([open_conn], lease_seconds=30, max_connections=2) == []
    assert await engine.count_connections("alice") == 2
    assert await engine.list_connections("alice") == [open_conn, newer]
    assert await engine.admit_user("alice", "third", **limits) == Refused(Code.CONNECTION_LIMIT)
    # Renewing a live slot again takes no second slot.
    assert await engine.renew([open_conn], lease_seconds=30, max_connections=2) == []
    assert await engine.count_connections("alice") == 2


async def test_renew_never_revives_a_slot_past_the_limit(engine: Engine, advance: Advance) -> None:
    limits = {**LIMITS, "max_connections": 2, "lease_seconds": 1}
    first, second = conn("alice", "first", at=1), conn("alice", "second", at=2)
    for row in (first, second):
        assert await engine.admit_user("alice", row.conn_id, **limits, info=row) == Admitted()
    # An outage longer than the lease on this worker; other workers admitted two in their place.
    await advance(1.1)
    others = [conn("alice", "o1", at=3), conn("alice", "o2", at=4)]
    for row in others:
        assert await engine.admit_user("alice", row.conn_id, **limits, info=row) == Admitted()
    # Both lapsed connections are handed back for closing: the user stays at two.
    refused = await engine.renew([first, second], lease_seconds=30, max_connections=2)
    assert refused == [first, second]
    assert await engine.count_connections("alice") == 2
    assert {row.conn_id for row in await engine.list_connections("alice")} == {"o1", "o2"}
    # One of the others leaves: one lapsed connection fits again, live slots counted first.
    await engine.release("alice", "o1")
    assert await engine.renew([first, second, *others[1:]], lease_seconds=30,
                              max_connections=2) == [second]
    assert await engine.count_connections("alice") == 2
    assert {row.conn_id for row in await engine.list_connections("alice")} == {"first", "o2"}


async def test_renew_revives_a_slot_of_a_user_with_no_state_left(
    engine: Engine, advance: Advance
) -> None:
    assert await engine.admit_user("bob", "c0", **{**LIMITS, "lease_seconds": 1}) == Admitted()
    await advance(1.1)
    # Every key of bob is gone (on Redis they expired); renewing still brings the slot back.
    await engine.renew([conn("bob", "c0"), conn("carol", "c9")], lease_seconds=1, max_connections=10)
    assert await engine.count_connections("bob") == 1
    assert await engine.count_connections("carol") == 1
    assert await engine.list_connections("bob") == [conn("bob", "c0")]
    # Once renewals stop, the revived slot expires as any other.
    await advance(1.1)
    assert await engine.count_connections("bob") == 0
    assert await engine.list_connections() == []


async def test_a_renewal_arriving_after_a_release_does_not_take_the_slot_back(
    engine: Engine, advance: Advance
) -> None:
    limits = {**LIMITS, "max_connections": 2, "lease_seconds": 1}
    closed, other = conn("alice", "closed"), conn("alice", "other")
    for row in (closed, other):
        assert await engine.admit_user("alice", row.conn_id, **limits, info=row) == Admitted()
    # The worker listed both connections for a renewal; "closed" closed and its release reached
    # the store first (another Redis connection). The renewal must not revive a closed slot.
    await engine.release("alice", "closed")
    assert await engine.renew([closed, other], lease_seconds=1, max_connections=2) == []
    assert await engine.count_connections("alice") == 1
    assert await engine.list_connections("alice") == [other]
    # Nor after its lease would have run out, nor past the limit (nothing to refuse: it is closed).
    await advance(1.1)
    assert await engine.renew([closed, other], lease_seconds=30, max_connections=1) == []
    assert await engine.list_connections("alice") == [other]
    # Admitted again (the same conn_id), it is live again and renewed as any other.
    assert await engine.admit_user("alice", "closed", **limits, info=closed) == Admitted()
    assert await engine.renew([closed, other], lease_seconds=30, max_connections=2) == []
    assert await engine.count_connections("alice") == 2
    # The mark is per user: bob's "closed" was never released.
    assert await engine.renew([conn("bob", "closed")], lease_seconds=30, max_connections=2) == []
    assert await engine.count_connections("bob") == 1


async def test_user_rate_limit_reports_when_the_oldest_attempt_leaves(engine: Engine) -> None:
    limits = {**LIMITS, "rate_limit": 3, "max_connections": 100}
    for n in range(3):
        assert await engine.admit_user("alice", f"c{n}", **limits, window=60) == Admitted()
    verdict = await engine.admit_user("alice", "c3", **limits, window=60)
    assert verdict == Refused(Code.RATE_LIMITED, 60)
    # A refused attempt takes no slot.
    assert await engine.count_connections("alice") == 3


async def test_ip_rate_limit_and_window_slides(engine: Engine, advance: Advance) -> None:
    assert await engine.check_ip("10.0.0.1", limit=2, window=2) == Admitted()
    await advance(1.0)
    assert await engine.check_ip("10.0.0.1", limit=2, window=2) == Admitted()
    # The oldest attempt leaves the window in ~1 s.
    assert await engine.check_ip("10.0.0.1", limit=2, window=2) == Refused(Code.RATE_LIMITED, 1)
    assert await engine.check_ip("10.0.0.2", limit=2, window=2) == Admitted()
    await advance(1.05)
    # Only the first attempt has left: one more is allowed, then the second one bounds the window.
    assert await engine.check_ip("10.0.0.1", limit=2, window=2) == Admitted()
    assert await engine.check_ip("10.0.0.1", limit=2, window=2) == Refused(Code.RATE_LIMITED, 1)


async def test_refused_attempts_do_not_count(engine: Engine, advance: Advance) -> None:
    limits = {**LIMITS, "rate_limit": 1, "max_connections": 100}
    assert await engine.check_ip("10.0.0.1", limit=1, window=2) == Admitted()
    assert await engine.admit_user("alice", "c0", **limits, window=2) == Admitted()
    await advance(1.0)
    for n in range(5):
        assert isinstance(await engine.check_ip("10.0.0.1", limit=1, window=2), Refused)
        verdict = await engine.admit_user("alice", f"x{n}", **limits, window=2)
        assert verdict == Refused(Code.RATE_LIMITED, 1)
    assert await engine.count_connections("alice") == 1
    await advance(1.05)
    # Had the refused attempts (at t=1) counted, they would still fill the window.
    assert await engine.check_ip("10.0.0.1", limit=1, window=2) == Admitted()
    assert await engine.admit_user("alice", "c1", **limits, window=2) == Admitted()


async def test_connection_limit_refusals_do_not_count_as_attempts(engine: Engine) -> None:
    limits = {**LIMITS, "rate_limit": 3, "max_connections": 1}
    assert await engine.admit_user("alice", "c0", **limits) == Admitted()
    for n in range(5):
        verdict = await engine.admit_user("alice", f"x{n}", **limits)
        assert verdict == Refused(Code.CONNECTION_LIMIT)
    await engine.release("alice", "c0")
    assert await engine.admit_user("alice", "c1", **limits) == Admitted()


async def test_ip_ban_expires(engine: Engine, advance: Advance) -> None:
    await engine.ban_ip("10.0.0.9", seconds=1)
    assert await engine.check_ip("10.0.0.9", limit=100) == Refused(Code.IP_BANNED, 1)
    assert await engine.check_ip("10.0.0.8", limit=100) == Admitted()
    await advance(1.1)
    assert await engine.check_ip("10.0.0.9", limit=100) == Admitted()


async def test_unban_lifts_a_ban(engine: Engine) -> None:
    await engine.ban_ip("10.0.0.9", seconds=600)
    assert await engine.check_ip("10.0.0.9", limit=100) == Refused(Code.IP_BANNED, 600)
    await engine.unban_ip("10.0.0.9")
    assert await engine.check_ip("10.0.0.9", limit=100) == Admitted()


async def test_one_address_has_one_ban_whatever_its_spelling(engine: Engine) -> None:
    await engine.ban_ip("::ffff:192.0.2.7", seconds=60)
    assert isinstance(await engine.check_ip("192.0.2.7", limit=100), Refused)
    await engine.ban_ip("2001:DB8:0:0::1", seconds=60)
    assert isinstance(await engine.check_ip("2001:db8::1", limit=100), Refused)


async def test_auth_failures_ban_at_threshold(engine: Engine, advance: Advance) -> None:
    fail = {"threshold": 3, "window": 60, "ban_seconds": 1}
    assert await engine.record_auth_failure("10.0.0.5", **fail) is False
    assert await engine.record_auth_failure("10.0.0.5", **fail) is False
    assert await engine.record_auth_failure("10.0.0.6", **fail) is False
    assert await engine.check_ip("10.0.0.5", limit=100) == Admitted()
    assert await engine.record_auth_failure("10.0.0.5", **fail) is True
    assert await engine.check_ip("10.0.0.5", limit=100) == Refused(Code.IP_BANNED, 1)
    # Already banned: this call did not ban it.
    assert await engine.record_auth_failure("10.0.0.5", **fail) is False
    assert await engine.check_ip("10.0.0.6", limit=100) == Admitted()
    await advance(1.1)
    assert await engine.check_ip("10.0.0.5", limit=100) == Admitted()
    # Counting started afresh with the ban.
    assert await engine.record_auth_failure("10.0.0.5", **fail) is False


async def test_auth_failures_slide_out_of_their_window(engine: Engine, advance: Advance) -> None:
    fail = {"threshold": 2, "window": 1, "ban_seconds": 60}
    assert await engine.record_auth_failure("10.0.0.5", **fail) is False
    await advance(1.05)
    assert await engine.record_auth_failure("10.0.0.5", **fail) is False
    assert await engine.record_auth_failure("10.0.0.5", **fail) is True


async def test_unban_clears_the_failure_count(engine: Engine) -> None:
    fail = {"threshold": 2, "window": 60, "ban_seconds": 60}
    assert await engine.record_auth_failure("10.0.0.5", **fail) is False
    await engine.unban_ip("10.0.0.5")
    # Without the earlier failure, this one is the first again.
    assert await engine.record_auth_failure("10.0.0.5", **fail) is False


async def test_publish_reaches_the_subscriber(
    engine: Engine, events: asyncio.Queue[ControlEvent]
) -> None:
    sent = ControlEvent("revoke_sub", {"sub": "alice", "issued_before": 1_700_000_000})
    await engine.publish(sent)
    assert await asyncio.wait_for(events.get(), 2) == sent
    await engine.publish(ControlEvent("kick", {"sub": "bob"}))
    assert await asyncio.wait_for(events.get(), 2) == ControlEvent("kick", {"sub": "bob"})


async def test_check_ip_is_fast(engine: Engine) -> None:
    started = time.monotonic()
    for _ in range(50):
        await engine.check_ip("10.1.1.1", limit=1000)
    assert time.monotonic() - started < 1.0
