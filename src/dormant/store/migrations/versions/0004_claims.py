"""claims: which instance handles a due session, until when, and its fencing token

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 12:30:00.000000

Due sessions are claimed in the store (``FOR UPDATE SKIP LOCKED`` on PostgreSQL) under a lease;
every claim bumps ``fence``, and every write of the claimed operation must still match it, so an
instance that lost its claim (paused past its lease, say) cannot write.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import dormant.store.schema

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("claimed_by", sa.String(length=64), nullable=True))
        batch.add_column(
            sa.Column("claim_until", dormant.store.schema.UTCDateTime(timezone=True), nullable=True)
        )
        batch.add_column(
            sa.Column("fence", sa.Integer(), nullable=False, server_default=sa.text("0"))
        )


def downgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("fence")
        batch.drop_column("claim_until")
        batch.drop_column("claimed_by")
