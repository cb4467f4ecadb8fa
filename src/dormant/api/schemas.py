"""Request and response bodies. Requests reject unknown fields and bound every value."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from dormant.policy import ActivityKind

_LABEL_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
#: A user id, in a body or a path.
USER_ID_PATTERN = r"^[A-Za-z0-9._@:+-]+$"
#: A session name (``dormant.engine.lifecycle.SESSION_NAME``).
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]*$"
#: An ``Idempotency-Key``: 1-200 printable ASCII characters, no space at either end.
IDEMPOTENCY_KEY_PATTERN = r"^[!-~](?:[ -~]*[!-~])?$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def check_label_key(key: str) -> None:
    if not _LABEL_KEY.match(key):
        raise ValueError(f"label key {key!r} must be 1-63 of A-Z a-z 0-9 . _ / -")


class SessionSpec(Strict):
    """What a new session is made of (``PUT /v1/users/{user_id}/sessions/{name}``)."""

    template: str | None = Field(default=None, min_length=1, max_length=100)
    policy: dict[str, Any] | None = None
    labels: dict[str, str] = Field(default_factory=dict, max_length=32)
    env: dict[str, str] = Field(default_factory=dict, max_length=64)

    @field_validator("labels")
    @classmethod
    def _labels(cls, labels: dict[str, str]) -> dict[str, str]:
        for key, value in labels.items():
            check_label_key(key)
            if key.startswith("dormant."):
                raise ValueError(f"label key {key!r}: the dormant. prefix is reserved")
            if len(value) > 256:
                raise ValueError(f"label {key!r}: value longer than 256 characters")
        return labels

    @field_validator("env")
    @classmethod
    def _env(cls, env: dict[str, str]) -> dict[str, str]:
        """Syntax only: which names a request may set is the engine's decision (the template's
        ``env_allow``, never a host-controlled or reserved name), answered as 422 ``invalid``."""
        for key, value in env.items():
            if not _ENV_KEY.match(key):
                raise ValueError(f"env name {key!r} is not a valid variable name")
            if len(value) > 4096 or "\0" in value:
                raise ValueError(f"env {key!r}: value too long or contains NUL")
        return env


class CreateSession(SessionSpec):
    user_id: str = Field(min_length=1, max_length=200, pattern=USER_ID_PATTERN)


class ActivityIn(Strict):
    #: One of the activity kinds (checked by the engine, whose refusal lists them).
    kind: str = Field(
        min_length=1, max_length=40, json_schema_extra={"enum": [k.value for k in ActivityKind]}
    )
    at: AwareDatetime | None = None


class UntilIn(Strict):
    until: AwareDatetime


class TokenIn(Strict):
    """A real-time token: ``name`` is the participant shown in presence (default: the user)."""

    name: str | None = Field(default=None, min_length=1, max_length=100)
    #: Seconds, a JSON number from 1 to 86400: not a boolean, not a string.
    ttl: float | None = Field(default=None, ge=1, le=86400, strict=True, allow_inf_nan=False)

    @field_validator("name")
    @classmethod
    def _name(cls, name: str | None) -> str | None:
        if name is not None and not name.isprintable():
            raise ValueError("name must be printable characters")
        return name


class ErrorDetail(BaseModel):
    """What went wrong: a stable ``code`` for programs and a ``message`` for people. Some
    errors add fields (``details`` of a validation error, ``checks`` of ``/readyz``)."""

    model_config = ConfigDict(extra="allow")
    code: str = Field(min_length=1, examples=["not_found"])
    message: str = Field(min_length=1, examples=["session 3f2a... not found"])


class ErrorOut(BaseModel):
    """Every error response: ``{"error": {"code", "message"}}``."""

    error: ErrorDetail


class LinkIn(Strict):
    """A one-time link to the session through dormant's proxy."""

    #: Seconds the link may wait for its one use (default 300), a JSON number from 1 to 86400.
    ttl: float | None = Field(default=None, ge=1, le=86400, strict=True, allow_inf_nan=False)


class LinkOut(BaseModel):
    #: Opens the session once: the proxy swaps it for a cookie valid for this session only.
    url: str
    expires_at: datetime
    session_id: str


class TokenOut(BaseModel):
    token: str
    expires_at: datetime
    session_id: str


class BroadcastIn(Strict):
    type: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")
    data: Any = None


class BroadcastOut(BaseModel):
    id: str
    type: str
    delivered: int


class LastActivity(BaseModel):
    at: datetime | None
    kind: str | None
    source: str | None


class NextAction(BaseModel):
    action: str
    at: datetime | None
    reason: str


class SessionOut(BaseModel):
    id: str
    tenant: str
    user_id: str
    template: str
    #: Unique per user and template among live sessions; null for an unnamed session.
    name: str | None = None
    policy: str
    state: str
    level: str
    url: str | None
    port: int | None
    connections: int
    created_at: datetime
    state_since: datetime
    last_activity: LastActivity
    last_seen_at: datetime | None
    keepalive_until: datetime | None
    busy_until: datetime | None
    next_action: NextAction
    labels: dict[str, str]
    error: str | None
    #: Two parts for people: what happened, then what comes next (``failed at 10:02: <error>;
    #: deleting in 23h59m``); ``next_action`` has the same next step for programs.
    why: str
    #: The worst real-time connection quality (``stable``, ``unstable``, ``poor``), if connected.
    connection_quality: str | None = None
    #: While ``state`` is ``queued`` (waiting for capacity): the 1-based place in the queue of
    #: ``queue_limit`` (the limit that holds it), and whether a ``create`` or a ``wake`` waits.
    queue_position: int | None = None
    queue_limit: str | None = None
    queue_kind: str | None = None


class SessionList(BaseModel):
    items: list[SessionOut]
    next_cursor: str | None


class EventOut(BaseModel):
    at: datetime
    type: str
    from_state: str | None
    to_state: str | None
    action: str | None
    code: str | None
    reason: str
    #: Of an activity sample (``type`` ``activity``): the activity's kind and where it came
    #: from (``api``, ``gateway``, ``proxy``).
    kind: str | None = None
    source: str | None = None


class EventList(BaseModel):
    session_id: str
    items: list[EventOut]


class OutcomeOut(BaseModel):
    """Where the session ended up (with ``?wait=``): ``ok`` when it reached the state asked."""

    state: str
    ok: bool
    error: str | None = None


class Accepted(BaseModel):
    id: str
    state: str
    accepted: str
    #: With ``?wait=N``: the operation's outcome if it ended within N seconds, else null.
    outcome: OutcomeOut | None = None


class LogoutOut(BaseModel):
    user_id: str
    deleted: list[str]


class InstanceOut(BaseModel):
    """A live ``dormant serve`` on this database: its lease runs until ``lease_until``."""

    id: str
    host: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime
    lease_until: datetime
    this: bool


class InstanceList(BaseModel):
    items: list[InstanceOut]


class Stats(BaseModel):
    sessions_by_state: dict[str, int]
    sessions_by_level: dict[str, int]
    transitions_by_reason: dict[str, dict[str, int]]
    orphans_removed: int


class ResourcesOut(BaseModel):
    cpus: float | None
    memory: str | None
    pids_limit: int | None


class VolumeOut(BaseModel):
    #: The volume's name pattern (``{tenant}``, ``{user}``, ``{session}`` filled in per session).
    pattern: str
    target: str
    retain: str
    read_only: bool


class TemplateOut(BaseModel):
    """What a session of this template is made of, as a tenant may see it: the names of the
    variables the operator sets, never their values; no host paths."""

    name: str
    default: bool
    runtime: str
    image: str | None
    command: list[str] | None
    port: int | None
    policy: str
    public: bool
    wake_timeout: float
    start_timeout: float
    stop_timeout: float
    env_names: list[str]
    env_allow: list[str]
    resources: ResourcesOut
    volumes: list[VolumeOut]
    home: str | None
    health_interval: float


class TemplateList(BaseModel):
    items: list[TemplateOut]


class PolicyOut(BaseModel):
    """A named policy with every value resolved (durations in seconds)."""

    name: str
    values: dict[str, Any]


class PolicyList(BaseModel):
    items: list[PolicyOut]


class SessionPolicyOut(BaseModel):
    """The values in effect for one session now (its policy, its overrides, what an adaptive
    policy has learned), durations in seconds."""

    session_id: str
    policy: str
    values: dict[str, Any]
