"""What the overview shows, computed from sessions' timelines alone: pure functions of the
timelines, a window ``[start, end]`` and nothing else, so a test can recompute every figure
from ``GET /v1/sessions/{id}/events``.

A session's state at a moment is the ``to_state`` of its last transition at or before it (none
before its first). What dormant *ran* is the time its sessions spent ``starting`` or ``running``
(a container serving or coming up); an *always-on* deployment of the same sessions would have
run each from its first transition (created) to its transition into ``deleted`` (or the end of
the window). Both are clipped to the window. What dormant *saved* is the difference.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

#: States in which a session's container is counted as run.
RUN_STATES = frozenset({"starting", "running"})
#: Levels of a running session by the age of its last meaningful activity sample (the policy's
#: defaults: active under 2 min, idle under 10 min, background after).
ACTIVE_WITHIN = timedelta(minutes=2)
IDLE_WITHIN = timedelta(minutes=10)
LEVELS = ("active", "idle", "background")


@dataclass(frozen=True, slots=True)
class Change:
    """One transition of a session's timeline."""

    at: datetime
    from_state: str | None
    to_state: str
    code: str | None = None


@dataclass(frozen=True, slots=True)
class Timeline:
    """A session's transitions (in order) and the times of its meaningful activity samples."""

    session_id: str
    changes: tuple[Change, ...]
    activity: tuple[datetime, ...] = ()

    def state_at(self, at: datetime) -> str | None:
        state = None
        for change in self.changes:
            if change.at > at:
                break
            state = change.to_state
        return state

    def seconds_in(self, states: frozenset[str], start: datetime, end: datetime) -> float:
        """Seconds spent in ``states`` within ``[start, end]``."""
        total = 0.0
        for i, change in enumerate(self.changes):
            if change.to_state not in states:
                continue
            until = self.changes[i + 1].at if i + 1 < len(self.changes) else end
            total += _overlap(change.at, until, start, end)
        return total

    def lifetime_seconds(self, start: datetime, end: datetime) -> float:
        """Seconds from its first transition to its transition into ``deleted`` (or ``end``),
        within ``[start, end]``: what an always-on deployment would have run."""
        if not self.changes:
            return 0.0
        gone = next((c.at for c in self.changes if c.to_state == "deleted"), end)
        return _overlap(self.changes[0].at, gone, start, end)


def _overlap(a: datetime, b: datetime, start: datetime, end: datetime) -> float:
    return max((min(b, end) - max(a, start)).total_seconds(), 0.0)


@dataclass(frozen=True, slots=True)
class Savings:
    sessions: int
    run_hours: float
    always_on_hours: float
    saved_hours: float
    price_per_hour: float
    currency: str

    @property
    def saved_money(self) -> float:
        return round(self.saved_hours * self.price_per_hour, 2)

    def as_dict(self) -> dict[str, object]:
        return {
            "sessions": self.sessions,
            "run_hours": self.run_hours,
            "always_on_hours": self.always_on_hours,
            "saved_hours": self.saved_hours,
            "saved_percent": (
                round(100 * self.saved_hours / self.always_on_hours, 1)
                if self.always_on_hours
                else 0.0
            ),
            "run_cost": round(self.run_hours * self.price_per_hour, 2),
            "always_on_cost": round(self.always_on_hours * self.price_per_hour, 2),
            "saved_money": self.saved_money,
            "price_per_container_hour": self.price_per_hour,
            "currency": self.currency,
            "run_states": sorted(RUN_STATES),
        }


def savings(
    timelines: Iterable[Timeline],
    start: datetime,
    end: datetime,
    price_per_hour: float,
    currency: str,
) -> Savings:
    """Container-hours run versus always-on over the window, rounded to 1/1000 h (what the
    page shows is computed once, here, from the sums in seconds)."""
    run = always = 0.0
    count = 0
    for timeline in timelines:
        life = timeline.lifetime_seconds(start, end)
        if life <= 0:
            continue
        count += 1
        always += life
        run += timeline.seconds_in(RUN_STATES, start, end)
    run_h, always_h = round(run / 3600, 3), round(always / 3600, 3)
    return Savings(count, run_h, always_h, round(always_h - run_h, 3), price_per_hour, currency)


