"""Two-part reasons: what happened (only the past), then what comes next (only the future)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from dormant.policy import SessionView, State, decide, preset
from dormant.policy.why import Extra, span, why

T0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
BALANCED = preset("balanced")


def told(view: SessionView, now: datetime, extra: Extra = Extra()) -> str:
    return why(view, decide(view, BALANCED, now), now, extra)


def test_a_session_that_failed_seconds_ago_says_when_and_what_comes() -> None:
    failed_at = T0 + timedelta(minutes=2)
    view = SessionView(state=State.FAILED, created_at=T0, state_since=failed_at)
    now = failed_at + timedelta(seconds=30)
    assert told(view, now, Extra(error="image not found")) == (
        "failed at 10:02: image not found; deleting in 23h59m"
    )


def test_a_session_that_just_fell_asleep_is_not_asleep_for_a_day() -> None:
    view = SessionView(
        state=State.SLEEPING,
        created_at=T0,
        state_since=T0 + timedelta(minutes=35),
        last_activity_at=T0 + timedelta(minutes=5),
    )
    now = T0 + timedelta(minutes=36)
    assert told(view, now) == "asleep since 10:35 (idle 30m); deleting in 23h59m"
    conservative = decide(view, preset("conservative"), now)
    assert why(view, conservative, now).endswith("; deleting in 6d23h")


def test_a_running_session_says_how_long_ago_it_was_active_and_when_it_sleeps() -> None:
    view = SessionView(
        state=State.RUNNING,
        created_at=T0,
        state_since=T0,
        last_activity_at=T0 + timedelta(minutes=1),
        last_activity_kind="build",
    )
    now = T0 + timedelta(minutes=3)
    assert told(view, now) == "running, active 2m ago; sleeps in 13m (idle)"


def test_a_running_session_kept_alive_says_so() -> None:
    view = SessionView(
        state=State.RUNNING,
        created_at=T0,
        state_since=T0,
        keepalive_until=T0 + timedelta(hours=2),
    )
    assert told(view, T0 + timedelta(minutes=1)) == (
        "running since 10:00, no activity yet; sleeps in 1h59m (kept alive until then)"
    )


def test_an_overdue_action_reads_now_not_a_negative_span() -> None:
    view = SessionView(state=State.RUNNING, created_at=T0, state_since=T0)
    now = T0 + timedelta(hours=1)
    assert told(view, now).endswith("; sleeps now (idle)")


def test_queued_transitional_and_deleted_sessions() -> None:
    queued = SessionView(state=State.CREATING, created_at=T0, state_since=T0)
    extra = Extra(queued_at=T0, queue_limit="running")
    assert told(queued, T0, extra) == "queued since 10:00 (running full); starts when a slot frees"
    starting = SessionView(state=State.STARTING, created_at=T0, state_since=T0)
    assert told(starting, T0) == "starting since 10:00; running when the operation finishes"
    gone = SessionView(state=State.DELETED, created_at=T0, state_since=T0 + timedelta(days=2))
    assert told(gone, T0 + timedelta(days=2), Extra(end_reason="user logged out")) == (
        "deleted at 10:00: user logged out; nothing comes next"
    )
    # another day: the date is named
    assert told(gone, T0 + timedelta(days=3)).startswith("deleted at 2026-03-03 10:00")


def test_span_keeps_two_units_rounded_down() -> None:
    assert [span(s) for s in (0, 59, 60, 119, 3599, 86399, 7 * 86400 - 60, 90061)] == [
        "0s",
        "59s",
        "1m",
        "1m59s",
        "59m59s",
        "23h59m",
        "6d23h",
        "1d1h",
    ]
