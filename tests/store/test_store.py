"""The Store on both back ends: bans, revocations, events (batch, filters, pages), pruning."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select, text

from app.revocations import RevocationList
from app.store import MAX_EVENT_LIMIT, BanRecord, RevocationRecord, Store, StoredEvent
from app.store import db as db_module
from app.store.models import SecurityEventRow
from app.tokens import Principal
from tests.store.conftest import T0, FakeClock, make_event


async def count_events(store: Store) -> int:
    async with store.engine.connect() as conn:
        return int((await conn.execute(select(func.count(SecurityEventRow.id)))).scalar_one())


# -- lifecycle -------------------------------------------------------------------------------


async def test_ping_and_close(store: Store) -> None:
    assert await store.ping()
    await store.close()
    assert not await store.ping()
    await store.close()  # idempotent
    with pytest.raises(RuntimeError, match="not open"):
        await store.list_bans()


async def test_ping_is_false_when_the_server_is_unreachable() -> None:
    async with Store("postgresql+asyncpg://nobody@127.0.0.1:1/nothing") as st:
        assert not await st.ping(seconds=2)


async def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(store: Store) -> None:
    if store.dialect != "sqlite":
        return
    async with store.engine.connect() as conn:
        assert (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar() == "wal"
        assert (await conn.exec_driver_sql("PRAGMA busy_timeout")).scalar() == 5000


async def test_concurrent_writers_share_one_database(store: Store, database_url: str) -> None:
    """Several workers (here: several stores) write at once without 'database is locked'."""
    others = [Store(database_url) for _ in range(3)]
    for other in others:
        await other.open()
    try:
        batches = [[make_event(T0, detail=f"{w}-{i}") for i in range(50)] for w in range(4)]
        await asyncio.gather(
            *(st.add_events(b) for st, b in zip([store, *others], batches, strict=True))
        )
    finally:
        for other in others:
            await other.close()
    assert await count_events(store) == 200


# -- bans ------------------------------------------------------------------------------------


async def test_ban_crud(store: Store, clock: FakeClock) -> None:
    ban = await store.add_ban("10.1.2.3/8", "scanner", "admin-1")
    assert isinstance(ban, BanRecord)
    assert ban.cidr == "10.0.0.0/8"
    assert ban.created_at == T0 and ban.expires_at is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        ban.reason = "x"  # type: ignore[misc]

    clock.advance(microseconds=1)  # listed oldest first
    single = await store.add_ban(" 2001:db8::1 ", "", "admin-1", expires_at=T0 + timedelta(hours=1))
    assert single.cidr == "2001:db8::1/128"
    assert single.expires_ts == (T0 + timedelta(hours=1)).timestamp()

    listed = await store.list_bans()
    assert listed == [ban, single]  # exact round trip, datetimes aware UTC
    assert all(b.created_at.tzinfo is UTC for b in listed)

    clock.advance(hours=2)
    assert await store.list_bans() == [ban]
    assert await store.list_bans(include_expired=True) == [ban, single]

    assert await store.delete_ban(ban.id) is True
    assert await store.delete_ban(ban.id) is False
    assert await store.delete_ban("no-such-id") is False
    assert await store.list_bans(include_expired=True) == [single]


async def test_ban_input_is_validated_not_altered(store: Store) -> None:
    with pytest.raises(ValueError, match="not an IP"):
        await store.add_ban("10.0.0.300", "r", "a")
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.add_ban("10.0.0.1", "r", "a", expires_at=datetime(2030, 1, 1))
    with pytest.raises(ValueError, match="longer than"):
        await store.add_ban("10.0.0.1", "r" * 513, "a")
    with pytest.raises(ValueError, match="cannot be stored"):
        await store.add_ban("10.0.0.1", "a\x00b", "a")
    with pytest.raises(ValueError, match="cannot be stored"):
        await store.add_ban("10.0.0.1", "a\ud800b", "a")
    assert await store.list_bans(include_expired=True) == []


async def test_created_by_is_audit_metadata_made_storable(store: Store) -> None:
    ban = await store.add_ban("10.0.0.1", "r", "admin\x00" + "x" * 1000)
    assert ban.created_by.startswith("admin\ufffd") and len(ban.created_by) == 256
    assert await store.list_bans() == [ban]
    long_ok = await store.add_revocation(jti="j" * 256, sub=None, created_by="a" * 300)
    assert len(long_ok.created_by) == 256 and long_ok.jti == "j" * 256


async def test_non_utc_datetimes_come_back_as_the_same_instant_in_utc(store: Store) -> None:
    paris = timezone(timedelta(hours=2))
    expires = datetime(2030, 6, 1, 14, 0, 0, 123456, tzinfo=paris)
    ban = await store.add_ban("192.0.2.0/24", "r", "a", expires_at=expires)
    (listed,) = await store.list_bans()
    assert listed.expires_at == expires == ban.expires_at
    assert listed.expires_at is not None and listed.expires_at.utcoffset() == timedelta(0)


# -- revocations -----------------------------------------------------------------------------


async def test_revocation_crud(store: Store, clock: FakeClock) -> None:
    by_jti = await store.add_revocation(
        jti="j-1", reason="leaked", created_by="admin-1", expires_at=T0 + timedelta(minutes=5)
    )
    assert isinstance(by_jti, RevocationRecord)
    assert (by_jti.jti, by_jti.sub, by_jti.issued_before) == ("j-1", None, None)

    clock.advance(seconds=1)
    by_sub = await store.add_revocation(sub="agent-7", created_by="admin-1")
    # Fixed at creation, so that it means the same after a restart.
    assert by_sub.issued_before == T0 + timedelta(seconds=1)
    clock.advance(seconds=1)
    cutoff = T0 - timedelta(days=1)
    by_sub_before = await store.add_revocation(sub="agent-8", issued_before=cutoff, created_by="a")

    assert await store.list_revocations() == [by_jti, by_sub, by_sub_before]
    clock.advance(minutes=10)
    assert await store.list_revocations() == [by_sub, by_sub_before]
    assert await store.list_revocations(active_only=False) == [by_jti, by_sub, by_sub_before]


async def test_revoking_a_jti_twice_returns_the_first_entry(store: Store) -> None:
    first = await store.add_revocation(jti="dup", reason="one", created_by="a")
    again = await store.add_revocation(jti="dup", reason="two", created_by="b")
    assert again == first
    both = await asyncio.gather(
        store.add_revocation(jti="race", created_by="a"),
        store.add_revocation(jti="race", created_by="b"),
    )
    assert both[0] == both[1]
    assert len(await store.list_revocations()) == 2


async def test_revocation_arguments_are_checked(store: Store) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        await store.add_revocation(created_by="a")
    with pytest.raises(ValueError, match="exactly one"):
        await store.add_revocation(jti="j", sub="s", created_by="a")
    with pytest.raises(ValueError, match="goes with sub"):
        await store.add_revocation(jti="j", issued_before=T0, created_by="a")
    with pytest.raises(ValueError, match="longer than"):
        await store.add_revocation(jti="j" * 257, created_by="a")
    with pytest.raises(ValueError, match="cannot be stored"):
        await store.add_revocation(jti="j\x00", created_by="a")
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.add_revocation(sub="s", issued_before=datetime(2030, 1, 1), created_by="a")
    assert await store.list_revocations(active_only=False) == []


async def test_stored_revocations_feed_the_in_memory_list(store: Store) -> None:
    await store.add_revocation(jti="j-1", created_by="a")
    await store.add_revocation(sub="agent-7", issued_before=T0, created_by="a")
    revoked = RevocationList(clock=T0.timestamp)
    for record in await store.list_revocations():
        revoked.add(record.to_revocation())

    def principal(sub: str, iat: datetime, jti: str | None = None) -> Principal:
        return Principal(
            sub=sub,
            roles=frozenset({"agent"}),
            tenant=None,
            jti=jti,
            exp=iat.timestamp() + 600,
            iat=iat.timestamp(),
            fingerprint="f",
        )

    assert revoked.is_revoked(principal("x", T0, jti="j-1"))
    assert revoked.is_revoked(principal("agent-7", T0 - timedelta(seconds=1)))
    assert not revoked.is_revoked(principal("agent-7", T0 + timedelta(seconds=1)))


# -- events ----------------------------------------------------------------------------------


async def test_events_batch_insert_and_filters(store: Store) -> None:
    events = [
        make_event(T0 + timedelta(seconds=1), "token_invalid", claimed_sub="mallory"),
        make_event(T0 + timedelta(seconds=2), "token_revoked", verified_sub="agent-1", jti="j1"),
        make_event(T0 + timedelta(seconds=3), "ip_banned", client_ip="203.0.113.9"),
        make_event(T0 + timedelta(seconds=4), "token_invalid", verified_sub="agent-1"),
    ]
    assert await store.add_events(events) == 4
    assert await store.add_events([]) == 0

    newest_first = await store.query_events()
    assert [e.at for e in newest_first] == [T0 + timedelta(seconds=s) for s in (4, 3, 2, 1)]
    assert all(isinstance(e, StoredEvent) and e.at.tzinfo is UTC for e in newest_first)
    revoked = newest_first[2]
    assert (revoked.code, revoked.verified_sub, revoked.jti) == ("token_revoked", "agent-1", "j1")
    assert revoked.event == "ws.auth_failed" and revoked.endpoint == "/ws/agent"
    assert revoked.worker == events[1].worker

    assert [e.code for e in await store.query_events(code="token_invalid")] == ["token_invalid"] * 2
    assert len(await store.query_events(sub="agent-1")) == 2
    assert [e.claimed_sub for e in await store.query_events(sub="mallory")] == ["mallory"]
    assert len(await store.query_events(code="token_invalid", sub="agent-1")) == 1
    since = await store.query_events(since=T0 + timedelta(seconds=3))
    assert [e.at for e in since] == [T0 + timedelta(seconds=4), T0 + timedelta(seconds=3)]
    until = await store.query_events(until=T0 + timedelta(seconds=2))
    assert [e.at for e in until] == [T0 + timedelta(seconds=1)]
    assert await store.query_events(code="nothing") == []


async def test_events_pages_cover_everything_once_even_with_equal_timestamps(store: Store) -> None:
    # 25 events on 5 distinct instants: pages of 7 cut through groups of equal `at`.
    await store.add_events(
        [make_event(T0 + timedelta(seconds=i // 5), detail=str(i)) for i in range(25)]
    )
    seen: list[StoredEvent] = []
    page = await store.query_events(limit=7)
    while page:
        seen.extend(page)
        page = await store.query_events(limit=7, before=page[-1].cursor)
    assert len(seen) == 25
    assert len({e.id for e in seen}) == 25
    keys = [(e.at, e.id) for e in seen]
    assert keys == sorted(keys, reverse=True)


async def test_events_limit_is_clamped(store: Store) -> None:
    await store.add_events([make_event(T0) for _ in range(MAX_EVENT_LIMIT + 20)])
    assert len(await store.query_events(limit=10_000)) == MAX_EVENT_LIMIT
    assert len(await store.query_events(limit=0)) == 1


async def test_hostile_event_text_is_sanitised_and_truncated(store: Store) -> None:
    await store.add_events(
        [
            make_event(
                T0,
                claimed_sub="evil\x00sub\ud800",
                user_agent="u" * 5000,
                detail="d" * 5000,
                origin="https://" + "o" * 400,
            )
        ]
    )
    (event,) = await store.query_events()
    assert event.claimed_sub is not None and "\x00" not in event.claimed_sub
    assert event.claimed_sub.startswith("evil")
    assert event.user_agent == "u" * 512
    assert event.detail == "d" * 1024
    assert event.origin is not None and len(event.origin) == 255


# -- pruning ---------------------------------------------------------------------------------


async def test_prune_events(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(db_module, "PRUNE_CHUNK", 7)  # several chunks
    old = [make_event(T0 - timedelta(days=40, seconds=i)) for i in range(20)]
    recent = [make_event(T0 - timedelta(days=1)) for _ in range(3)]
    await store.add_events(old + recent)
    assert await store.prune_events(T0 - timedelta(days=30)) == 20
    assert await count_events(store) == 3
    assert await store.prune_events(T0 - timedelta(days=30)) == 0


async def test_prune_expired_bans_and_revocations(store: Store, clock: FakeClock) -> None:
    keep = await store.add_ban("10.0.0.1", "r", "a")
    await store.add_ban("10.0.0.2", "r", "a", expires_at=T0 - timedelta(seconds=1))
    clock.advance(microseconds=1)  # listed oldest first
    later = await store.add_ban("10.0.0.3", "r", "a", expires_at=T0 + timedelta(hours=1))
    await store.add_revocation(jti="old", created_by="a", expires_at=T0 - timedelta(seconds=1))
    live = await store.add_revocation(jti="live", created_by="a")
    clock.now = T0
    assert await store.prune_expired() == (1, 1)
    assert await store.list_bans(include_expired=True) == [keep, later]
    assert await store.list_revocations(active_only=False) == [live]
    assert await store.prune_expired(T0 + timedelta(days=1)) == (1, 0)


async def test_datetimes_must_be_aware(store: Store) -> None:
    naive = datetime(2030, 1, 1)
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.query_events(since=naive)
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.prune_events(naive)


async def test_no_table_is_created_by_the_store(database_url: str) -> None:
    """The schema belongs to the migrations: an unmigrated database is not silently set up."""
    async with Store(database_url) as st:
        assert await st.ping()
        with pytest.raises(Exception, match="security_events"):
            await st.query_events()
        async with st.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
