"""Tables. Alembic migrations in ``migrations/`` create exactly these; keep the two in step."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Float,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    TypeDecorator,
    text,
)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC in, aware UTC out, whatever the database keeps (SQLite keeps naive text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use aware UTC")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData()

#: The predicate of the partial unique index on session names.
LIVE = "state != 'deleted'"
#: The predicate of ix_sessions_disconnected: had connections, has none (level
#: ``disconnected``); connection counts change far less often than activity.
DISCONNECTED = "ever_connected AND connections = 0"

sessions = Table(
    "sessions",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("tenant", String(100), nullable=False),
    Column("user_id", String(200), nullable=False),
    Column("template", String(100), nullable=False),
    #: Optional; unique per tenant, user and template among live sessions (``ux_sessions_name``).
    Column("name", String(63)),
    Column("runtime", String(50), nullable=False),
    Column("policy_name", String(100), nullable=False),
    Column("policy", JSON, nullable=False),
    Column("labels", JSON, nullable=False),
    Column("env", JSON, nullable=False),
    Column("state", String(20), nullable=False),
    Column("state_since", UTCDateTime(), nullable=False),
    Column("error", Text),
    Column("port", Integer),
    Column("container_name", String(100), nullable=False),
    Column("runtime_state", JSON, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("last_activity_at", UTCDateTime()),
    Column("last_activity_kind", String(40)),
    Column("last_activity_source", String(40)),
    Column("last_seen_at", UTCDateTime()),
    Column("connections", Integer, nullable=False, default=0),
    #: ``{instance_id: count}``; ``connections`` is their sum. Kept per instance so that the
    #: counts of a dead instance can be dropped (its clients are gone with it).
    Column("connections_by_instance", JSON, nullable=False, default=dict, server_default="{}"),
    Column("ever_connected", Boolean, nullable=False, default=False),
    Column("last_disconnect_at", UTCDateTime()),
    Column("busy_until", UTCDateTime()),
    Column("keepalive_until", UTCDateTime()),
    Column("warned_at", UTCDateTime()),
    Column("logged_out_at", UTCDateTime()),
    Column("next_action", String(20)),
    Column("next_action_at", UTCDateTime()),
    Column("next_action_reason", Text),
    Column("end_reason", Text),
    Column("deleted_at", UTCDateTime()),
    Column("queued_at", UTCDateTime()),
    Column("queue_kind", String(10)),
    Column("queue_limit", String(40)),
    Column("version", Integer, nullable=False, default=1),
    #: The instance handling this session's due work, until when (a lease), and the fencing
    #: token every write of that work must still match (bumped by every claim).
    Column("claimed_by", String(64)),
    Column("claim_until", UTCDateTime()),
    Column("fence", Integer, nullable=False, default=0, server_default="0"),
    #: The policy's level thresholds (seconds), kept beside the row so that ``/v1/stats``
    #: counts levels in SQL (``count_by_level``); written from ``policy`` with every write.
    Column("active_within", Float, nullable=False, default=120.0, server_default="120"),
    Column("idle_within", Float, nullable=False, default=600.0, server_default="600"),
    #: The minute of the last meaningful activity (of the creation if none): an indexed
    #: column that changes at most once a minute, so activity flushes stay cheap (PostgreSQL
    #: updates in place while no indexed value changes) and levels count recent rows only.
    Column("anchor_minute", UTCDateTime()),
    Index("ix_sessions_next_action_at", "next_action_at"),
    Index("ix_sessions_state_idle", "state", "idle_within"),
    Index("ix_sessions_state_anchor", "state", "anchor_minute"),
    Index(
        "ix_sessions_disconnected",
        "state",
        sqlite_where=text(DISCONNECTED),
        postgresql_where=text(DISCONNECTED),
    ),
    Index("ix_sessions_tenant_user", "tenant", "user_id"),
    Index("ix_sessions_state", "state"),
    Index("ux_sessions_port", "port", unique=True),
    Index("ix_sessions_deleted_at", "deleted_at"),
    Index("ix_sessions_queued_at", "queued_at"),
    Index("ix_sessions_tenant_state", "tenant", "state"),
    #: A name is held by one live session of a tenant's user and template; a deleted session
    #: frees it. Unnamed sessions (NULL) are not constrained.
    Index(
        "ux_sessions_name",
        "tenant",
        "user_id",
        "template",
        "name",
        unique=True,
        sqlite_where=text(LIVE),
        postgresql_where=text(LIVE),
    ),
)

operations = Table(
    "operations",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("session_id", String(40), nullable=False),
    Column("kind", String(20), nullable=False),
    Column("container_name", String(100), nullable=False),
    Column("labels", JSON, nullable=False),
    Column("status", String(20), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("error", Text),
    Column("instance_id", String(64), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Index("ix_operations_status", "status"),
    Index("ix_operations_session", "session_id"),
    Index("ix_operations_updated", "status", "updated_at"),
)

session_events = Table(
    "session_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("session_id", String(40), nullable=False),
    Column("at", UTCDateTime(), nullable=False),
    Column("type", String(20), nullable=False),
    Column("from_state", String(20)),
    Column("to_state", String(20)),
    Column("action", String(20)),
    Column("code", String(40)),
    Column("reason", Text, nullable=False),
    #: Of an activity sample: where it came from (``api``, ``gateway``, ``proxy``).
    Column("source", String(40)),
    Index("ix_session_events_session", "session_id", "id"),
    Index("ix_session_events_code", "type", "code"),
)

#: Transitions caused by decisions and requests, counted by tenant, action and code as they
#: are written (in the same transaction), so that ``/v1/stats`` reads a few rows instead of
#: grouping every timeline. Counts are all-time: purging a deleted session keeps them.
transition_counts = Table(
    "transition_counts",
    metadata,
    Column("tenant", String(100), nullable=False),
    Column("action", String(20), nullable=False),
    Column("code", String(40), nullable=False),
    Column("n", Integer, nullable=False),
    PrimaryKeyConstraint("tenant", "action", "code", name="pk_transition_counts"),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(24), primary_key=True),
    Column("hash", String(64), nullable=False),
    Column("tenant", String(100), nullable=False),
    Column("admin", Boolean, nullable=False, default=False),
    Column("name", String(200), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("revoked_at", UTCDateTime()),
)

#: One-time access links to a session through the proxy (``POST /v1/sessions/{id}/links``): only
#: the token's SHA-256 is kept; ``used_at`` is set by the one exchange that may succeed.
access_links = Table(
    "access_links",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("session_id", String(40), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
    Column("used_at", UTCDateTime()),
    Index("ix_access_links_expires", "expires_at"),
)

#: ``POST /v1/sessions`` with an ``Idempotency-Key``: the key (per tenant), a hash of the body it
#: came with, and the session it made, written in the session's own transaction; kept 24 h.
idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("tenant", String(100), nullable=False),
    Column("key", String(200), nullable=False),
    Column("body_hash", String(64), nullable=False),
    Column("session_id", String(40), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    PrimaryKeyConstraint("tenant", "key"),
    Index("ix_idempotency_keys_created", "created_at"),
)

instances = Table(
    "instances",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("host", String(200), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("heartbeat_at", UTCDateTime(), nullable=False),
)

#: Learned idle-gap models of the ``adaptive`` policy (``dormant.policy.adaptive.GapModel``), by
#: key (``user:TENANT/USER`` or ``template:TENANT/TEMPLATE``); survives the sessions that fed it.
adaptive_models = Table(
    "adaptive_models",
    metadata,
    Column("key", String(400), primary_key=True),
    Column("model", JSON, nullable=False),
    Column("observations", Integer, nullable=False, default=0),
    Column("weight", Float, nullable=False, default=0.0),
    Column("updated_at", UTCDateTime(), nullable=False),
)

#: One row: this deployment's id, made on first start and stamped on every container
#: (``dormant.deployment``); a dormant touches only containers that carry it.
deployment = Table(
    "deployment",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("singleton", Integer, nullable=False, unique=True),
)
