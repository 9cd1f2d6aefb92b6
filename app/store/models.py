"""The database schema: security events, operators' IP bans and token revocations.

Guarantees:

* Portable: every type works on SQLite and PostgreSQL (no JSON, no native UUID, no arrays).
* Every string column is bounded (``VARCHAR(n)``); :data:`LIMITS` holds the bounds so the
  repository can truncate or refuse values before PostgreSQL would reject them.
* Every timestamp reads back timezone-aware UTC on both back ends (see :class:`UTCDateTime`).
* The Alembic migrations in ``alembic/versions`` create exactly this schema (a test compares them).
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    DateTime,
    Dialect,
    Index,
    Integer,
    MetaData,
    String,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Stable constraint and index names on every back end (Alembic can then drop them by name).
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Maximum lengths of the string columns, by column name (shared by the three tables).
LIMITS: dict[str, int] = {
    "id": 32,
    "event": 64,
    "code": 32,
    "endpoint": 128,
    "client_ip": 64,
    "claimed_sub": 256,
    "verified_sub": 256,
    "sub": 256,
    "jti": 256,
    "fingerprint": 64,
    "user_agent": 512,
    "origin": 255,
    "detail": 1024,
    "worker": 128,
    "cidr": 64,
    "reason": 512,
    "created_by": 256,
    "tenant": 256,
    # The admin audit trail (admin_audit).
    "actor": 256,
    "action": 16,
    "target": 512,
    "outcome": 32,
}


class UTCDateTime(TypeDecorator[datetime]):
    """A ``TIMESTAMP WITH TIME ZONE`` that always reads back as an aware UTC datetime.

    Naive datetimes are refused on write (ValueError): a naive value's zone is a guess. SQLite has
    no time zones, so values are stored there as naive UTC text, which also keeps them ordered.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("naive datetime: pass a timezone-aware value")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# SQLite makes an INTEGER PRIMARY KEY its rowid (auto-incremented); BIGINT would not be.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _str(name: str) -> String:
    return String(LIMITS[name])


class SecurityEventRow(Base):
    """One refusal or forced close (:class:`app.security_log.SecurityEvent`). Never a token."""

    __tablename__ = "security_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    event: Mapped[str] = mapped_column(_str("event"), nullable=False)
    code: Mapped[str] = mapped_column(_str("code"), nullable=False, index=True)
    endpoint: Mapped[str] = mapped_column(_str("endpoint"), nullable=False)
    client_ip: Mapped[str] = mapped_column(_str("client_ip"), nullable=False)
    claimed_sub: Mapped[str | None] = mapped_column(_str("claimed_sub"), index=True)
    verified_sub: Mapped[str | None] = mapped_column(_str("verified_sub"), index=True)
    jti: Mapped[str | None] = mapped_column(_str("jti"))
    fingerprint: Mapped[str | None] = mapped_column(_str("fingerprint"))
    user_agent: Mapped[str | None] = mapped_column(_str("user_agent"))
    origin: Mapped[str | None] = mapped_column(_str("origin"))
    detail: Mapped[str | None] = mapped_column(_str("detail"))
    worker: Mapped[str | None] = mapped_column(_str("worker"))
    tenant: Mapped[str | None] = mapped_column(_str("tenant"), index=True)
    # Refused attempts this row stands for (floods are stored once per address and code per 10 s).
    count: Mapped[int] = mapped_column(Integer(), nullable=False, default=1, server_default="1")


class IpBanRow(Base):
    """An operator's ban of an address or network; ``expires_at`` NULL means until deleted."""

    __tablename__ = "ip_bans"

    id: Mapped[str] = mapped_column(_str("id"), primary_key=True)
    cidr: Mapped[str] = mapped_column(_str("cidr"), nullable=False)
    reason: Mapped[str] = mapped_column(_str("reason"), nullable=False, default="")
    created_by: Mapped[str] = mapped_column(_str("created_by"), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)


class RevocationRow(Base):
    """A revoked ``jti`` (unique), or every token of ``sub`` issued before ``issued_before``.

    ``expires_at`` is when the revoked tokens would have expired anyway (NULL: unknown, kept).
    ``tenant`` limits it to that tenant's tokens ("" : tokens without one; NULL: every tenant).
    """

    __tablename__ = "revocations"

    id: Mapped[str] = mapped_column(_str("id"), primary_key=True)
    jti: Mapped[str | None] = mapped_column(_str("jti"), unique=True)
    sub: Mapped[str | None] = mapped_column(_str("sub"), index=True)
    issued_before: Mapped[datetime | None] = mapped_column(UTCDateTime())
    reason: Mapped[str] = mapped_column(_str("reason"), nullable=False, default="")
    created_by: Mapped[str] = mapped_column(_str("created_by"), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)
    # The tenant whose tokens it revokes; NULL: every tenant (a platform admin's revocation).
    tenant: Mapped[str | None] = mapped_column(_str("tenant"))


class AdminAuditRow(Base):
    """One admin request that changed or tried to change state (:class:`app.audit.AuditEntry`).

    ``actor``/``tenant``: the admin's verified ``sub`` and tenant (NULL when the request was
    refused before its token was verified); ``outcome``: ``ok`` or the refusal code.
    """

    __tablename__ = "admin_audit"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    actor: Mapped[str | None] = mapped_column(_str("actor"), index=True)
    tenant: Mapped[str | None] = mapped_column(_str("tenant"), index=True)
    action: Mapped[str] = mapped_column(_str("action"), nullable=False, index=True)
    target: Mapped[str | None] = mapped_column(_str("target"))
    outcome: Mapped[str] = mapped_column(_str("outcome"), nullable=False)
    client_ip: Mapped[str] = mapped_column(_str("client_ip"), nullable=False)


# Serves both "since/until" ranges on ``at`` and the (at, id) keyset that pages newest first.
Index("ix_security_events_at", SecurityEventRow.at, SecurityEventRow.id)
Index("ix_admin_audit_at", AdminAuditRow.at, AdminAuditRow.id)
