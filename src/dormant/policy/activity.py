"""How an activity event moves a session's timestamps (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from dormant.errors import InvalidInput
from dormant.policy.model import ActivityKind, Category


@dataclass(frozen=True, slots=True)
class ActivityTimes:
    last_activity_at: datetime | None = None
    last_activity_kind: str | None = None
    last_activity_source: str | None = None
    last_seen_at: datetime | None = None


def parse_kind(kind: str) -> ActivityKind:
    try:
        return ActivityKind(kind)
    except ValueError:
        known = ", ".join(k.value for k in ActivityKind)
        raise InvalidInput(f"unknown activity kind {kind!r}; known kinds: {known}") from None


def apply_activity(
    times: ActivityTimes, kind: ActivityKind, at: datetime, source: str = "api"
) -> ActivityTimes:
    """Meaningful activity moves ``last_activity_at`` (never backwards); presence moves only
    ``last_seen_at``; keepalive proves a connection is alive and changes nothing."""
    category = kind.category
    if category is Category.KEEPALIVE:
        return times
    seen = at if times.last_seen_at is None else max(times.last_seen_at, at)
    if category is Category.PRESENCE:
        return ActivityTimes(
            times.last_activity_at, times.last_activity_kind, times.last_activity_source, seen
        )
    if times.last_activity_at is not None and times.last_activity_at >= at:
        return ActivityTimes(
            times.last_activity_at, times.last_activity_kind, times.last_activity_source, seen
        )
    return ActivityTimes(at, kind.value, source, seen)


_MIN = datetime.min.replace(tzinfo=UTC)


def merge_times(a: ActivityTimes, b: ActivityTimes | None) -> ActivityTimes:
    """Two observations of a session's activity as one: the newer meaningful activity (with its
    kind and source) and the later ``last_seen_at``. Commutative, like the store's flush."""
    if b is None:
        return a
    newer = b if (b.last_activity_at or _MIN) > (a.last_activity_at or _MIN) else a
    seen = max((t for t in (a.last_seen_at, b.last_seen_at) if t is not None), default=None)
    return ActivityTimes(
        newer.last_activity_at, newer.last_activity_kind, newer.last_activity_source, seen
    )