def buckets(start: datetime, end: datetime, step: timedelta) -> list[datetime]:
    """Sample times from ``start`` to ``end`` (both included) every ``step``."""
    count = max(int((end - start) / step), 0)
    times = [start + i * step for i in range(count + 1)]
    if times[-1] < end:
        times.append(end)
    return times


def states_over_time(
    timelines: Sequence[Timeline], times: Sequence[datetime]
) -> dict[str, list[int]]:
    """How many sessions were in each state at each time (``deleted`` left out)."""
    out: dict[str, list[int]] = {}
    for i, at in enumerate(times):
        for timeline in timelines:
            state = timeline.state_at(at)
            if state is None or state == "deleted":
                continue
            out.setdefault(state, [0] * len(times))[i] += 1
    return out


def level_at(timeline: Timeline, at: datetime) -> str | None:
    """The level of a running session at ``at`` from its activity samples (``None`` when it
    was not running). A sample is kept at most once a minute, so this is as fine as that."""
    if timeline.state_at(at) != "running":
        return None
    last = max((t for t in timeline.activity if t <= at), default=None)
    if last is None:
        return "background"
    age = at - last
    return "active" if age < ACTIVE_WITHIN else "idle" if age < IDLE_WITHIN else "background"


def levels_over_time(
    timelines: Sequence[Timeline], times: Sequence[datetime]
) -> dict[str, list[int]]:
    out = {level: [0] * len(times) for level in LEVELS}
    for i, at in enumerate(times):
        for timeline in timelines:
            if (level := level_at(timeline, at)) is not None:
                out[level][i] += 1
    return out


def kind_of(change: Change) -> str | None:
    """What a transition means for the per-hour chart: a sleep begins (-> ``stopping``), a
    wake begins (``sleeping`` -> ``starting``), a delete begins (-> ``deleting``)."""
    if change.to_state == "stopping":
        return "sleep"
    if change.from_state == "sleeping" and change.to_state == "starting":
        return "wake"
    if change.to_state == "deleting" or (
        change.to_state == "deleted" and change.from_state != "deleting"
    ):
        return "delete"
    return None


def per_hour(
    timelines: Iterable[Timeline], hours: Sequence[datetime]
) -> dict[str, dict[str, list[int]]]:
    """``{kind: {reason code: [count per hour]}}`` of sleeps, wakes and deletes that began in
    each hour ``[hours[i], hours[i] + 1h)``."""
    out: dict[str, dict[str, list[int]]] = {k: {} for k in ("sleep", "wake", "delete")}
    if not hours:
        return out
    first, last = hours[0], hours[-1] + timedelta(hours=1)
    for timeline in timelines:
        for change in timeline.changes:
            kind = kind_of(change)
            if kind is None or not first <= change.at < last:
                continue
            index = int((change.at - first) / timedelta(hours=1))
            row = out[kind].setdefault(change.code or "unknown", [0] * len(hours))
            row[index] += 1
    return out


def wake_latencies(timelines: Iterable[Timeline], start: datetime, end: datetime) -> list[float]:
    """Seconds from each wake's start (``sleeping`` -> ``starting``) in the window to the
    session's next ``running``; a wake that has not reached it (or failed) is left out."""
    out = []
    for timeline in timelines:
        changes = timeline.changes
        for i, change in enumerate(changes):
            if kind_of(change) != "wake" or not start <= change.at <= end:
                continue
            for later in changes[i + 1 :]:
                if later.to_state == "running":
                    out.append((later.at - change.at).total_seconds())
                    break
                if later.to_state != "starting":
                    break
    return sorted(out)


def percentile(sorted_values: Sequence[float], p: float) -> float | None:
    """The nearest-rank percentile ``p`` (0-100) of already sorted values."""
    if not sorted_values:
        return None
    rank = max(math.ceil(p / 100 * len(sorted_values)), 1)
    return sorted_values[rank - 1]
