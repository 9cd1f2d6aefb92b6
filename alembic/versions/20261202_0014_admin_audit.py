"""The audit trail of admin actions (issue 14): ``admin_audit``.

One row per admin request that changed or tried to change state (ban, unban, revoke, disconnect),
refused ones included: when, who (verified ``sub`` and tenant, NULL when the token was not
verified), what, on what, how it ended (``ok`` or the refusal code) and from which address.

Revision ID: 0014_admin_audit
Revises: 0013_tenant_and_count
Create Date: 2026-12-02 09:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0014_admin_audit"
down_revision: str | Sequence[str] | None = "0013_tenant_and_count"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copy of the id type of app.store.models at this revision.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "admin_audit",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(256), nullable=True),
        sa.Column("tenant", sa.String(256), nullable=True),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("target", sa.String(512), nullable=True),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("client_ip", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_admin_audit"),
    )
    op.create_index("ix_admin_audit_at", "admin_audit", ["at", "id"])
    op.create_index("ix_admin_audit_actor", "admin_audit", ["actor"])
    op.create_index("ix_admin_audit_tenant", "admin_audit", ["tenant"])
    op.create_index("ix_admin_audit_action", "admin_audit", ["action"])


def downgrade() -> None:
    op.drop_index("ix_admin_audit_action", table_name="admin_audit")
    op.drop_index("ix_admin_audit_tenant", table_name="admin_audit")
    op.drop_index("ix_admin_audit_actor", table_name="admin_audit")
    op.drop_index("ix_admin_audit_at", table_name="admin_audit")
    op.drop_table("admin_audit")
