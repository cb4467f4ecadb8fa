"""The offline optimum and the frontier, checked by brute force on small traces."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from dormant.simulate.optimum import (
    ACTIVE_WINDOW,
    all_gaps,
    frontier,
    frontier_of_gaps,
    incarnations,
    optimum,
)
from dormant.simulate.policies import Prices, WakeLatency, resolve
from dormant.simulate.simulator import simulate
from dormant.simulate.trace import Trace, TraceEvent, make_trace

T0 = 1_767_600_000.0  # 2026-01-05T08:00:00Z
PRICES = Prices(0.12, 0.02)  # break-even 600 s


def random_trace(rng: random.Random, sessions: int = 2, span: float = 4 * 3600) -> Trace:
    """Whole seconds; a few users; activity with gaps from seconds to hours; some logouts."""
    events = []
    for s in range(sessions):
        user = f"u{s % 2}"
        t = T0 + rng.randrange(0, 600)
        events.append(TraceEvent(t, f"s{s}", user, "connect"))
        while t < T0 + span:
            t += rng.choice([5, 30, 90, 200, 500, 700, 1500, 5000])
            kind = rng.choice(["command", "command", "chat", "focus", "disconnect", "connect"])
            events.append(TraceEvent(t, f"s{s}", user, kind))
            if rng.random() < 0.03:
                events.append(TraceEvent(t + 1, f"s{s}", user, "logout"))
    return make_trace(events, end=max(e.ts for e in events) + 1800)


def schedule_optimum(trace: Trace, prices: Prices) -> float:
    """An independent offline optimum: a dynamic program over every on/off schedule of each
    incarnation, second by second. Running costs the price per second; turning on again costs a
    wake; the container must run at creation and at every meaningful activity."""
    total = 0.0
    for inc in incarnations(trace):
        must = {round(t) for t in inc.activity}
        start, end = round(inc.start), round(inc.end)
        on, off = 0.0, math.inf  # created (and running) at start, for free
        for t in range(start + 1, end + 1):
            on, off = min(on + prices.per_second, off + prices.wake_penalty), min(on, off)
            if t in must:
                off = math.inf
        total += min(on, off)
    return total


def test_incarnations_follow_logouts_and_ignore_a_leading_disconnect() -> None:
    events = [
        TraceEvent(T0, "s1", "u", "disconnect"),
        TraceEvent(T0 + 10, "s1", "u", "connect"),
        TraceEvent(T0 + 20, "s1", "u", "command"),
        TraceEvent(T0 + 30, "s2", "u", "chat"),
        TraceEvent(T0 + 100, "s1", "u", "logout"),
        TraceEvent(T0 + 200, "s2", "u", "chat"),
    ]
    incs = incarnations(make_trace(events, end=T0 + 1000))
    assert [(i.session, i.start, i.end, i.by_logout) for i in incs] == [
        ("s1", T0 + 10, T0 + 100, True),
        ("s2", T0 + 30, T0 + 100, True),
        ("s2", T0 + 200, T0 + 1000, False),
    ]
    assert incs[0].gaps() == [10.0]  # creation -> command; the last gap is not one
    assert incs[2].gaps() == []


@pytest.mark.parametrize("seed", range(12))
def test_optimum_equals_the_best_of_every_schedule(seed: int) -> None:
    trace = random_trace(random.Random(seed))
    assert optimum(trace, PRICES).cost == pytest.approx(schedule_optimum(trace, PRICES), abs=1e-9)


@pytest.mark.parametrize("seed", range(12))
def test_optimum_and_frontier_equal_exhaustive_keep_or_sleep_choices(seed: int) -> None:
    rng = random.Random(100 + seed)
    gaps = [rng.choice([30.0, 100.0, 400.0, 600.0, 601.0, 900.0, 4000.0]) for _ in range(10)]
    best_cost = math.inf
    least_waste: dict[int, float] = {}
    for choice in itertools.product((False, True), repeat=len(gaps)):  # True: sleep at once
        running = sum(g for g, sleep in zip(gaps, choice, strict=True) if not sleep)
        waste = sum(
            max(0.0, g - ACTIVE_WINDOW) for g, sleep in zip(gaps, choice, strict=True) if not sleep
        )
        wakes = sum(choice)
        best_cost = min(best_cost, PRICES.cost(running, wakes))
        least_waste[wakes] = min(least_waste.get(wakes, math.inf), waste)
    from dormant.simulate.optimum import optimum_of_gaps

    assert optimum_of_gaps(gaps, PRICES).cost == pytest.approx(best_cost)
    points = frontier_of_gaps(gaps, PRICES, max_points=None)
    for p in points:
        assert p.waste_seconds == pytest.approx(least_waste[p.cold_wakes])
    # beyond the frontier's last point, more wakes save no waste
    assert least_waste[len(gaps)] == pytest.approx(points[-1].waste_seconds)
    # and the optimum lies on the cost frontier
    assert min(p.cost for p in points) == pytest.approx(best_cost)


@pytest.mark.parametrize("seed", range(4))
def test_every_simulated_policy_costs_at_least_the_optimum(seed: int) -> None:
    trace = random_trace(random.Random(200 + seed), sessions=3)
    best = optimum(trace, PRICES).cost
    for name in ("fixed-5m", "fixed-30m", "aggressive", "break-even", "adaptive", "randomized"):
        result = simulate(trace, resolve(name, PRICES), PRICES, WakeLatency.parse("fixed:2"))
        assert result.cost >= best - 1e-9, name


def test_a_fixed_timeout_costs_what_ski_rental_says() -> None:
    """No connections, no logouts: each gap g costs min(g, T) running, plus a wake if g > T;
    the last one runs min(T, what is left of the trace)."""
    gaps = [30, 200, 299, 300, 301, 1000, 7200, 45]
    t = T0
    events = [TraceEvent(t, "s", "u", "command")]
    for g in gaps:
        t += g
        events.append(TraceEvent(t, "s", "u", "command"))
    trace = make_trace(events, end=t + 250)
    result = simulate(trace, resolve("fixed-5m", PRICES), PRICES, WakeLatency.parse("fixed:2"))
    assert result.running_seconds == sum(min(g, 300) for g in gaps) + 250
    assert result.cold_wakes == sum(1 for g in gaps if g > 300) == 3
    assert result.wake_wait_p95_seconds == 2.0
    # waste: running more than two minutes after the last activity
    assert result.waste_seconds == sum(max(0, min(g, 300) - 120) for g in gaps) + 130
    opt = optimum(trace, PRICES)
    assert opt.cold_wakes == sum(1 for g in gaps if g > 600) == 2
    assert opt.running_seconds == sum(g for g in gaps if g <= 600)


def test_frontier_is_thinned_but_keeps_its_ends_and_the_optimum() -> None:
    rng = random.Random(5)
    gaps = [rng.expovariate(1 / 900) for _ in range(3000)]
    full = frontier_of_gaps(gaps, PRICES, max_points=None)
    thin = frontier_of_gaps(gaps, PRICES, max_points=50)
    assert len(thin) <= 53 and thin[0] == full[0] and thin[-1] == full[-1]
    best = min(full, key=lambda p: p.cost)
    assert best in thin
    assert [p.cold_wakes for p in thin] == sorted(p.cold_wakes for p in thin)
    assert all(a.waste_seconds >= b.waste_seconds for a, b in itertools.pairwise(thin))


def test_frontier_of_a_trace_matches_its_gaps() -> None:
    trace = random_trace(random.Random(9), sessions=3)
    assert frontier(trace, PRICES, max_points=None) == frontier_of_gaps(
        all_gaps(trace), PRICES, max_points=None
    )
