"""Telemetry: activity samples' source, level thresholds beside each session, transition counts

- ``session_events.source``: where an activity sample came from (``api``, ``gateway``, ``proxy``).
- ``sessions.active_within`` / ``idle_within`` (seconds, from the session's policy),
  ``anchor_minute`` (the minute of the last meaningful activity, else of the creation) and
  ``ix_sessions_state_idle``, ``ix_sessions_state_anchor``, ``ix_sessions_disconnected``:
  ``/v1/stats`` counts running sessions by level in SQL, reading recent rows only.
- ``transition_counts``: transitions by tenant, action and code, kept as they are written;
  filled here from the timelines that exist.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("session_events") as batch:
        batch.add_column(sa.Column("source", sa.String(40)))
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(
            sa.Column("active_within", sa.Float(), nullable=False, server_default="120")
        )
        batch.add_column(sa.Column("idle_within", sa.Float(), nullable=False, server_default="600"))
        batch.add_column(sa.Column("anchor_minute", sa.DateTime(timezone=True)))
    bind = op.get_bind()
    # The thresholds of existing sessions, from their policy documents.
    if bind.dialect.name == "postgresql":
        op.execute(
            "UPDATE sessions SET "
            "active_within = COALESCE((policy::jsonb ->> 'active_within')::float, 120), "
            "idle_within = COALESCE((policy::jsonb ->> 'idle_within')::float, 600), "
            "anchor_minute = date_trunc('minute', "
            "COALESCE(last_activity_at, created_at) AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
        )
    else:
        op.execute(
            "UPDATE sessions SET "
            "active_within = COALESCE(json_extract(policy, '$.active_within'), 120), "
            "idle_within = COALESCE(json_extract(policy, '$.idle_within'), 600), "
            "anchor_minute = strftime('%Y-%m-%d %H:%M:00.000000', "
            "COALESCE(last_activity_at, created_at))"
        )
    op.create_index("ix_sessions_state_idle", "sessions", ["state", "idle_within"])
    op.create_index("ix_sessions_state_anchor", "sessions", ["state", "anchor_minute"])
    disconnected = sa.text("ever_connected AND connections = 0")
    op.create_index(
        "ix_sessions_disconnected",
        "sessions",
        ["state"],
        sqlite_where=disconnected,
        postgresql_where=disconnected,
    )
    op.create_table(
        "transition_counts",
        sa.Column("tenant", sa.String(100), nullable=False),
        sa.Column("action", sa.String(20), nullable=False),
        sa.Column("code", sa.String(40), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "action", "code", name="pk_transition_counts"),
    )
    op.execute(
        "INSERT INTO transition_counts (tenant, action, code, n) "
        "SELECT s.tenant, e.action, COALESCE(e.code, ''), COUNT(*) "
        "FROM session_events e JOIN sessions s ON s.id = e.session_id "
        "WHERE e.type = 'transition' AND e.action IS NOT NULL "
        "GROUP BY s.tenant, e.action, COALESCE(e.code, '')"
    )


def downgrade() -> None:
    op.drop_table("transition_counts")
    op.drop_index("ix_sessions_disconnected", table_name="sessions")
    op.drop_index("ix_sessions_state_anchor", table_name="sessions")
    op.drop_index("ix_sessions_state_idle", table_name="sessions")
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("anchor_minute")
        batch.drop_column("idle_within")
        batch.drop_column("active_within")
    with op.batch_alter_table("session_events") as batch:
        batch.drop_column("source")
