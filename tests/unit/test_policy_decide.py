"""``decide``: every deadline, checked just before, at and just after its threshold."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dormant.policy import (
    Action,
    ActivityKind,
    ActivityTimes,
    Decision,
    PolicySettings,
    SessionView,
    State,
    apply_activity,
    decide,
    preset,
)

T0 = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)
MS = timedelta(milliseconds=1)
BALANCED = preset("balanced")


def minutes(n: float) -> timedelta:
    return timedelta(minutes=n)


def running(**kw: Any) -> SessionView:
    return replace(SessionView(state=State.RUNNING, created_at=T0, state_since=T0), **kw)


def connected(**kw: Any) -> SessionView:
    return running(connections=1, ever_connected=True, **kw)


def assert_threshold(decision: Decision, at: datetime) -> None:
    """The decision falls due exactly at ``at``: not 1 ms before, and it stays due afterwards."""
    assert decision.at == at
    assert not decision.due(at - MS)
    assert decision.due(at)
    assert decision.due(at + MS)


# --- inactivity -------------------------------------------------------------------------------


def test_untouched_session_sleeps_after_sleep_after_since_creation() -> None:
    d = decide(running(), BALANCED, T0)
    assert d.action is Action.SLEEP
    assert d.code == "inactivity"
    assert_threshold(d, T0 + minutes(15))
    assert "15m" in d.reason
    assert "creation" in d.reason


def test_inactivity_is_measured_from_last_meaningful_activity() -> None:
    session = running(last_activity_at=T0 + minutes(5), last_activity_kind="user-interaction")
    d = decide(session, BALANCED, T0 + minutes(6))
    assert d.action is Action.SLEEP
    assert d.code == "inactivity"
    assert_threshold(d, T0 + minutes(20))
    assert "no meaningful activity for 15m" in d.reason
    assert "user-interaction" in d.reason


@pytest.mark.parametrize(
    ("name", "after", "text"),
    [
        ("aggressive", minutes(5), "5m"),
        ("balanced", minutes(15), "15m"),
        ("conservative", minutes(30), "30m"),
    ],
)
def test_each_preset_sleeps_after_its_own_period(name: str, after: timedelta, text: str) -> None:
    d = decide(running(last_activity_at=T0), preset(name), T0)
    assert d.action is Action.SLEEP
    assert_threshold(d, T0 + after)
    assert text in d.reason


def test_a_wake_restarts_the_inactivity_clock() -> None:
    woke = T0 + timedelta(hours=3)
    session = running(last_activity_at=T0, last_activity_kind="chat", state_since=woke)
    d = decide(session, BALANCED, woke)
    assert d.action is Action.SLEEP
    assert_threshold(d, woke + minutes(15))
    assert "since it started" in d.reason


def test_activity_after_a_wake_counts_from_the_activity() -> None:
    woke = T0 + timedelta(hours=3)
    session = running(last_activity_at=woke + minutes(4), state_since=woke)
    d = decide(session, BALANCED, woke + minutes(5))
    assert_threshold(d, woke + minutes(19))


def test_a_session_that_never_had_activity_but_was_woken_counts_from_the_wake() -> None:
    woke = T0 + timedelta(hours=1)
    d = decide(running(state_since=woke), BALANCED, woke)
    assert_threshold(d, woke + minutes(15))
    assert "since it started" in d.reason


def test_a_silent_connected_session_still_sleeps() -> None:
    # An open browser tab is not a user: once warned, the silent session sleeps on time.
    session = connected(last_activity_at=T0, warned_at=T0 + minutes(14))
    d = decide(session, BALANCED, T0 + minutes(14))
    assert d.action is Action.SLEEP
    assert d.code == "inactivity"
    assert_threshold(d, T0 + minutes(15))


def test_the_clock_now_never_moves_a_deadline() -> None:
    session = running(last_activity_at=T0)
    ats = {decide(session, BALANCED, T0 + minutes(m)).at for m in (0, 1, 14, 15, 60, 60 * 24)}
    assert ats == {T0 + minutes(15)}


# --- sleep warning ----------------------------------------------------------------------------


def test_connected_session_is_warned_warn_before_the_sleep() -> None:
    d = decide(connected(last_activity_at=T0), BALANCED, T0)
    assert d.action is Action.WARN
    assert d.code == "sleep_warning"
    assert_threshold(d, T0 + minutes(14))
    assert "will sleep at 2024-03-01T09:15:00Z" in d.reason
    assert "15m" in d.reason


def test_nobody_to_warn_means_no_warning() -> None:
    # Never connected (REST-only): judged by activity alone, no one can hear a warning.
    d = decide(running(last_activity_at=T0), BALANCED, T0)
    assert d.action is Action.SLEEP
    assert_threshold(d, T0 + minutes(15))


def test_warn_before_zero_disables_the_warning() -> None:
    policy = BALANCED.with_overrides({"warn_before": 0})
    d = decide(connected(last_activity_at=T0), policy, T0)
    assert d.action is Action.SLEEP
    assert_threshold(d, T0 + minutes(15))


@pytest.mark.parametrize(
    ("warned_at", "action", "at"),
    [
        (None, Action.WARN, T0 + minutes(14)),
        (T0 + minutes(14) - MS, Action.WARN, T0 + minutes(14)),
        (T0 + minutes(14), Action.SLEEP, T0 + minutes(15)),
        (T0 + minutes(14) + MS, Action.SLEEP, T0 + minutes(15)),
    ],
)
def test_once_warned_the_decision_becomes_the_sleep(
    warned_at: datetime | None, action: Action, at: datetime
) -> None:
    d = decide(connected(last_activity_at=T0, warned_at=warned_at), BALANCED, T0 + minutes(14))
    assert d.action is action
    assert d.at == at
    assert d.code == ("sleep_warning" if action is Action.WARN else "inactivity")


def test_activity_after_a_warning_moves_the_deadline_and_needs_a_new_warning() -> None:
    warned = T0 + minutes(14)
    again = T0 + minutes(14) + timedelta(seconds=30)
    session = connected(last_activity_at=again, last_activity_kind="file-change", warned_at=warned)
    d = decide(session, BALANCED, again)
    assert d.action is Action.WARN
    assert_threshold(d, again + minutes(14))
    # the old deadline is gone: nothing is due at the old sleep time
    assert not d.due(T0 + minutes(15))
    # after the new warning is sent the decision is the new sleep
    d2 = decide(replace(session, warned_at=again + minutes(14)), BALANCED, again + minutes(14))
    assert d2.action is Action.SLEEP
    assert_threshold(d2, again + minutes(15))


def test_warning_before_a_keepalive_expires() -> None:
    until = T0 + timedelta(hours=2)
    d = decide(connected(last_activity_at=T0, keepalive_until=until), BALANCED, T0)
    assert d.action is Action.WARN
    assert_threshold(d, until - timedelta(seconds=60))


# --- disconnect grace -------------------------------------------------------------------------


def test_last_connection_closing_starts_the_grace_period() -> None:
    gone = T0 + minutes(5)
    session = running(
        last_activity_at=T0 + minutes(1),
        ever_connected=True,
        connections=0,
        last_disconnect_at=gone,
    )
    d = decide(session, BALANCED, gone)
    assert d.action is Action.SLEEP
    assert d.code == "disconnect_grace"
    assert_threshold(d, gone + timedelta(seconds=30))
    assert "30s" in d.reason
    assert "2024-03-01T09:05:00Z" in d.reason


def test_grace_counts_from_activity_after_the_disconnect() -> None:
    # e.g. a REST call after the browser went away
    gone = T0 + minutes(5)
    later = T0 + minutes(6)
    session = running(
        last_activity_at=later, ever_connected=True, connections=0, last_disconnect_at=gone
    )
    d = decide(session, BALANCED, later)
    assert d.code == "disconnect_grace"
    assert_threshold(d, later + timedelta(seconds=30))


def test_grace_counts_from_a_wake_after_the_disconnect() -> None:
    gone = T0 + minutes(5)
    woke = T0 + timedelta(hours=2)
    session = running(
        last_activity_at=T0,
        state_since=woke,
        ever_connected=True,
        connections=0,
        last_disconnect_at=gone,
    )
    d = decide(session, BALANCED, woke)
    assert d.code == "disconnect_grace"
    assert_threshold(d, woke + timedelta(seconds=30))


def test_a_reconnect_cancels_the_grace() -> None:
    gone = T0 + minutes(5)
    session = running(
        last_activity_at=T0, ever_connected=True, connections=1, last_disconnect_at=gone
    )
    d = decide(session, BALANCED, gone + timedelta(seconds=10))
    assert d.code != "disconnect_grace"
    assert not d.due(gone + timedelta(seconds=30))
    assert d.action is Action.WARN
    assert d.at == T0 + minutes(14)


def test_a_session_that_never_connected_has_no_grace() -> None:
    d = decide(running(last_activity_at=T0, connections=0), BALANCED, T0)
    assert d.code == "inactivity"
    assert d.at == T0 + minutes(15)


def test_the_inactivity_sleep_wins_when_it_comes_before_the_grace_ends() -> None:
    gone = T0 + minutes(14) + timedelta(seconds=50)
    session = running(
        last_activity_at=T0, ever_connected=True, connections=0, last_disconnect_at=gone
    )
    d = decide(session, BALANCED, gone)
    assert d.action is Action.SLEEP
    assert d.code == "inactivity"
    assert_threshold(d, T0 + minutes(15))


def test_custom_grace_period() -> None:
    policy = BALANCED.with_overrides({"disconnect_grace": "2m"})
    gone = T0 + minutes(1)
    session = running(
        last_activity_at=T0, ever_connected=True, connections=0, last_disconnect_at=gone
    )
    d = decide(session, policy, gone)
    assert d.code == "disconnect_grace"
    assert_threshold(d, gone + minutes(2))
    assert "2m" in d.reason


def test_busy_postpones_the_grace_sleep() -> None:
    gone = T0 + minutes(1)
    busy = T0 + minutes(10)
    session = running(
        last_activity_at=T0,
        ever_connected=True,
        connections=0,
        last_disconnect_at=gone,
        busy_until=busy,
    )
    d = decide(session, BALANCED, gone)
    assert d.action is Action.SLEEP
    assert d.code == "disconnect_grace"
    assert_threshold(d, busy)


def test_keepalive_past_the_inactivity_sleep_postpones_a_disconnected_session() -> None:
    gone = T0 + minutes(1)
    until = T0 + timedelta(hours=2)
    session = running(
        last_activity_at=T0,
        ever_connected=True,
        connections=0,
        last_disconnect_at=gone,
        keepalive_until=until,
    )
    d = decide(session, BALANCED, gone)
    assert d.action is Action.SLEEP
    assert_threshold(d, until)
    assert "kept alive" in d.reason


# --- busy and keep-alive ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "word"), [("busy_until", "busy"), ("keepalive_until", "kept alive")]
)
def test_protection_postpones_the_inactivity_sleep(field: str, word: str) -> None:
    until = T0 + timedelta(hours=1)
    d = decide(running(last_activity_at=T0, **{field: until}), BALANCED, T0 + minutes(30))
    assert d.action is Action.SLEEP
    assert d.code == "inactivity"
    assert_threshold(d, until)
    assert f"{word} until 2024-03-01T10:00:00Z" in d.reason


def test_protection_that_ends_before_the_inactivity_sleep_changes_nothing() -> None:
    d = decide(running(last_activity_at=T0, busy_until=T0 + minutes(5)), BALANCED, T0)
    assert_threshold(d, T0 + minutes(15))
    assert "busy" not in d.reason


def test_protection_ending_exactly_at_the_inactivity_sleep() -> None:
    d = decide(running(last_activity_at=T0, busy_until=T0 + minutes(15)), BALANCED, T0)
    assert_threshold(d, T0 + minutes(15))
    assert "15m" in d.reason


def test_the_later_of_busy_and_keepalive_wins() -> None:
    session = running(
        last_activity_at=T0,
        busy_until=T0 + timedelta(hours=1),
        keepalive_until=T0 + timedelta(hours=3),
    )
    d = decide(session, BALANCED, T0)
    assert_threshold(d, T0 + timedelta(hours=3))
    assert "kept alive" in d.reason


# --- max lifetime -----------------------------------------------------------------------------


def test_max_lifetime_deletes_an_active_running_session() -> None:
    policy = BALANCED.with_overrides({"max_lifetime": "1h"})
    session = connected(last_activity_at=T0 + minutes(59), keepalive_until=T0 + timedelta(hours=5))
    d = decide(session, policy, T0 + minutes(59))
    assert d.action is Action.DELETE
    assert d.code == "max_lifetime"
    assert_threshold(d, T0 + timedelta(hours=1))
    assert "1h" in d.reason


def test_max_lifetime_deletes_a_sleeping_session_before_the_asleep_limit() -> None:
    policy = BALANCED.with_overrides({"max_lifetime": "2h"})
    session = SessionView(state=State.SLEEPING, created_at=T0, state_since=T0 + minutes(15))
    d = decide(session, policy, T0 + minutes(20))
    assert d.action is Action.DELETE
    assert d.code == "max_lifetime"
    assert_threshold(d, T0 + timedelta(hours=2))


def test_max_lifetime_deletes_a_failed_session() -> None:
    policy = BALANCED.with_overrides({"max_lifetime": "30m"})
    session = SessionView(state=State.FAILED, created_at=T0, state_since=T0 + minutes(1))
    d = decide(session, policy, T0)
    assert d.code == "max_lifetime"
    assert_threshold(d, T0 + minutes(30))


def test_a_delete_beats_a_sleep_due_at_the_same_instant() -> None:
    policy = BALANCED.with_overrides({"max_lifetime": "15m"})
    d = decide(running(), policy, T0)
    assert d.action is Action.DELETE
    assert d.code == "max_lifetime"
    assert d.at == T0 + minutes(15)


def test_a_sleep_due_earlier_than_max_lifetime_comes_first() -> None:
    policy = BALANCED.with_overrides({"max_lifetime": "15m", "sleep_after": "10m"})
    d = decide(running(), policy, T0)
    assert d.action is Action.SLEEP
    assert d.at == T0 + minutes(10)


def test_max_lifetime_off_by_default() -> None:
    assert BALANCED.max_lifetime is None
    session = SessionView(state=State.SLEEPING, created_at=T0, state_since=T0)
    assert decide(session, BALANCED, T0).code == "asleep_too_long"


# --- logout -----------------------------------------------------------------------------------


@pytest.mark.parametrize("state", [State.RUNNING, State.SLEEPING, State.FAILED])
def test_logout_deletes_at_once(state: State) -> None:
    out = T0 + minutes(7)
    session = SessionView(
        state=state,
        created_at=T0,
        state_since=T0,
        last_activity_at=out,
        connections=1,
        ever_connected=True,
        keepalive_until=T0 + timedelta(hours=6),
        logged_out_at=out,
    )
    d = decide(session, BALANCED.with_overrides({"max_lifetime": "1h"}), out)
    assert d.action is Action.DELETE
    assert d.reason == "user logged out"
    assert d.code == "logout"
    assert_threshold(d, out)


def test_a_deleted_session_stays_deleted_even_after_logout() -> None:
    session = SessionView(state=State.DELETED, created_at=T0, state_since=T0, logged_out_at=T0)
    d = decide(session, BALANCED, T0)
    assert d.action is Action.NONE
    assert d.at is None


# --- sleeping, failed, transitional, deleted --------------------------------------------------


def test_sleeping_session_is_deleted_after_delete_after() -> None:
    since = T0 + minutes(15)
    session = SessionView(
        state=State.SLEEPING, created_at=T0, state_since=since, last_activity_at=T0
    )
    d = decide(session, BALANCED, since)
    assert d.action is Action.DELETE
    assert d.code == "asleep_too_long"
    assert_threshold(d, since + timedelta(hours=24))
    assert "deleted after 24h asleep" in d.reason
    assert "2024-03-01T09:15:00Z" in d.reason


@pytest.mark.parametrize(
    ("name", "after", "text"),
    [
        ("aggressive", timedelta(hours=1), "1h"),
        ("balanced", timedelta(hours=24), "24h"),
        ("conservative", timedelta(days=7), "7d"),
    ],
)
def test_each_preset_deletes_after_its_own_asleep_period(
    name: str, after: timedelta, text: str
) -> None:
    session = SessionView(state=State.SLEEPING, created_at=T0, state_since=T0)
    d = decide(session, preset(name), T0)
    assert d.code == "asleep_too_long"
    assert_threshold(d, T0 + after)
    assert text in d.reason


def test_failed_session_is_deleted_after_delete_after() -> None:
    since = T0 + minutes(3)
    session = SessionView(state=State.FAILED, created_at=T0, state_since=since)
    d = decide(session, BALANCED, since)
    assert d.action is Action.DELETE
    assert d.code == "failed_expired"
    assert_threshold(d, since + timedelta(hours=24))
    assert "24h" in d.reason


@pytest.mark.parametrize("state", [State.CREATING, State.STARTING, State.STOPPING, State.DELETING])
def test_transitional_states_wait(state: State) -> None:
    assert state.transitional
    session = SessionView(state=state, created_at=T0, state_since=T0, last_activity_at=T0)
    d = decide(session, BALANCED, T0 + timedelta(days=30))
    assert d.action is Action.NONE
    assert d.at is None
    assert d.code == "waiting"
    assert state.value in d.reason
    assert not d.due(T0 + timedelta(days=365))


def test_deleted_session_needs_nothing() -> None:
    session = SessionView(state=State.DELETED, created_at=T0, state_since=T0)
    d = decide(session, BALANCED.with_overrides({"max_lifetime": "1h"}), T0 + timedelta(days=2))
    assert d == Decision(Action.NONE, None, "session is deleted", "deleted")
    assert not d.due(T0 + timedelta(days=3))
    assert not State.DELETED.live


def test_stable_codes() -> None:
    gone = T0 + minutes(1)
    policy = BALANCED.with_overrides({"max_lifetime": "1m"})
    cases = {
        "inactivity": decide(running(), BALANCED, T0),
        "sleep_warning": decide(connected(), BALANCED, T0),
        "disconnect_grace": decide(
            running(ever_connected=True, last_disconnect_at=gone), BALANCED, T0
        ),
        "max_lifetime": decide(running(), policy, T0),
        "logout": decide(running(logged_out_at=T0), BALANCED, T0),
        "asleep_too_long": decide(
            SessionView(state=State.SLEEPING, created_at=T0, state_since=T0), BALANCED, T0
        ),
    }
    assert {code: d.code for code, d in cases.items()} == {code: code for code in cases}


# --- done-when scenarios ----------------------------------------------------------------------


def test_balanced_session_left_alone_sleeps_at_15m_then_is_deleted_24h_later() -> None:
    session = running()
    # checks every 30 s: nothing is due until 15 minutes
    now = T0
    while now < T0 + minutes(15):
        assert not decide(session, BALANCED, now).due(now)
        now += timedelta(seconds=30)
    d = decide(session, BALANCED, now)
    assert d.action is Action.SLEEP
    assert d.due(T0 + minutes(15))
    assert not d.due(T0 + minutes(15) - MS)

    asleep = SessionView(state=State.SLEEPING, created_at=T0, state_since=T0 + minutes(15))
    gone = decide(asleep, BALANCED, T0 + minutes(15))
    assert gone.action is Action.DELETE
    assert gone.code == "asleep_too_long"
    assert_threshold(gone, T0 + minutes(15) + timedelta(hours=24))


@pytest.mark.parametrize("connections", [0, 1])
def test_activity_every_5_minutes_never_sleeps_over_8_hours(connections: int) -> None:
    times = ActivityTimes()
    step = timedelta(seconds=20)
    end = T0 + timedelta(hours=8)
    now = T0
    checks = 0
    while now <= end:
        if (now - T0) % minutes(5) == timedelta(0):
            times = apply_activity(times, ActivityKind.USER_INTERACTION, now, "socket")
        session = running(
            last_activity_at=times.last_activity_at,
            last_activity_kind=times.last_activity_kind,
            last_seen_at=times.last_seen_at,
            connections=connections,
            ever_connected=connections > 0,
        )
        d = decide(session, BALANCED, now)
        assert d.action in (Action.SLEEP, Action.WARN)
        assert not d.due(now), f"{d} due at {now}"
        checks += 1
        now += step
    assert checks == 8 * 180 + 1
    assert times.last_activity_at == end
    # and once the activity stops, it sleeps 15 minutes after the last one
    final = decide(running(last_activity_at=end, warned_at=end + minutes(14)), BALANCED, end)
    assert_threshold(final, end + minutes(15))


def test_presence_and_heartbeats_alone_do_not_keep_a_session_awake() -> None:
    times = apply_activity(ActivityTimes(), ActivityKind.USER_INTERACTION, T0)
    for m in range(1, 30):
        times = apply_activity(times, ActivityKind.FOCUS, T0 + minutes(m))
        times = apply_activity(times, ActivityKind.PONG, T0 + minutes(m))
    session = connected(
        last_activity_at=times.last_activity_at,
        last_seen_at=times.last_seen_at,
        warned_at=T0 + minutes(14),
    )
    d = decide(session, BALANCED, T0 + minutes(29))
    assert d.action is Action.SLEEP
    assert d.due(T0 + minutes(15))


def test_custom_policy_numbers_are_used() -> None:
    policy = PolicySettings(sleep_after=120, warn_before=10, delete_after=60)
    d = decide(connected(last_activity_at=T0), policy, T0)
    assert d.action is Action.WARN
    assert_threshold(d, T0 + timedelta(seconds=110))
    assert "2m" in d.reason
