"""The admin audit trail in the store (table ``admin_audit``): write one entry, read pages newest
first, prune by age.

Guarantees: every value is made storable and cut to its column (actors and targets may come from
refused, unauthenticated requests: hostile text must not make the write fail); times are aware
UTC; ``query_audit`` pages by the (``at``, ``id``) keyset, like the security events.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Table, insert, or_, select

from app.store.db import MAX_EVENT_LIMIT, Store, _aware, _clipped, prune_rows
from app.store.models import AdminAuditRow
from app.store.records import AuditEntry, EventCursor

_AUDIT: Table = AdminAuditRow.__table__  # type: ignore[assignment]


async def add_audit(
    store: Store, *, at: datetime, actor: str | None, tenant: str | None, action: str,
    target: str | None, outcome: str, client_ip: str,
) -> AuditEntry:
    """Store one entry and return it (with its id)."""
    values = {
        "at": _aware("at", at),
        "actor": _clipped("actor", actor),
        "tenant": _clipped("tenant", tenant),
        "action": _clipped("action", action) or "",
        "target": _clipped("target", target),
        "outcome": _clipped("outcome", outcome) or "",
        "client_ip": _clipped("client_ip", client_ip) or "",
    }
    async with store.engine.begin() as conn:
        result = await conn.execute(insert(_AUDIT).values(**values).returning(_AUDIT.c.id))
        ident = int(result.scalar_one())
    return AuditEntry(id=ident, **values)  # type: ignore[arg-type]


async def query_audit(
    store: Store,
    *,
    actor: str | None = None,
    action: str | None = None,
    since: datetime | None = None,
    before: EventCursor | None = None,
    limit: int = 100,
    tenant: str | None = None,
) -> list[AuditEntry]:
    """Entries newest first; ``since`` inclusive; ``before`` (the last entry's ``cursor``) for
    the next page; ``limit`` clamped to 1..500; ``tenant`` keeps that tenant's entries only."""
    limit = max(1, min(int(limit), MAX_EVENT_LIMIT))
    c = _AUDIT.c
    query = select(_AUDIT).order_by(c.at.desc(), c.id.desc()).limit(limit)
    if actor is not None:
        query = query.where(c.actor == actor)
    if action is not None:
        query = query.where(c.action == action)
    if tenant is not None:
        query = query.where(c.tenant == tenant)
    if since is not None:
        query = query.where(c.at >= _aware("since", since))
    if before is not None:
        at = _aware("before.at", before.at)
        query = query.where(or_(c.at < at, (c.at == at) & (c.id < before.id)))
    async with store.engine.connect() as conn:
        rows = (await conn.execute(query)).mappings().all()
    return [AuditEntry(**row) for row in rows]


async def prune_audit(store: Store, older_than: datetime) -> int:
    """Delete entries with ``at < older_than`` in chunks (short transactions); how many."""
    return await prune_rows(store.engine, _AUDIT, older_than)
