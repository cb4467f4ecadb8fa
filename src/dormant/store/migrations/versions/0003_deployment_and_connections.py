"""deployment id, connections per instance

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 12:00:00.000000

A deployment gets a random id on first start (kept here, stamped on every container) so that it
never touches another deployment's containers. Connection counts are kept per instance, so a
restarted instance can drop what its dead predecessor held.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import dormant.store.schema

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deployment",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("created_at", dormant.store.schema.UTCDateTime(timezone=True), nullable=False),
        sa.Column("singleton", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("singleton", name="ux_deployment_singleton"),
    )
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(
            sa.Column(
                "connections_by_instance", sa.JSON(), nullable=False, server_default=sa.text("'{}'")
            )
        )
    op.create_index("ix_sessions_deleted_at", "sessions", ["deleted_at"])
    op.create_index("ix_operations_updated", "operations", ["status", "updated_at"])


def downgrade() -> None:
    op.drop_index("ix_operations_updated", table_name="operations")
    op.drop_index("ix_sessions_deleted_at", table_name="sessions")
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("connections_by_instance")
    op.drop_table("deployment")
