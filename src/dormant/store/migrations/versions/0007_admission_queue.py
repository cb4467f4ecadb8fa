"""admission queue: queued_at, queue_kind and queue_limit on sessions

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 10:00:00.000000

Existing sessions are not queued (NULL).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import dormant.store.schema

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(
            sa.Column("queued_at", dormant.store.schema.UTCDateTime(timezone=True), nullable=True)
        )
        batch.add_column(sa.Column("queue_kind", sa.String(length=10), nullable=True))
        batch.add_column(sa.Column("queue_limit", sa.String(length=40), nullable=True))
    op.create_index("ix_sessions_queued_at", "sessions", ["queued_at"])


def downgrade() -> None:
    op.drop_index("ix_sessions_queued_at", table_name="sessions")
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("queue_limit")
        batch.drop_column("queue_kind")
        batch.drop_column("queued_at")
