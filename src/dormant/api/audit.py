"""The audit trail: who asked for each state-changing call, in the log and in the timeline.

The REST routes and the operator's console call the same engine methods; both word the
timeline reason with :func:`requested_by` and log the accepted call with :func:`log_action`,
so a session's timeline reads the same whichever door the request came through:
``sleep requested by key 3f12ab9c0d1e (tenant acme)``.
"""

from __future__ import annotations

import logging

from dormant.api.auth import Principal

log = logging.getLogger("dormant.audit")


def requested_by(action: str, who: Principal) -> str:
    """The timeline reason of ``action`` asked by ``who`` (the acting key, never the key)."""
    return f"{action} requested by {who.describe()}"


def log_action(
    action: str, who: Principal, session_id: str | None = None, **detail: object
) -> None:
    """One INFO line per accepted state-changing call, naming the action, the session (or
    what it applied to) and the actor; ``detail`` adds ``key=value`` pairs."""
    extra = "".join(f" {k}={v}" for k, v in detail.items())
    log.info(
        "audit action=%s session=%s by %s%s",
        action,
        session_id or "-",
        who.describe(),
        extra,
        extra={
            "action": action,
            "session": session_id,
            "key_id": who.key_id,
            "tenant": who.tenant,
        },
    )
