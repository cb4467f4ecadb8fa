"""session names (unique per tenant, user and template among live sessions) and idempotency keys

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 10:00:00.000000

Existing sessions stay unnamed (NULL), which the partial unique index does not constrain.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import dormant.store.schema

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

LIVE = "state != 'deleted'"


def upgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("name", sa.String(length=63), nullable=True))
    op.create_index(
        "ux_sessions_name",
        "sessions",
        ["tenant", "user_id", "template", "name"],
        unique=True,
        sqlite_where=sa.text(LIVE),
        postgresql_where=sa.text(LIVE),
    )
    op.create_table(
        "idempotency_keys",
        sa.Column("tenant", sa.String(length=100), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("body_hash", sa.String(length=64), nullable=False),
        sa.Column("session_id", sa.String(length=40), nullable=False),
        sa.Column("created_at", dormant.store.schema.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "key"),
    )
    op.create_index("ix_idempotency_keys_created", "idempotency_keys", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_idempotency_keys_created", table_name="idempotency_keys")
    op.drop_table("idempotency_keys")
    op.drop_index("ux_sessions_name", table_name="sessions")
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("name")
