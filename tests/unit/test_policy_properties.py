"""Properties of the policy that must hold for every input, checked with Hypothesis."""

from __future__ import annotations

from dataclasses import fields
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dormant.errors import InvalidInput
from dormant.policy import (
    Action,
    ActivityKind,
    ActivityTimes,
    Category,
    Level,
    PolicySettings,
    SessionView,
    State,
    apply_activity,
    decide,
    format_duration,
    level,
    parse_duration,
    preset,
)
from dormant.policy.settings import MAX_DURATION

DAY = 86400

moments = st.datetimes(
    min_value=datetime(2000, 1, 1),  # noqa: DTZ001 - hypothesis wants naive bounds
    max_value=datetime(2100, 1, 1),  # noqa: DTZ001
    timezones=st.just(UTC),
)
maybe_moment = st.none() | moments
#: a span of time in whole microseconds, so that no rounding blurs a threshold
spans = st.integers(min_value=0, max_value=30 * DAY * 10**6).map(
    lambda us: timedelta(microseconds=us)
)
kinds = st.sampled_from(list(ActivityKind))
states = st.sampled_from(list(State))
DURATION_KEYS = [
    f.name for f in fields(PolicySettings) if f.name not in ("missed_pongs", "wake_on_activity")
]


@st.composite
def policies(draw: st.DrawFn, *, lifetime: bool = True) -> PolicySettings:
    """Valid settings in whole seconds (so timedeltas are exact)."""
    sleep_after = draw(st.integers(min_value=1, max_value=7 * DAY))
    warn_before = draw(st.integers(min_value=0, max_value=sleep_after - 1))
    max_lifetime = (
        draw(st.none() | st.integers(min_value=1, max_value=366 * DAY)) if lifetime else None
    )
    return PolicySettings(
        sleep_after=sleep_after,
        warn_before=warn_before,
        delete_after=draw(st.integers(min_value=0, max_value=30 * DAY)),
        disconnect_grace=draw(st.integers(min_value=0, max_value=DAY)),
        max_lifetime=max_lifetime,
    )


@st.composite
def sessions(draw: st.DrawFn, *, logout: bool = True) -> SessionView:
    """Any consistent session: created <= state_since; activity before the current state began
    unless it is running (a sleeping or failed session does not do things)."""
    created = draw(moments)
    state = draw(states)
    since = created + draw(spans)
    if state is State.RUNNING:
        last = draw(st.none() | st.builds(lambda d: created + d, spans))
    else:
        last = draw(
            st.none() | st.builds(lambda d: since - d, spans).map(lambda t: max(t, created))
        )
    connections = draw(st.integers(min_value=0, max_value=5))
    ever = connections > 0 or draw(st.booleans())
    return SessionView(
        state=state,
        created_at=created,
        state_since=since,
        last_activity_at=last,
        last_activity_kind=draw(st.none() | kinds.map(str)),
        connections=connections,
        ever_connected=ever,
        last_disconnect_at=draw(maybe_moment) if ever and connections == 0 else None,
        busy_until=draw(maybe_moment),
        keepalive_until=draw(maybe_moment),
        warned_at=draw(maybe_moment),
        logged_out_at=draw(maybe_moment) if logout else None,
    )


# (1) -------------------------------------------------------------------------------------------


@given(data=st.data(), policy=policies(lifetime=False), now=moments)
def test_recent_meaningful_activity_is_never_told_to_sleep_or_delete_now(
    data: st.DataObject, policy: PolicySettings, now: datetime
) -> None:
    within = timedelta(microseconds=data.draw(st.integers(0, int(policy.sleep_after * 10**6) - 1)))
    last = now - within
    created = last - data.draw(spans)
    since = data.draw(st.builds(lambda d: created + d, spans))
    connections = data.draw(st.integers(min_value=0, max_value=3))
    disconnect = None
    if connections == 0 and data.draw(st.booleans()):
        # a disconnect still within its grace period
        policy = policy.with_overrides({"disconnect_grace": max(policy.disconnect_grace, 1)})
        grace_us = int(policy.disconnect_grace * 10**6)
        disconnect = now - timedelta(microseconds=data.draw(st.integers(0, grace_us - 1)))
    session = SessionView(
        state=State.RUNNING,
        created_at=created,
        state_since=since,
        last_activity_at=last,
        connections=connections,
        ever_connected=connections > 0 or disconnect is not None,
        last_disconnect_at=disconnect,
        busy_until=data.draw(maybe_moment),
        keepalive_until=data.draw(maybe_moment),
        warned_at=data.draw(maybe_moment),
    )
    d = decide(session, policy, now)
    assert d.action is not Action.NONE
    assert d.at is not None
    if d.action in (Action.SLEEP, Action.DELETE):
        assert d.at > now
        assert not d.due(now)


# (2) -------------------------------------------------------------------------------------------


@given(session=sessions(logout=False), policy=policies(lifetime=False), now=moments)
def test_no_decision_is_due_before_the_last_activity(
    session: SessionView, policy: PolicySettings, now: datetime
) -> None:
    d = decide(session, policy, now)
    if d.action is Action.NONE:
        assert d.at is None
        assert session.state.transitional or session.state is State.DELETED
        return
    assert d.at is not None
    assert d.at >= (session.last_activity_at or session.created_at)
    assert d.at >= session.created_at


# (3) -------------------------------------------------------------------------------------------


