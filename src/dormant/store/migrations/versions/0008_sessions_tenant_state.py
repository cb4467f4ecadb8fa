"""ix_sessions_tenant_state: a tenant's running slots counted from the index (admission)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 11:00:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_sessions_tenant_state", "sessions", ["tenant", "state"])


def downgrade() -> None:
    op.drop_index("ix_sessions_tenant_state", table_name="sessions")
