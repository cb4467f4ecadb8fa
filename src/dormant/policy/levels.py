"""How present a session's users are right now."""

from __future__ import annotations

from datetime import datetime

from dormant.policy.model import Level, SessionView
from dormant.policy.settings import PolicySettings


def level(session: SessionView, policy: PolicySettings, now: datetime) -> Level:
    """``disconnected`` if it had connections and has none; otherwise by the age of the last
    meaningful activity: ``active`` under ``active_within``, ``idle`` under ``idle_within``,
    ``background`` after."""
    if session.ever_connected and session.connections == 0:
        return Level.DISCONNECTED
    anchor = session.last_activity_at or session.created_at
    age = (now - anchor).total_seconds()
    if age < policy.active_within:
        return Level.ACTIVE
    if age < policy.idle_within:
        return Level.IDLE
    return Level.BACKGROUND
