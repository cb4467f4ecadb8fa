"""``level``: active < 2 min < idle < 10 min < background; disconnected when everyone left."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dormant.policy import Level, PolicySettings, SessionView, State, level, preset

T0 = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)
MS = timedelta(milliseconds=1)
POLICY = preset("balanced")


def session(**kw: Any) -> SessionView:
    return replace(SessionView(state=State.RUNNING, created_at=T0, state_since=T0), **kw)


@pytest.mark.parametrize(
    ("age", "expected"),
    [
        (timedelta(0), Level.ACTIVE),
        (timedelta(minutes=1), Level.ACTIVE),
        (timedelta(minutes=2) - MS, Level.ACTIVE),
        (timedelta(minutes=2), Level.IDLE),
        (timedelta(minutes=2) + MS, Level.IDLE),
        (timedelta(minutes=10) - MS, Level.IDLE),
        (timedelta(minutes=10), Level.BACKGROUND),
        (timedelta(minutes=10) + MS, Level.BACKGROUND),
        (timedelta(hours=5), Level.BACKGROUND),
    ],
)
def test_level_by_age_of_last_meaningful_activity(age: timedelta, expected: Level) -> None:
    last = T0 + timedelta(minutes=30)
    assert level(session(last_activity_at=last), POLICY, last + age) is expected


@pytest.mark.parametrize(
    ("age", "expected"),
    [
        (timedelta(minutes=2) - MS, Level.ACTIVE),
        (timedelta(minutes=2), Level.IDLE),
        (timedelta(minutes=10) - MS, Level.IDLE),
        (timedelta(minutes=10), Level.BACKGROUND),
    ],
)
def test_without_activity_the_age_counts_from_creation(age: timedelta, expected: Level) -> None:
    assert level(session(), POLICY, T0 + age) is expected


@pytest.mark.parametrize("age", [timedelta(0), timedelta(minutes=5), timedelta(hours=1)])
def test_everyone_gone_is_disconnected_whatever_the_activity(age: timedelta) -> None:
    s = session(last_activity_at=T0, ever_connected=True, connections=0, last_disconnect_at=T0)
    assert level(s, POLICY, T0 + age) is Level.DISCONNECTED


@pytest.mark.parametrize(
    ("connections", "ever_connected", "expected"),
    [
        (0, False, Level.ACTIVE),  # REST-only: judged by activity alone
        (1, True, Level.ACTIVE),
        (3, True, Level.ACTIVE),
        (0, True, Level.DISCONNECTED),
    ],
)
def test_disconnected_needs_a_past_connection_and_none_now(
    connections: int, ever_connected: bool, expected: Level
) -> None:
    s = session(last_activity_at=T0, connections=connections, ever_connected=ever_connected)
    assert level(s, POLICY, T0 + timedelta(seconds=30)) is expected


def test_a_reconnect_leaves_disconnected() -> None:
    gone = session(last_activity_at=T0, ever_connected=True, connections=0)
    back = replace(gone, connections=1)
    now = T0 + timedelta(minutes=3)
    assert level(gone, POLICY, now) is Level.DISCONNECTED
    assert level(back, POLICY, now) is Level.IDLE


def test_presence_does_not_count_as_activity() -> None:
    s = session(last_activity_at=T0, last_seen_at=T0 + timedelta(minutes=20), connections=1)
    assert level(s, POLICY, T0 + timedelta(minutes=20)) is Level.BACKGROUND


@pytest.mark.parametrize(
    ("age_s", "expected"),
    [(29.999, Level.ACTIVE), (30, Level.IDLE), (59.999, Level.IDLE), (60, Level.BACKGROUND)],
)
def test_thresholds_are_settings(age_s: float, expected: Level) -> None:
    policy = PolicySettings(active_within=30, idle_within=60)
    s = session(last_activity_at=T0)
    assert level(s, policy, T0 + timedelta(seconds=age_s)) is expected


def test_equal_thresholds_skip_idle() -> None:
    policy = POLICY.with_overrides({"active_within": "5m", "idle_within": "5m"})
    s = session(last_activity_at=T0)
    assert level(s, policy, T0 + timedelta(minutes=5) - MS) is Level.ACTIVE
    assert level(s, policy, T0 + timedelta(minutes=5)) is Level.BACKGROUND


def test_levels_only_move_forward_as_time_passes() -> None:
    s = session(last_activity_at=T0)
    order = [Level.ACTIVE, Level.IDLE, Level.BACKGROUND]
    seen = [level(s, POLICY, T0 + timedelta(seconds=sec)) for sec in range(0, 15 * 60, 7)]
    ranks = [order.index(lv) for lv in seen]
    assert ranks == sorted(ranks)
    assert set(seen) == set(order)