@st.composite
def activity_times(draw: st.DrawFn) -> ActivityTimes:
    last = draw(maybe_moment)
    return ActivityTimes(
        last_activity_at=last,
        last_activity_kind=None if last is None else draw(kinds).value,
        last_activity_source=None if last is None else draw(st.sampled_from(["api", "socket"])),
        last_seen_at=draw(maybe_moment),
    )


@given(times=activity_times(), kind=kinds, at=moments, source=st.sampled_from(["api", "proxy"]))
def test_apply_activity_moves_timestamps_only_as_documented(
    times: ActivityTimes, kind: ActivityKind, at: datetime, source: str
) -> None:
    after = apply_activity(times, kind, at, source)
    if kind.category is Category.MEANINGFUL:
        expected = at if times.last_activity_at is None else max(times.last_activity_at, at)
        assert after.last_activity_at == expected
        if times.last_activity_at is not None:
            assert after.last_activity_at >= times.last_activity_at
        if times.last_activity_at is None or at > times.last_activity_at:
            assert (after.last_activity_kind, after.last_activity_source) == (kind.value, source)
        else:
            assert after.last_activity_kind == times.last_activity_kind
    else:
        assert after.last_activity_at == times.last_activity_at
        assert after.last_activity_kind == times.last_activity_kind
        assert after.last_activity_source == times.last_activity_source
    if kind.category is Category.KEEPALIVE:
        assert after == times
    else:
        assert after.last_seen_at is not None
        assert after.last_seen_at >= at
        if times.last_seen_at is not None:
            assert after.last_seen_at >= times.last_seen_at


@given(
    steps=st.lists(st.tuples(kinds, moments), max_size=20),
)
def test_last_activity_is_the_latest_meaningful_event_in_any_order(
    steps: list[tuple[ActivityKind, datetime]],
) -> None:
    times = ActivityTimes()
    for kind, at in steps:
        times = apply_activity(times, kind, at)
    meaningful = [at for kind, at in steps if kind.category is Category.MEANINGFUL]
    assert times.last_activity_at == (max(meaningful) if meaningful else None)


# (4) -------------------------------------------------------------------------------------------


@given(session=sessions(), policy=policies(), now1=moments, now2=moments)
def test_deadlines_do_not_depend_on_now(
    session: SessionView, policy: PolicySettings, now1: datetime, now2: datetime
) -> None:
    d1 = decide(session, policy, now1)
    d2 = decide(session, policy, now2)
    assert (d1.action, d1.at, d1.code) == (d2.action, d2.at, d2.code)


@given(session=sessions(), policy=policies(), now=moments)
def test_a_decision_falls_due_exactly_at_its_time(
    session: SessionView, policy: PolicySettings, now: datetime
) -> None:
    d = decide(session, policy, now)
    assert (d.at is None) == (d.action is Action.NONE)
    assert d.reason
    assert d.code
    if d.at is not None:
        assert d.due(d.at)
        assert not d.due(d.at - timedelta(microseconds=1))
        if session.logged_out_at is not None and session.state is not State.DELETED:
            assert (d.action, d.at, d.code) == (Action.DELETE, session.logged_out_at, "logout")
        elif policy.max_lifetime is not None:
            assert d.at <= session.created_at + timedelta(seconds=policy.max_lifetime)


# (5) -------------------------------------------------------------------------------------------

negative = (
    st.floats(max_value=-1e-9, allow_nan=False)
    | st.integers(max_value=-1)
    | st.integers(min_value=1, max_value=10**6).map(lambda n: f"-{n}m")
)
absurd = (
    st.floats(min_value=MAX_DURATION, exclude_min=True, allow_nan=False)
    | st.integers(min_value=int(MAX_DURATION) + 1)
    | st.integers(min_value=367, max_value=10**6).map(lambda n: f"{n}d")
    | st.integers(min_value=53, max_value=10**4).map(lambda n: f"{n}w")
)


@given(key=st.sampled_from(DURATION_KEYS), value=negative | absurd)
def test_with_overrides_refuses_negative_and_absurd_durations(key: str, value: Any) -> None:
    with pytest.raises(InvalidInput, match=f"policy.{key}"):
        preset("balanced").with_overrides({key: value})


@given(value=st.integers(max_value=0) | st.integers(min_value=101))
def test_with_overrides_refuses_missed_pongs_out_of_range(value: int) -> None:
    with pytest.raises(InvalidInput, match="missed_pongs"):
        preset("balanced").with_overrides({"missed_pongs": value})


@given(
    key=st.sampled_from(["delete_after", "disconnect_grace", "max_keepalive", "max_busy"]),
    value=st.floats(min_value=0, max_value=MAX_DURATION),
)
def test_with_overrides_keeps_any_sensible_duration_exactly(key: str, value: float) -> None:
    assert getattr(preset("balanced").with_overrides({key: value}), key) == value


# durations and levels --------------------------------------------------------------------------


@given(seconds=st.integers(min_value=0, max_value=int(MAX_DURATION)))
def test_format_then_parse_is_exact_for_whole_seconds(seconds: int) -> None:
    text = format_duration(seconds)
    assert parse_duration(text) == seconds
    assert parse_duration(text.upper()) == seconds


@given(session=sessions(), policy=policies(), now=moments, later=spans)
def test_levels_never_move_back_toward_active_as_time_passes(
    session: SessionView, policy: PolicySettings, now: datetime, later: timedelta
) -> None:
    order = [Level.ACTIVE, Level.IDLE, Level.BACKGROUND]
    a = level(session, policy, now)
    b = level(session, policy, now + later)
    if session.ever_connected and session.connections == 0:
        assert a is b is Level.DISCONNECTED
    else:
        assert order.index(a) <= order.index(b)
