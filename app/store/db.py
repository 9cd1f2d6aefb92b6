"""The store: bans, revocations and security events in SQLite or PostgreSQL (SQLAlchemy async).

Guarantees:

* Callers get frozen dataclasses (:mod:`app.store.records`), never ORM objects or sessions; every
  method runs in its own short transaction (committed on return, rolled back on error).
* All datetimes in and out are timezone-aware UTC; a naive datetime is refused (ValueError).
* Operator input (bans, revocations) is validated, never silently altered: a bad CIDR, an overlong
  string or a character the database cannot hold (NUL, lone surrogates) raises ValueError. Only
  ``created_by`` (the admin's ``sub``, audit metadata) is made storable and cut to 256 instead.
  Security events, which carry attacker-controlled text, are sanitised and truncated too, so one
  hostile value cannot make a whole batch fail.
* SQLite runs in WAL mode with a busy timeout, so several workers can share one file; the
  directory of the database file is created if missing.
* Writes start with a write statement (no read-then-upgrade), so SQLite's busy handler applies.
* The store does not create the schema: run the migrations (``hubctl migrate``) first.
"""

from __future__ import annotations

import asyncio
import ipaddress
import sqlite3
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from sqlalchemy import Table, delete, event, insert, or_, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.logs import get_logger
from app.security_log import SecurityEvent
from app.store.models import LIMITS, IpBanRow, RevocationRow, SecurityEventRow
from app.store.records import BanRecord, EventCursor, RevocationRecord, StoredEvent

log = get_logger("app.store")

MAX_EVENT_LIMIT = 500
PRUNE_CHUNK = 5_000
_EVENTS: Table = SecurityEventRow.__table__  # type: ignore[assignment]
_BANS: Table = IpBanRow.__table__  # type: ignore[assignment]
_REVOCATIONS: Table = RevocationRow.__table__  # type: ignore[assignment]


async def prune_rows(engine: AsyncEngine, table: Table, older_than: datetime) -> int:
    """Delete the rows of ``table`` (with ``id`` and ``at`` columns) whose ``at < older_than``, in
    chunks of ``PRUNE_CHUNK``, each its own transaction so no lock is held for long; how many."""
    cutoff = _aware("older_than", older_than)
    c = table.c
    total = 0
    while True:
        chunk = select(c.id).where(c.at < cutoff).order_by(c.at).limit(PRUNE_CHUNK)
        async with engine.begin() as conn:
            result = await conn.execute(delete(table).where(c.id.in_(chunk)))
        total += result.rowcount
        if result.rowcount < PRUNE_CHUNK:
            return total


def utcnow() -> datetime:
    return datetime.now(UTC)


def ensure_sqlite_directory(database_url: str) -> None:
    """Create the parent directory of a SQLite database file (no-op for other back ends)."""
    url = make_url(database_url)
    database = url.database
    if url.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return
    if database.startswith("file:"):  # a URI filename; leave it to SQLite
        return
    Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def _aware(name: str, value: datetime | None) -> datetime | None:
    if value is not None and (value.tzinfo is None or value.utcoffset() is None):
        raise ValueError(f"{name} must be a timezone-aware datetime")
    return value


def _storable(text_: str) -> bool:
    if "\x00" in text_:
        return False
    try:
        text_.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _checked(name: str, value: str) -> str:
    """Operator input: refuse what would be truncated or rejected by the database."""
    if len(value) > LIMITS[name]:
        raise ValueError(f"{name} is longer than {LIMITS[name]} characters")
    if not _storable(value):
        raise ValueError(f"{name} contains characters that cannot be stored")
    return value


def _clipped(name: str, value: str | None) -> str | None:
    """Untrusted event text: make it storable and cut it to the column's length."""
    if value is None:
        return None
    value = str(value)
    if not _storable(value):
        value = value.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")
    return value[: LIMITS[name]]


def _event_row(ev: SecurityEvent) -> dict[str, Any]:
    return {
        "at": datetime.fromtimestamp(ev.at, UTC),
        "event": _clipped("event", ev.event) or "",
        "code": _clipped("code", str(ev.code)) or "",
        "endpoint": _clipped("endpoint", ev.endpoint) or "",
        "client_ip": _clipped("client_ip", ev.client_ip) or "",
        "claimed_sub": _clipped("claimed_sub", ev.claimed_sub),
        "verified_sub": _clipped("verified_sub", ev.verified_sub),
        "jti": _clipped("jti", ev.jti),
        "fingerprint": _clipped("fingerprint", ev.fingerprint),
        "user_agent": _clipped("user_agent", ev.user_agent),
        "origin": _clipped("origin", ev.origin),
        "detail": _clipped("detail", ev.detail),
        "worker": _clipped("worker", ev.worker),
        "tenant": _clipped("tenant", ev.tenant),
        "count": max(1, ev.count),
    }


