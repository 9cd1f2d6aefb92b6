"""Tenants in the store, and counted security events (issue 13).

- ``security_events.tenant``: the verified tenant of the connection the event is about (NULL when
  unknown or none), so that a tenant admin reads only its own tenant's events.
- ``security_events.count``: how many refused attempts one stored event stands for (a flood from a
  banned or rate-limited address is stored once per address and code per 10 seconds).
- ``revocations.tenant``: the tenant a revocation applies to (NULL: every tenant, a platform
  admin's revocation); "" is the tenant of tokens without one.

Revision ID: 0013_tenant_and_count
Revises: 0001_initial
Create Date: 2026-12-02 08:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0013_tenant_and_count"
down_revision: str | Sequence[str] | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("security_events") as batch:
        batch.add_column(sa.Column("tenant", sa.String(256), nullable=True))
        batch.add_column(sa.Column("count", sa.Integer(), nullable=False, server_default="1"))
        batch.create_index("ix_security_events_tenant", ["tenant"])
    with op.batch_alter_table("revocations") as batch:
        batch.add_column(sa.Column("tenant", sa.String(256), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("revocations") as batch:
        batch.drop_column("tenant")
    with op.batch_alter_table("security_events") as batch:
        batch.drop_index("ix_security_events_tenant")
        batch.drop_column("count")
        batch.drop_column("tenant")
