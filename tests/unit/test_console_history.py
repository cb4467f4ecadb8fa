"""The overview's figures (dormant.api.console.history) on hand-written timelines, checked
against values worked out by hand."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from dormant.api.console.history import (
    Change,
    Timeline,
    buckets,
    levels_over_time,
    per_hour,
    percentile,
    savings,
    states_over_time,
    wake_latencies,
)

T0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def tl(
    sid: str, *changes: tuple[float, str | None, str, str], activity: tuple[float, ...] = ()
) -> Timeline:
    return Timeline(
        sid,
        tuple(Change(at(m), f, t, c) for m, f, t, c in changes),
        tuple(at(m) for m in activity),
    )


# a: created 10:00, running 10:01, sleeps 10:31 (stopping) -> 10:32 asleep, woken 11:32
#    (starting) -> running 11:32:30, still running at 12:00
A = tl(
    "a",
    (0, None, "creating", "create"),
    (0.5, "creating", "starting", "create"),
    (1, "starting", "running", "create"),
    (31, "running", "stopping", "idle"),
    (32, "stopping", "sleeping", "idle"),
    (92, "sleeping", "starting", "request"),
    (92.5, "starting", "running", "request"),
    activity=(1, 20, 100, 115),
)
# b: created 10:30, running 10:31, deleted at 11:00 (deleting) -> 11:01 (deleted)
B = tl(
    "b",
    (30, None, "creating", "create"),
    (30.5, "creating", "starting", "create"),
    (31, "starting", "running", "create"),
    (60, "running", "deleting", "api"),
    (61, "deleting", "deleted", "api"),
)


def test_savings_over_a_window_by_hand() -> None:
    # run (starting or running), minutes: a 0.5..31 = 30.5 and 92..120 = 28 -> 58.5;
    # b 30.5..60 = 29.5 -> 88 min in all = 1.467 h.
    # always on: a 0..120 = 120, b 30..61 = 31 -> 151 min = 2.517 h; saved 1.05 h
    got = savings([A, B], T0, at(120), price_per_hour=0.5, currency="EUR")
    assert (got.sessions, got.run_hours, got.always_on_hours) == (2, 1.467, 2.517)
    assert got.saved_hours == 1.05 and got.saved_money == 0.53  # 1.05 x 0.5, rounded
    # clipped to 11:00-12:00: run a 92..120 = 28, b 0 (deleting from 60) -> 28 min = 0.467 h;
    # always on a 60 + b 60..61 = 1 -> 61 min = 1.017 h
    late = savings([A, B], at(60), at(120), 0.5, "EUR")
    assert (late.run_hours, late.always_on_hours, late.saved_hours) == (0.467, 1.017, 0.55)
    assert late.as_dict()["saved_percent"] == 54.1


def test_states_and_levels_over_time() -> None:
    times = buckets(T0, at(120), timedelta(minutes=30))
    assert times == [at(0), at(30), at(60), at(90), at(120)]
    assert states_over_time([A, B], times) == {
        "creating": [1, 1, 0, 0, 0],
        "running": [0, 1, 0, 0, 1],
        "sleeping": [0, 0, 1, 1, 0],
        "deleting": [0, 0, 1, 0, 0],
    }
    # at 10:30 a's last sample was 10:20 (10 min: background), at 12:00 11:55 (5 min: idle)
    assert levels_over_time([A, B], times) == {
        "active": [0, 0, 0, 0, 0],
        "idle": [0, 0, 0, 0, 1],
        "background": [0, 1, 0, 0, 0],
    }


def test_per_hour_by_reason_and_wake_latency() -> None:
    hours = [at(0), at(60)]
    assert per_hour([A, B], hours) == {
        "sleep": {"idle": [1, 0]},
        "wake": {"request": [0, 1]},
        "delete": {"api": [0, 1]},
    }
    assert wake_latencies([A, B], T0, at(120)) == [30.0]
    assert wake_latencies([A, B], at(100), at(120)) == []


def test_nearest_rank_percentiles() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 95), percentile(values, 99)) == (
        50.0,
        95.0,
        99.0,
    )
    assert percentile([2.0], 99) == 2.0
    assert percentile([], 50) is None
