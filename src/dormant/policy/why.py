"""A session's state in two parts, what happened and what comes next, for people to read:

``failed at 10:02: <error>; deleting in 23h59m``,
``asleep since 10:05 (idle 30m); deleting in 6d23h``,
``running, active 2m ago; sleeps in 28m (idle)``.

The first part speaks only of the past (times that have been), the second only of the future
(``in`` a span from ``now``), so nothing due later reads as if it had happened. Pure: ``now``
is a parameter.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from dormant.policy.model import Action, Decision, SessionView, State

_UNITS = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))

#: Why a session sleeps, in a word or two, by the decision's code.
_SLEEP_WHY = {
    "inactivity": "idle",
    "sleep_warning": "idle",
    "disconnect_grace": "nobody connected",
}
#: Why a session is deleted, when it is not plain from the first part.
_DELETE_WHY = {
    "max_lifetime": "max lifetime",
    "logout": "user logged out",
}


@dataclass(frozen=True, slots=True)
class Extra:
    """What the session's view does not hold and the words need."""

    error: str | None = None
    #: Waiting for capacity since then, behind this limit.
    queued_at: datetime | None = None
    queue_limit: str | None = None
    end_reason: str | None = None


def span(seconds: float) -> str:
    """A rough length: the two largest units, rounded down: ``23h59m``, ``6d23h``, ``2m``."""
    total = max(0, int(seconds))
    if total < 60:
        return f"{total}s"
    parts: list[str] = []
    for unit, size in _UNITS:
        if total >= size or parts:
            n, total = divmod(total, size)
            if n or parts:
                parts.append(f"{n}{unit}")
        if len(parts) == 2:
            break
    if len(parts) == 2 and parts[1].startswith("0"):
        parts.pop()
    return "".join(parts)


def clock_time(at: datetime, now: datetime) -> str:
    """``10:02`` (UTC) on the day of ``now``, else with its date."""
    if at.date() == now.date():
        return at.strftime("%H:%M")
    return at.strftime("%Y-%m-%d %H:%M")


def why(view: SessionView, decision: Decision, now: datetime, extra: Extra = Extra()) -> str:
    return f"{happened(view, now, extra)}; {comes_next(view, decision, now, extra)}"


def happened(view: SessionView, now: datetime, extra: Extra) -> str:
    since = clock_time(view.state_since, now)
    if extra.queued_at is not None and view.state.live:
        return f"queued since {clock_time(extra.queued_at, now)} ({extra.queue_limit} full)"
    match view.state:
        case State.FAILED:
            return f"failed at {since}: {extra.error or 'no error recorded'}"
        case State.SLEEPING:
            anchor = view.last_activity_at or view.created_at
            idle = (view.state_since - anchor).total_seconds()
            return f"asleep since {since} (idle {span(idle)})"
        case State.RUNNING:
            if view.last_activity_at is None:
                return f"running since {since}, no activity yet"
            ago = (now - view.last_activity_at).total_seconds()
            return f"running, active {span(ago)} ago"
        case State.DELETED:
            return f"deleted at {since}" + (f": {extra.end_reason}" if extra.end_reason else "")
        case _:
            return f"{view.state.value} since {since}"


def comes_next(view: SessionView, decision: Decision, now: datetime, extra: Extra) -> str:
    if extra.queued_at is not None and view.state.live:
        return "starts when a slot frees"
    if view.state is State.DELETED:
        return "nothing comes next"
    if decision.action is Action.NONE or decision.at is None:
        if view.state.transitional:
            return f"{_doing(view.state)} when the operation finishes"
        return "nothing planned"
    if decision.action in (Action.SLEEP, Action.WARN):
        at = decision.sleep_at or decision.at
        return f"{_when('sleeps', at, now)} ({_sleep_why(view, decision, now)})"
    label = _DELETE_WHY.get(decision.code)
    return _when("deleting", decision.at, now) + (f" ({label})" if label else "")


def _when(verb: str, at: datetime, now: datetime) -> str:
    left = (at - now).total_seconds()
    return f"{verb} now" if left < 1 else f"{verb} in {span(left)}"


def _sleep_why(view: SessionView, decision: Decision, now: datetime) -> str:
    at = decision.sleep_at or decision.at
    if view.busy_until is not None and view.busy_until == at:
        return "busy until then"
    if view.keepalive_until is not None and view.keepalive_until == at:
        return "kept alive until then"
    return _SLEEP_WHY.get(decision.code, decision.code)


def _doing(state: State) -> str:
    return {
        State.CREATING: "running",
        State.STARTING: "running",
        State.STOPPING: "asleep",
        State.DELETING: "deleted",
    }.get(state, state.value)
