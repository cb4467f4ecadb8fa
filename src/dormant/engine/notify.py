"""What the engine tells the rest of the process (metrics, the real-time gateway, logs): typed,
frozen events, taken apart with ``match``; nobody reads meaning out of a reason text."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from dormant.policy import ActivityKind, Decision, State
from dormant.store.records import SessionRecord


@dataclass(frozen=True, slots=True)
class Transitioned:
    """A session moved from ``from_state`` (None: it was just made) to ``to_state``."""

    session: SessionRecord
    from_state: State | None
    to_state: State
    code: str
    reason: str

    @property
    def session_id(self) -> str:
        return self.session.id


@dataclass(frozen=True, slots=True)
class Warned:
    """The session will sleep soon (``decision.sleep_at``); its clients are to be told."""

    session: SessionRecord
    decision: Decision

    @property
    def session_id(self) -> str:
        return self.session.id


@dataclass(frozen=True, slots=True)
class WarningCancelled:
    """Meaningful activity made an earlier warning void."""

    session_id: str
    kind: ActivityKind


@dataclass(frozen=True, slots=True)
class ActivitySeen:
    """Meaningful activity of ``kind`` from ``source`` (``api``, ``gateway``, …)."""

    session_id: str
    kind: ActivityKind
    source: str


@dataclass(frozen=True, slots=True)
class DeadlineDue:
    """A due session was claimed, ``late_seconds`` after its deadline."""

    session_id: str
    late_seconds: float


@dataclass(frozen=True, slots=True)
class OrphanRemoved:
    """The reconciler removed a container no live session owns."""

    session_id: str
    container: str
    reason: str


@dataclass(frozen=True, slots=True)
class Queued:
    """A session waits for capacity at ``position`` (1-based) of the queue of ``limit``;
    sent when it is queued and whenever its position changes (``position`` None: it left the
    queue, admitted or given up)."""

    session_id: str
    position: int | None
    limit: str | None


@dataclass(frozen=True, slots=True)
class OperationFinished:
    """An operation (intent row) ended: ``kind`` (``create``, ``start``, ``stop``,
    ``remove``), ``outcome`` (``done``, ``failed``, ``superseded``, ``interrupted``) and how
    long it took from its intent to its end (``None`` when this process did not see it begin,
    e.g. an operation resumed after a restart)."""

    session_id: str
    kind: str
    outcome: str
    seconds: float | None


@dataclass(frozen=True, slots=True)
class QueueChanged:
    """How many sessions wait for capacity now (all admission queues together)."""

    length: int


EngineEvent = (
    Transitioned
    | Warned
    | WarningCancelled
    | ActivitySeen
    | DeadlineDue
    | OrphanRemoved
    | Queued
    | OperationFinished
    | QueueChanged
)

Listener = Callable[[EngineEvent], None]
