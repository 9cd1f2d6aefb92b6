"""Initial schema: security_events, ip_bans, revocations.

Revision ID: 0001_initial
Revises:
Create Date: 2025-01-01 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0001_initial"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the types of app.store.models at this revision (a migration must not change
# when the models do later).
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _ts() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "security_events",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("at", _ts(), nullable=False),
        sa.Column("event", sa.String(64), nullable=False),
        sa.Column("code", sa.String(32), nullable=False),
        sa.Column("endpoint", sa.String(128), nullable=False),
        sa.Column("client_ip", sa.String(64), nullable=False),
        sa.Column("claimed_sub", sa.String(256), nullable=True),
        sa.Column("verified_sub", sa.String(256), nullable=True),
        sa.Column("jti", sa.String(256), nullable=True),
        sa.Column("fingerprint", sa.String(64), nullable=True),
        sa.Column("user_agent", sa.String(512), nullable=True),
        sa.Column("origin", sa.String(255), nullable=True),
        sa.Column("detail", sa.String(1024), nullable=True),
        sa.Column("worker", sa.String(128), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_security_events"),
    )
    op.create_index("ix_security_events_at", "security_events", ["at", "id"])
    op.create_index("ix_security_events_code", "security_events", ["code"])
    op.create_index("ix_security_events_claimed_sub", "security_events", ["claimed_sub"])
    op.create_index("ix_security_events_verified_sub", "security_events", ["verified_sub"])

    op.create_table(
        "ip_bans",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("cidr", sa.String(64), nullable=False),
        sa.Column("reason", sa.String(512), nullable=False),
        sa.Column("created_by", sa.String(256), nullable=False),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("expires_at", _ts(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_ip_bans"),
    )
    op.create_index("ix_ip_bans_expires_at", "ip_bans", ["expires_at"])

    op.create_table(
        "revocations",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("jti", sa.String(256), nullable=True),
        sa.Column("sub", sa.String(256), nullable=True),
        sa.Column("issued_before", _ts(), nullable=True),
        sa.Column("reason", sa.String(512), nullable=False),
        sa.Column("created_by", sa.String(256), nullable=False),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("expires_at", _ts(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_revocations"),
        sa.UniqueConstraint("jti", name="uq_revocations_jti"),
    )
    op.create_index("ix_revocations_sub", "revocations", ["sub"])
    op.create_index("ix_revocations_expires_at", "revocations", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_revocations_expires_at", table_name="revocations")
    op.drop_index("ix_revocations_sub", table_name="revocations")
    op.drop_table("revocations")
    op.drop_index("ix_ip_bans_expires_at", table_name="ip_bans")
    op.drop_table("ip_bans")
    op.drop_index("ix_security_events_verified_sub", table_name="security_events")
    op.drop_index("ix_security_events_claimed_sub", table_name="security_events")
    op.drop_index("ix_security_events_code", table_name="security_events")
    op.drop_index("ix_security_events_at", table_name="security_events")
    op.drop_table("security_events")
