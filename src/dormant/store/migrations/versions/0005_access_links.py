"""access links: one-time tokens the session proxy exchanges for a cookie

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 15:20:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import dormant.store.schema

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "access_links",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("session_id", sa.String(length=40), nullable=False),
        sa.Column("expires_at", dormant.store.schema.UTCDateTime(timezone=True), nullable=False),
        sa.Column("used_at", dormant.store.schema.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("token_hash"),
    )
    op.create_index("ix_access_links_expires", "access_links", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_access_links_expires", table_name="access_links")
    op.drop_table("access_links")
