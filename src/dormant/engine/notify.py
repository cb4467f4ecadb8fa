"""What the engine tells the rest of the process (metrics, the real-time gateway, logs)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from dormant.policy import Decision
from dormant.store.records import SessionRecord


@dataclass(frozen=True, slots=True)
class EngineEvent:
    """``type`` is one of ``transition``, ``decision``, ``warning``, ``warning-cancelled``,
    ``activity``, ``operation``, ``orphan-removed``."""

    type: str
    session_id: str
    session: SessionRecord | None
    code: str = ""
    reason: str = ""
    from_state: str | None = None
    to_state: str | None = None
    decision: Decision | None = None
    seconds: float | None = None


Listener = Callable[[EngineEvent], None]
