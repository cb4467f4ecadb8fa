"""``decide(session, policy, now)``: the next action for a session, when it is due, and why.

Pure: everything it needs is in the :class:`SessionView`; ``now`` is only used to word reasons
and never moves a deadline, so the same inputs always give the same deadline.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from dormant.policy.durations import format_duration
from dormant.policy.model import Action, Decision, SessionView, State
from dormant.policy.settings import PolicySettings

# When two actions fall due at the same instant the stronger one wins.
_STRENGTH = {Action.DELETE: 0, Action.SLEEP: 1, Action.WARN: 2}


def _s(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)


def _iso(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def decide(session: SessionView, policy: PolicySettings, now: datetime) -> Decision:
    if session.state is State.DELETED:
        return Decision(Action.NONE, None, "session is deleted", "deleted")
    if session.logged_out_at is not None:
        return Decision(Action.DELETE, session.logged_out_at, "user logged out", "logout")

    candidates: list[Decision] = []
    if policy.max_lifetime is not None:
        candidates.append(
            Decision(
                Action.DELETE,
                session.created_at + _s(policy.max_lifetime),
                f"max lifetime {format_duration(policy.max_lifetime)} reached",
                "max_lifetime",
            )
        )
    if session.state is State.SLEEPING:
        candidates.append(
            Decision(
                Action.DELETE,
                session.state_since + _s(policy.delete_after),
                # Worded to read true before and after it is due (shown as the next action).
                f"asleep since {_iso(session.state_since)}: deleted after "
                f"{format_duration(policy.delete_after)} asleep",
                "asleep_too_long",
            )
        )
    elif session.state is State.FAILED:
        candidates.append(
            Decision(
                Action.DELETE,
                session.state_since + _s(policy.delete_after),
                f"failed at {_iso(session.state_since)}: deleted after "
                f"{format_duration(policy.delete_after)} unless it recovers",
                "failed_expired",
            )
        )
    elif session.state is State.RUNNING:
        candidates.extend(_running(session, policy))

    if not candidates:
        why = (
            f"waiting for the {session.state.value} operation to finish"
            if session.state.transitional
            else "nothing to do"
        )
        return Decision(Action.NONE, None, why, "waiting")
    return min(candidates, key=lambda d: (d.at, _STRENGTH[d.action]))


def _running(session: SessionView, policy: PolicySettings) -> list[Decision]:
    # A wake restarts the inactivity clock: otherwise a session woken by hand would be put back
    # to sleep at once because its last activity is old.
    last = session.last_activity_at or session.created_at
    anchor = max(last, session.state_since)
    protected = max(
        (t for t in (session.busy_until, session.keepalive_until) if t is not None), default=None
    )

    inactivity_at = anchor + _s(policy.sleep_after)
    if protected is not None and protected > inactivity_at:
        sleep_at = protected
        who = "busy" if protected == session.busy_until else "kept alive"
        reason = f"{who} until {_iso(protected)}, and no meaningful activity since {_iso(anchor)}"
    else:
        sleep_at = inactivity_at
        if session.last_activity_at is not None and session.last_activity_at >= session.state_since:
            since = f"last: {session.last_activity_kind or 'activity'} at {_iso(anchor)}"
        elif session.last_activity_at is None and anchor == session.created_at:
            since = f"none since creation at {_iso(anchor)}"
        else:
            since = f"none since it started at {_iso(anchor)}"
        reason = f"no meaningful activity for {format_duration(policy.sleep_after)} ({since})"
    decisions = [Decision(Action.SLEEP, sleep_at, reason, "inactivity")]

    if session.ever_connected and session.connections == 0 and session.last_disconnect_at:
        grace_from = max(session.last_disconnect_at, anchor)
        grace_at = grace_from + _s(policy.disconnect_grace)
        if protected is not None:
            grace_at = max(grace_at, protected)
        if grace_at < sleep_at:
            decisions.append(
                Decision(
                    Action.SLEEP,
                    grace_at,
                    f"last connection closed at {_iso(session.last_disconnect_at)} and nobody "
                    f"came back within {format_duration(policy.disconnect_grace)}",
                    "disconnect_grace",
                )
            )
            return decisions

    # Warn only people who can hear it, and only once per deadline: a warning sent before the
    # deadline moved (new activity, keep-alive) is stale and a new one is due.
    if session.connections > 0 and policy.warn_before > 0:
        warn_at = sleep_at - _s(policy.warn_before)
        if session.warned_at is None or session.warned_at < warn_at:
            decisions.append(
                Decision(
                    Action.WARN,
                    warn_at,
                    f"will sleep at {_iso(sleep_at)}: {reason}",
                    "sleep_warning",
                    sleep_at=sleep_at,
                    sleep_reason=reason,
                )
            )
    return decisions
