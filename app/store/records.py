"""What the store returns: plain frozen dataclasses, never ORM objects or sessions.

All datetimes are timezone-aware UTC. ``*_ts`` helpers give Unix seconds, the unit of the
in-memory lists (:mod:`app.bans`, :mod:`app.revocations`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from app.revocations import Revocation


def _ts(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


@dataclass(frozen=True, slots=True)
class BanRecord:
    """An operator's ban. ``cidr`` is normalised (``10.0.0.7/8`` is stored as ``10.0.0.0/8``)."""

    id: str
    cidr: str
    reason: str
    created_by: str
    created_at: datetime
    expires_at: datetime | None

    @property
    def expires_ts(self) -> float | None:
        """``expires_at`` in Unix seconds, as :meth:`app.bans.BanList.add` takes it."""
        return _ts(self.expires_at)

    def is_active(self, now: datetime) -> bool:
        return self.expires_at is None or self.expires_at > now


@dataclass(frozen=True, slots=True)
class RevocationRecord:
    """A revoked ``jti``, or every token of ``sub`` issued before ``issued_before``."""

    id: str
    jti: str | None
    sub: str | None
    issued_before: datetime | None
    reason: str
    created_by: str
    created_at: datetime
    expires_at: datetime | None
    tenant: str | None = None  # None: every tenant; "": tokens without one

    def to_revocation(self) -> Revocation:
        """The entry as :class:`app.revocations.RevocationList` holds it (Unix seconds)."""
        return Revocation(
            jti=self.jti,
            sub=self.sub,
            issued_before=_ts(self.issued_before),
            expires_at=_ts(self.expires_at),
            tenant=self.tenant,
        )

    def is_active(self, now: datetime) -> bool:
        return self.expires_at is None or self.expires_at > now


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """A stored security event (see :class:`app.security_log.SecurityEvent`)."""

    id: int
    at: datetime
    event: str
    code: str
    endpoint: str
    client_ip: str
    claimed_sub: str | None
    verified_sub: str | None
    jti: str | None
    fingerprint: str | None
    user_agent: str | None
    origin: str | None
    detail: str | None
    worker: str | None
    tenant: str | None = None
    count: int = 1

    @property
    def cursor(self) -> EventCursor:
        """Pass as ``before=`` to :meth:`app.store.Store.query_events` for the next page."""
        return EventCursor(at=self.at, id=self.id)


@dataclass(frozen=True, slots=True)
class EventCursor:
    """A position in the newest-first order of events: strictly older than (``at``, ``id``)."""

    at: datetime
    id: int


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One stored admin action or attempt (see :mod:`app.audit`). ``actor`` and ``tenant`` are
    None when the request was refused before its token was verified."""

    id: int
    at: datetime
    actor: str | None
    tenant: str | None
    action: str
    target: str | None
    outcome: str
    client_ip: str

    @property
    def cursor(self) -> EventCursor:
        """Pass as ``before=`` to :func:`app.store.audit.query_audit` for the next page."""
        return EventCursor(at=self.at, id=self.id)


@dataclass(frozen=True, slots=True)
class PruneResult:
    """How many rows one retention pass deleted."""

    events: int
    bans: int
    revocations: int
    audit: int = 0
