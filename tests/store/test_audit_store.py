"""The admin audit trail in the store, on SQLite and PostgreSQL: write, page newest first, filter,
scope by tenant, prune with the security events' retention."""

from __future__ import annotations

from datetime import timedelta

from app.store import Store, prune
from app.store.audit import add_audit, query_audit
from tests.store.conftest import T0


async def _add(store: Store, minutes: float, **fields: str | None) -> None:
    values: dict[str, str | None] = {"actor": "root", "tenant": None, "action": "ban",
                                     "target": "192.0.2.0/24", "outcome": "ok"}
    values.update(fields)
    await add_audit(store, at=T0 + timedelta(minutes=minutes), client_ip="192.0.2.9", **values)  # type: ignore[arg-type]


async def test_pages_filters_and_tenant_scope(store: Store) -> None:
    for minute in range(5):
        await _add(store, minute, target=f"t{minute}")
    await _add(store, 5, actor="acme-admin", tenant="acme", action="disconnect", target="bob")
    await _add(store, 6, actor=None, outcome="token_missing")
    everything = await query_audit(store)
    assert [e.target for e in everything] == ["192.0.2.0/24", "bob", "t4", "t3", "t2", "t1", "t0"]
    first = await query_audit(store, limit=3)
    rest = await query_audit(store, limit=10, before=first[-1].cursor)
    assert first + rest == everything
    assert [e.target for e in await query_audit(store, tenant="acme")] == ["bob"]
    assert [e.outcome for e in await query_audit(store, actor="root", action="ban", limit=1)] == ["ok"]
    assert len(await query_audit(store, since=T0 + timedelta(minutes=4))) == 3


async def test_hostile_text_is_stored_cut_and_clean(store: Store) -> None:
    await _add(store, 0, actor="x" * 1000, target="a\x00b" + "y" * 2000)
    (entry,) = await query_audit(store)
    assert entry.actor == "x" * 256 and entry.target is not None and len(entry.target) == 512
    assert "\x00" not in entry.target


async def test_retention_prunes_old_entries_with_the_events(store: Store) -> None:
    await _add(store, -31 * 24 * 60, target="old")
    await _add(store, 0, target="new")
    result = await prune(store, days=30, now=T0)
    assert result.audit == 1
    assert [e.target for e in await query_audit(store)] == ["new"]