class Store:
    """Repository over one database. ``open()`` before use, ``close()`` at the end.

    ``engine_options`` go to :func:`sqlalchemy.ext.asyncio.create_async_engine` (over the
    defaults); ``clock`` gives "now" (aware UTC) for ``created_at`` and expiry checks.
    Safe to share between tasks of one event loop; not between event loops.
    """

    def __init__(
        self,
        database_url: str,
        *,
        engine_options: Mapping[str, Any] | None = None,
        clock: Callable[[], datetime] = utcnow,
        sqlite_busy_timeout_ms: int = 5_000,
    ) -> None:
        self._url = database_url
        self._options = dict(engine_options or {})
        self._clock = clock
        self._busy_timeout_ms = int(sqlite_busy_timeout_ms)
        self._engine: AsyncEngine | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("the store is not open")
        return self._engine

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return make_url(self._url).get_backend_name()

    async def open(self) -> None:
        """Create the engine (idempotent). Does not connect: a database that is down at start
        shows in :meth:`ping` (``/readyz``) and in the calls that need it."""
        if self._engine is not None:
            return
        is_sqlite = self.dialect == "sqlite"
        options: dict[str, Any] = {} if is_sqlite else {"pool_pre_ping": True}
        options.update(self._options)
        if is_sqlite:
            ensure_sqlite_directory(self._url)
        engine = create_async_engine(self._url, **options)
        if is_sqlite:
            event.listen(engine.sync_engine, "connect", self._sqlite_pragmas)
        self._engine = engine

    def _sqlite_pragmas(self, dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout={self._busy_timeout_ms}")
            # WAL is kept in the database file: set it only where it is not yet (a fresh
            # connection knows the file's mode once it has read it: schema_version reads it).
            cursor.execute("PRAGMA schema_version")
            cursor.execute("PRAGMA journal_mode")
            row = cursor.fetchone()
            if row is None or str(row[0]).lower() != "wal":
                try:
                    cursor.execute("PRAGMA journal_mode=WAL")
                except sqlite3.OperationalError as exc:
                    # 'database is locked' at once, without the busy wait, while other
                    # connections write: the file is in use, and its mode is the one the first
                    # connection set. This connection works in that mode either way.
                    log.info("store.wal_pragma_busy", error=str(exc))
            cursor.execute("PRAGMA synchronous=NORMAL")
        finally:
            cursor.close()

    async def close(self) -> None:
        """Dispose of the engine and its pooled connections (idempotent)."""
        engine, self._engine = self._engine, None
        if engine is not None:
            await engine.dispose()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def ping(self, seconds: float = 2.0) -> bool:
        """True when a ``SELECT 1`` succeeds within ``seconds``; never raises."""
        if self._engine is None:
            return False
        try:
            async with asyncio.timeout(seconds), self._engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as exc:
            log.debug("store.ping_failed", error=type(exc).__name__)
            return False
        return True

    # -- bans --------------------------------------------------------------------------------

    async def add_ban(
        self, cidr: str, reason: str, created_by: str, expires_at: datetime | None = None
    ) -> BanRecord:
        """Store a ban; the CIDR is normalised (a bare address becomes /32 or /128)."""
        try:
            network = ipaddress.ip_network(cidr.strip(), strict=False)
        except ValueError:
            raise ValueError(f"{cidr!r} is not an IP address or CIDR") from None
        record = BanRecord(
            id=uuid.uuid4().hex,
            cidr=str(network),
            reason=_checked("reason", reason),
            created_by=_clipped("created_by", created_by) or "",
            created_at=self._clock(),
            expires_at=_aware("expires_at", expires_at),
        )
        async with self.engine.begin() as conn:
            await conn.execute(insert(_BANS).values(**_fields(record)))
        return record

    async def list_bans(self, include_expired: bool = False) -> list[BanRecord]:
        """Bans, oldest first; by default only those not yet expired."""
        query = select(_BANS).order_by(_BANS.c.created_at, _BANS.c.id)
        if not include_expired:
            now = self._clock()
            query = query.where(or_(_BANS.c.expires_at.is_(None), _BANS.c.expires_at > now))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [BanRecord(**row) for row in rows]

    async def delete_ban(self, ban_id: str) -> bool:
        """Delete one ban; False when there was none with that id."""
        async with self.engine.begin() as conn:
            result = await conn.execute(delete(_BANS).where(_BANS.c.id == ban_id))
        return result.rowcount > 0

    # -- revocations -------------------------------------------------------------------------

    async def add_revocation(
        self,
        *,
        jti: str | None = None,
        sub: str | None = None,
        issued_before: datetime | None = None,
        reason: str = "",
        created_by: str,
        expires_at: datetime | None = None,
        tenant: str | None = None,
    ) -> RevocationRecord:
        """Revoke one token (``jti``) or every token of ``sub`` issued before ``issued_before``
        (default: now, fixed at this call so that it means the same after a restart).

        Exactly one of ``jti`` and ``sub`` is given. Revoking an already revoked ``jti`` is not an
        error: the existing entry is returned unchanged (even under concurrent calls); revoking it
        again for another ``tenant`` raises ValueError. ``tenant`` limits the revocation to that
        tenant's tokens (None: every tenant).
        """
        if (jti is None) == (sub is None):
            raise ValueError("give exactly one of jti and sub")
        if jti is not None and issued_before is not None:
            raise ValueError("issued_before goes with sub, not with jti")
        now = self._clock()
        if sub is not None and issued_before is None:
            issued_before = now
        record = RevocationRecord(
            id=uuid.uuid4().hex,
            jti=None if jti is None else _checked("jti", jti),
            sub=None if sub is None else _checked("sub", sub),
            issued_before=_aware("issued_before", issued_before),
            reason=_checked("reason", reason),
            created_by=_clipped("created_by", created_by) or "",
            created_at=now,
            expires_at=_aware("expires_at", expires_at),
            tenant=None if tenant is None else _checked("tenant", tenant),
        )
        try:
            async with self.engine.begin() as conn:
                await conn.execute(insert(_REVOCATIONS).values(**_fields(record)))
        except IntegrityError:
            if jti is None:
                raise
            existing = await self._revocation_by_jti(jti)
            if existing is None:  # deleted between the two statements: unlikely; report it
                raise
            if existing.tenant != record.tenant:
                # One row per jti: another scope's revocation is neither returned (it is another
                # tenant's) nor widened or narrowed silently.
                raise ValueError("this jti is already revoked for another tenant scope") from None
            return existing
        return record

    async def _revocation_by_jti(self, jti: str) -> RevocationRecord | None:
        async with self.engine.connect() as conn:
            row = (
                (await conn.execute(select(_REVOCATIONS).where(_REVOCATIONS.c.jti == jti)))
                .mappings()
                .first()
            )
        return None if row is None else RevocationRecord(**row)

    async def list_revocations(
        self, active_only: bool = True, *, tenant: str | None = None
    ) -> list[RevocationRecord]:
        """Revocations, oldest first; by default only those whose tokens may still be alive.
        With ``tenant``, only those limited to that tenant."""
        query = select(_REVOCATIONS).order_by(_REVOCATIONS.c.created_at, _REVOCATIONS.c.id)
        if tenant is not None:
            query = query.where(_REVOCATIONS.c.tenant == tenant)
        if active_only:
            now = self._clock()
            query = query.where(
                or_(_REVOCATIONS.c.expires_at.is_(None), _REVOCATIONS.c.expires_at > now)
            )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [RevocationRecord(**row) for row in rows]

    # -- security events ---------------------------------------------------------------------

    async def add_events(self, events: Sequence[SecurityEvent]) -> int:
        """Insert ``events`` in one transaction (one multi-row statement); returns how many.

        All or nothing: on an error none of the batch is stored and the error propagates.
        """
        if not events:
            return 0
        rows = [_event_row(ev) for ev in events]
        async with self.engine.begin() as conn:
            await conn.execute(insert(_EVENTS), rows)
        return len(rows)

    async def query_events(
        self,
        *,
        code: str | None = None,
        sub: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        before: EventCursor | None = None,
        limit: int = 100,
        tenant: str | None = None,
    ) -> list[StoredEvent]:
        """Events newest first (by ``at``, then ``id``).

        ``sub`` matches the verified or the claimed subject; ``since`` is inclusive, ``until``
        exclusive; ``before`` (the ``cursor`` of the last event of a page) gives the next page.
        ``limit`` is clamped to 1..500. ``tenant`` keeps only events of that (verified) tenant.
        """
        limit = max(1, min(int(limit), MAX_EVENT_LIMIT))
        c = _EVENTS.c
        query = select(_EVENTS).order_by(c.at.desc(), c.id.desc()).limit(limit)
        if code is not None:
            query = query.where(c.code == str(code))
        if sub is not None:
            query = query.where(or_(c.verified_sub == sub, c.claimed_sub == sub))
        if tenant is not None:
            query = query.where(c.tenant == tenant)
        if since is not None:
            query = query.where(c.at >= _aware("since", since))
        if until is not None:
            query = query.where(c.at < _aware("until", until))
        if before is not None:
            at = _aware("before.at", before.at)
            query = query.where(or_(c.at < at, (c.at == at) & (c.id < before.id)))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [StoredEvent(**row) for row in rows]

    # -- retention ---------------------------------------------------------------------------

    async def prune_events(self, older_than: datetime) -> int:
        """Delete events with ``at < older_than``; returns how many. Deletes in chunks of
        ``PRUNE_CHUNK`` rows, each its own transaction, so no lock is held for long."""
        return await prune_rows(self.engine, _EVENTS, older_than)

    async def prune_expired(self, now: datetime | None = None) -> tuple[int, int]:
        """Delete expired bans and revocations; returns (bans, revocations) deleted."""
        moment = _aware("now", now) or self._clock()
        async with self.engine.begin() as conn:
            bans = await conn.execute(delete(_BANS).where(_BANS.c.expires_at <= moment))
            revocations = await conn.execute(
                delete(_REVOCATIONS).where(_REVOCATIONS.c.expires_at <= moment)
            )
        return bans.rowcount, revocations.rowcount


def _fields(record: BanRecord | RevocationRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in record.__slots__}
