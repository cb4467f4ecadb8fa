"""What the store hands out: plain frozen records, independent of SQLAlchemy."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Self

from dormant.policy import SessionView, State


@dataclass(frozen=True, slots=True)
class SessionRecord:
    id: str
    tenant: str
    user_id: str
    template: str
    runtime: str
    policy_name: str
    policy: dict[str, Any]
    state: State
    state_since: datetime
    created_at: datetime
    container_name: str
    #: Unique per tenant, user and template among live sessions; ``None``: unnamed.
    name: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    port: int | None = None
    runtime_state: dict[str, Any] = field(default_factory=dict)
    last_activity_at: datetime | None = None
    last_activity_kind: str | None = None
    last_activity_source: str | None = None
    last_seen_at: datetime | None = None
    connections: int = 0
    connections_by_instance: dict[str, int] = field(default_factory=dict)
    ever_connected: bool = False
    last_disconnect_at: datetime | None = None
    busy_until: datetime | None = None
    keepalive_until: datetime | None = None
    warned_at: datetime | None = None
    logged_out_at: datetime | None = None
    next_action: str | None = None
    next_action_at: datetime | None = None
    next_action_reason: str | None = None
    end_reason: str | None = None
    deleted_at: datetime | None = None
    #: Waiting for capacity (admission): since when, for what (``create`` or ``wake``) and
    #: behind which limit (``running``, ``running_per_tenant``, ``running_per_user``,
    #: ``sessions_per_user``); ``None`` when not queued.
    queued_at: datetime | None = None
    queue_kind: str | None = None
    queue_limit: str | None = None
    version: int = 1
    #: The fencing token of the last claim (read-only here: only claims change it).
    fence: int = 0

    def view(self) -> SessionView:
        return SessionView(
            state=self.state,
            created_at=self.created_at,
            state_since=self.state_since,
            last_activity_at=self.last_activity_at,
            last_activity_kind=self.last_activity_kind,
            last_seen_at=self.last_seen_at,
            connections=self.connections,
            ever_connected=self.ever_connected,
            last_disconnect_at=self.last_disconnect_at,
            busy_until=self.busy_until,
            keepalive_until=self.keepalive_until,
            warned_at=self.warned_at,
            logged_out_at=self.logged_out_at,
        )

    def replace(self, **changes: Any) -> Self:
        return dataclasses.replace(self, **changes)

    def to_row(self) -> dict[str, Any]:
        row = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        row["state"] = self.state.value
        del row["fence"]  # claims own it
        return row

    @classmethod
    def from_row(cls, row: Any) -> SessionRecord:
        data = {k: v for k, v in row._mapping.items() if k in _SESSION_FIELDS}
        data["state"] = State(data["state"])
        return cls(**data)


_SESSION_FIELDS = frozenset(f.name for f in dataclasses.fields(SessionRecord))


@dataclass(frozen=True, slots=True)
class AdmissionCounts:
    """What admission limits are checked against: sessions holding a running slot (creating
    and not queued, starting, running, stopping) in all, of a tenant and of a user; the
    user's sessions (those, plus sleeping ones; queued creates not counted); and how many
    sessions are queued in all."""

    running: int = 0
    tenant_running: int = 0
    user_running: int = 0
    user_sessions: int = 0
    queued: int = 0


@dataclass(frozen=True, slots=True)
class Claim:
    """A due session this instance may now act on, and the fencing token its writes carry."""

    session_id: str
    fence: int
    due_at: datetime | None


@dataclass(frozen=True, slots=True)
class OperationRecord:
    id: int
    session_id: str
    kind: str
    container_name: str
    labels: dict[str, str]
    status: str
    attempts: int
    error: str | None
    instance_id: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class EventRecord:
    id: int
    session_id: str
    at: datetime
    type: str
    from_state: str | None
    to_state: str | None
    action: str | None
    code: str | None
    reason: str
    #: Where an activity sample came from (``api``, ``gateway``, ``proxy``); else None.
    source: str | None = None


@dataclass(frozen=True, slots=True)
class NewEvent:
    """A timeline entry to write together with a session change."""

    type: str  # "transition" | "decision" | "activity" | "operation"
    reason: str
    code: str | None = None
    from_state: str | None = None
    to_state: str | None = None
    action: str | None = None
    #: When it happened, if not when it is written (an activity sample).
    at: datetime | None = None
    source: str | None = None

    @property
    def counted(self) -> bool:
        """A transition a decision or a request caused: counted by action and code
        (``Store.event_counts``)."""
        return self.type == "transition" and self.action is not None


def level_thresholds(policy: dict[str, Any]) -> tuple[float, float]:
    """``(active_within, idle_within)`` of a session's policy, in seconds (the store keeps
    them beside the session to count levels without reading every policy)."""
    return (
        float(policy.get("active_within", DEFAULT_ACTIVE_WITHIN)),
        float(policy.get("idle_within", DEFAULT_IDLE_WITHIN)),
    )


DEFAULT_ACTIVE_WITHIN = 120.0
DEFAULT_IDLE_WITHIN = 600.0


@dataclass(frozen=True, slots=True)
class IdempotencyKey:
    """An ``Idempotency-Key`` to keep with a new session (in its transaction): ``body_hash``
    tells a retry from a different request; a stored row of the same key made before
    ``expired_before`` no longer counts and is replaced."""

    key: str
    body_hash: str
    expired_before: datetime


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    tenant: str
    key: str
    body_hash: str
    session_id: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    id: str
    hash: str
    tenant: str
    admin: bool
    name: str
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    id: str
    host: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime
