"""The policy's vocabulary: states, levels, activity kinds, actions, and the decision."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class State(StrEnum):
    CREATING = "creating"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    SLEEPING = "sleeping"
    DELETING = "deleting"
    DELETED = "deleted"
    FAILED = "failed"

    @property
    def transitional(self) -> bool:
        """An operation is in flight; the policy waits for it to finish."""
        return self in _TRANSITIONAL

    @property
    def live(self) -> bool:
        """The session still exists (it may own a container and a port)."""
        return self is not State.DELETED


_TRANSITIONAL = frozenset({State.CREATING, State.STARTING, State.STOPPING, State.DELETING})


class Level(StrEnum):
    ACTIVE = "active"
    IDLE = "idle"
    BACKGROUND = "background"
    DISCONNECTED = "disconnected"


class Category(StrEnum):
    MEANINGFUL = "meaningful"
    PRESENCE = "presence"
    KEEPALIVE = "keepalive"


class ActivityKind(StrEnum):
    USER_INTERACTION = "user-interaction"
    FILE_CHANGE = "file-change"
    BUILD = "build"
    CHAT = "chat"
    COMMAND = "command"
    REQUEST = "request"
    API = "api"
    NAVIGATION = "navigation"
    FOCUS = "focus"
    VISIBILITY = "visibility"
    PING = "ping"
    PONG = "pong"
    HEARTBEAT = "heartbeat"

    @property
    def category(self) -> Category:
        return _CATEGORY[self]


_CATEGORY = {
    **{
        k: Category.MEANINGFUL
        for k in (
            ActivityKind.USER_INTERACTION,
            ActivityKind.FILE_CHANGE,
            ActivityKind.BUILD,
            ActivityKind.CHAT,
            ActivityKind.COMMAND,
            ActivityKind.REQUEST,
            ActivityKind.API,
        )
    },
    **{
        k: Category.PRESENCE
        for k in (ActivityKind.NAVIGATION, ActivityKind.FOCUS, ActivityKind.VISIBILITY)
    },
    **{
        k: Category.KEEPALIVE
        for k in (ActivityKind.PING, ActivityKind.PONG, ActivityKind.HEARTBEAT)
    },
}


class Action(StrEnum):
    NONE = "none"
    WARN = "warn"
    SLEEP = "sleep"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class SessionView:
    """Everything the policy needs to know about a session; nothing else is consulted."""

    state: State
    created_at: datetime
    state_since: datetime
    last_activity_at: datetime | None = None
    last_activity_kind: str | None = None
    last_seen_at: datetime | None = None
    connections: int = 0
    ever_connected: bool = False
    last_disconnect_at: datetime | None = None
    busy_until: datetime | None = None
    keepalive_until: datetime | None = None
    warned_at: datetime | None = None
    logged_out_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """The next action for a session, when it is due, and why.

    ``code`` is a stable machine-readable reason (for stats and metrics); ``reason`` is for people.
    ``at`` is ``None`` only when ``action`` is ``NONE``.
    """

    action: Action
    at: datetime | None
    reason: str
    code: str
    #: For a warning: when the session will sleep, and why (the sleep decision's own reason),
    #: so that nobody has to take them apart from ``reason``.
    sleep_at: datetime | None = None
    sleep_reason: str | None = None

    def due(self, now: datetime) -> bool:
        return self.action is not Action.NONE and self.at is not None and self.at <= now
