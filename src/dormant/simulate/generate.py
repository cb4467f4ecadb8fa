"""Synthetic traces of people using per-user containers: seeded, reproducible, documented.

Every user gets their own parameters (drawn once from the population's ranges), so users differ
the way real ones do: some think in long pauses, some never take breaks, some close the laptop for
every meeting. Time is UTC; the trace starts on a Monday at 00:00 and lasts ``days`` days.

``steady`` (developers in a workspace, a working day)
    Arrive around 08:45 (sd 35 min), work about 8.5 hours. Work comes in bursts (median 15-45 min
    per user) of meaningful activity every 30-75 s (per user; lognormal), separated by breaks: a
    short pause (2-6 min: reading, a review), coffee (8-20 min), a meeting (25-60 min), and lunch
    once around 12:00-13:30 (30-75 min). The tab stays connected; a flaky network drops it now
    and then (reconnecting after a median 3 s, sometimes after the 30 s grace); some users close
    the laptop for meetings and lunch. At the end of the day 15% log out, the others close the
    tab or leave it open overnight. Weekends: one in ten works a little.
``bursty`` (agent sandboxes, chat pods, previews)
    Visits from 07:00 to 23:00 separated by heavy-tailed (Pareto) gaps: shape 1.1-1.6 and scale
    3-20 min per user, so most gaps are short and a few last hours. A visit is a few minutes of
    activity every ~20 s; half of the tabs are closed after a visit.
``idle`` (mostly idle: dashboards, forgotten notebooks)
    One to four short visits a day (median 6 min, activity every ~40 s) at random daytime hours,
    none on a fifth of the days; the tab is mostly left open between visits.
``mixed``
    Half steady, 30% bursty, 20% idle.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from datetime import UTC, datetime

from dormant.errors import InvalidInput
from dormant.simulate.trace import (
    CONNECT,
    DISCONNECT,
    LOGOUT,
    Trace,
    TraceEvent,
    make_trace,
)

POPULATIONS = ("steady", "bursty", "idle", "mixed")
#: Monday, 5 January 2026, 00:00 UTC.
ORIGIN = datetime(2026, 1, 5, tzinfo=UTC).timestamp()
DAY = 86400.0
HOUR = 3600.0
MINUTE = 60.0


class _User:
    def __init__(self, name: str, rng: random.Random) -> None:
        self.name = name
        self.session = f"{name}/ws"
        self.rng = rng
        self.events: list[TraceEvent] = []
        self.connected = 0

    def emit(self, ts: float, event: str) -> None:
        self.events.append(TraceEvent(float(round(ts)), self.session, self.name, event))

    def connect(self, ts: float) -> None:
        self.connected += 1
        self.emit(ts, CONNECT)

    def disconnect(self, ts: float) -> None:
        if self.connected > 0:
            self.connected -= 1
            self.emit(ts, DISCONNECT)

    def logout(self, ts: float) -> None:
        self.emit(ts, LOGOUT)
        self.connected = 0

    def activity(
        self,
        start: float,
        end: float,
        median_gap: float,
        kinds: tuple[str, ...],
        weights: tuple[float, ...],
        flaky: float = 0.0,
    ) -> float:
        """Meaningful events from ``start`` to about ``end``; returns the time of the last one
        (or of the last reconnect, if the network dropped at the very end)."""
        rng = self.rng
        t = start
        last = start
        while t < end:
            self.emit(t, rng.choices(kinds, weights)[0])
            last = max(last, t)
            step = max(1.0, min(rng.lognormvariate(math.log(median_gap), 0.6), 4 * median_gap))
            if flaky and self.connected and rng.random() < flaky * median_gap / HOUR:
                # the network drops (flaky times an hour): back after a few seconds, sometimes
                # after much longer; the user carries on once it is back
                down = rng.lognormvariate(math.log(3.0), 1.3)
                self.disconnect(t + 1)
                self.connect(t + 1 + down)
                step = max(step, 2 + down)
                last = t + 1 + down
            t += step
        return last


_WORK = ("user-interaction", "file-change", "build", "command")
_WORK_W = (0.55, 0.3, 0.05, 0.1)
_CHAT = ("chat", "request", "user-interaction")
_CHAT_W = (0.6, 0.25, 0.15)


def _steady_day(u: _User, day0: float, p: dict[str, float]) -> None:
    rng = u.rng
    arrive = day0 + min(max(rng.gauss(8.75, 0.58), 6.5), 11.0) * HOUR
    leave = arrive + min(max(rng.gauss(8.5, 0.75), 5.0), 11.0) * HOUR
    lunch_at = day0 + rng.uniform(12.0, 13.5) * HOUR
    had_lunch = False
    if not u.connected:
        u.connect(arrive - rng.uniform(2, 20))
    t = arrive
    while t < leave:
        u.emit(t - rng.uniform(1, 5), "focus")
        burst = rng.lognormvariate(math.log(p["burst"]), 0.6)
        end = min(t + burst, leave)
        t = u.activity(t, end, p["think"], _WORK, _WORK_W, p["flaky"])
        if t >= leave - MINUTE:
            break
        if not had_lunch and t >= lunch_at:
            kind, pause = "lunch", rng.uniform(30, 75) * MINUTE
            had_lunch = True
        else:
            r = rng.random()
            if r < p["short"]:
                kind, pause = "short", rng.uniform(2, 6) * MINUTE
            elif r < p["short"] + (1 - p["short"]) * 0.6:
                kind, pause = "coffee", rng.uniform(8, 20) * MINUTE
            else:
                kind, pause = "meeting", rng.uniform(25, 60) * MINUTE
        closes = kind in ("lunch", "meeting") and rng.random() < p["close"]
        if closes:
            u.disconnect(t + rng.uniform(5, 60))
        t += pause
        if closes:
            u.connect(t - rng.uniform(1, 10))
    r = rng.random()
    if r < 0.15:
        u.logout(t + rng.uniform(10, 120))
    elif r < 0.15 + 0.85 * p["close_tab"]:
        u.disconnect(t + rng.uniform(10, 300))


def _steady(u: _User, days: int) -> None:
    rng = u.rng
    p = {
        "think": rng.uniform(30, 75),
        "burst": rng.uniform(15, 45) * MINUTE,
        "short": rng.uniform(0.3, 0.6),
        "flaky": rng.uniform(0.05, 0.4),
        "close": rng.uniform(0.0, 0.5),
        "close_tab": rng.uniform(0.3, 0.8),
    }
    for d in range(days):
        weekend = d % 7 in (5, 6)
        if weekend and rng.random() > 0.1:
            continue
        _steady_day(u, ORIGIN + d * DAY, p)


def _bursty(u: _User, days: int) -> None:
    rng = u.rng
    shape = rng.uniform(1.1, 1.6)
    scale = rng.uniform(3, 20) * MINUTE
    visit = rng.uniform(2, 8) * MINUTE
    t = ORIGIN + rng.uniform(7, 12) * HOUR
    end = ORIGIN + days * DAY
    while t < end:
        hour = (t - ORIGIN) % DAY / HOUR
        if hour < 7 or hour >= 23:  # asleep: the next visit is in the morning
            day0 = ORIGIN + math.floor((t - ORIGIN) / DAY) * DAY
            t = day0 + (DAY if hour >= 23 else 0) + rng.uniform(7, 10) * HOUR
            continue
        if not u.connected:
            u.connect(t - rng.uniform(1, 5))
        stop = t + rng.lognormvariate(math.log(visit), 0.8)
        t = u.activity(t, stop, 20.0, _CHAT, _CHAT_W, 0.1)
        if rng.random() < 0.5:
            u.disconnect(t + rng.uniform(5, 90))
        t += scale * rng.paretovariate(shape)


def _idle(u: _User, days: int) -> None:
    rng = u.rng
    mean_visits = rng.uniform(1.0, 3.0)
    keep_open = rng.uniform(0.5, 0.9)
    for d in range(days):
        if rng.random() < 0.2:
            continue
        day0 = ORIGIN + d * DAY
        n = min(4, max(1, round(rng.expovariate(1 / mean_visits))))
        starts = sorted(day0 + rng.uniform(8, 20) * HOUR for _ in range(n))
        for start in starts:
            if not u.connected:
                u.connect(start - rng.uniform(1, 5))
            stop = start + rng.lognormvariate(math.log(6 * MINUTE), 0.7)
            t = u.activity(start, stop, 40.0, _WORK, _WORK_W)
            if rng.random() > keep_open:
                u.disconnect(t + rng.uniform(5, 120))


_MAKERS: dict[str, Callable[[_User, int], None]] = {
    "steady": _steady,
    "bursty": _bursty,
    "idle": _idle,
}


def generate(population: str, users: int = 100, days: int = 1, seed: int = 1) -> Trace:
    """A trace of ``users`` users of ``population`` over ``days`` days, reproducible by seed."""
    if population not in POPULATIONS:
        raise InvalidInput(f"population must be one of {', '.join(POPULATIONS)}")
    if not 1 <= users <= 1_000_000:
        raise InvalidInput("users must be between 1 and 1,000,000")
    if not 1 <= days <= 366:
        raise InvalidInput("days must be between 1 and 366")
    events: list[TraceEvent] = []
    for i in range(users):
        rng = random.Random(f"{seed}:{population}:{i}")
        kind = population
        if population == "mixed":
            r = rng.random()
            kind = "steady" if r < 0.5 else "bursty" if r < 0.8 else "idle"
        user = _User(f"{kind}-{i:05d}", rng)
        _MAKERS[kind](user, days)
        end = ORIGIN + days * DAY
        events.extend(e for e in user.events if ORIGIN <= e.ts < end)
    meta = {"generator": population, "users": users, "days": days, "seed": seed}
    return make_trace(
        events, name=f"{population}-{users}u-{days}d-s{seed}", end=ORIGIN + days * DAY, meta=meta
    )
