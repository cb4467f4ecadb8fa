"""The adaptive policy's pure parts: histogram, expected cost, timeout choice, bounds, settings."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dormant.errors import InvalidInput
from dormant.policy import (
    PRESETS,
    AdaptivePolicy,
    AdaptiveSettings,
    GapModel,
    PolicySettings,
    SessionView,
    State,
    adaptive_policy,
    build_adaptive,
    decide,
    effective_policy,
)
from dormant.policy.adaptive import (
    EDGES,
    MIN_GAP,
    choose_timeout,
    expected_costs,
    learn,
    learner_of,
    model_keys,
    observe,
    randomized_timeout,
)

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
NO_DECAY = AdaptiveSettings(half_life=1e12)
gaps_st = st.lists(st.floats(min_value=1, max_value=3 * 86400), min_size=1, max_size=40)


def model_of(gaps: list[float], s: AdaptiveSettings = NO_DECAY) -> GapModel:
    model = GapModel()
    for g in gaps:
        model = learn(model, g, s)
    return model


def cost_of(timeout: float, gap: float, b: float) -> float:
    """Ski rental, in container-seconds: warm through the gap, or run ``timeout`` and wake."""
    return gap if gap <= timeout else timeout + b


def test_short_gaps_are_not_recorded_and_edges_belong_to_the_lower_bin() -> None:
    m = learn(GapModel(), MIN_GAP, NO_DECAY)
    assert m.observations == 0 and m.weight == 0
    m = learn(m, 120.0, NO_DECAY)  # exactly an edge: bin (90, 120]
    assert m.weights[EDGES.index(90.0)] == 1.0
    m = learn(m, 120.5, NO_DECAY)
    assert m.weights[EDGES.index(120.0)] == 1.0
    m = learn(m, 10 * 86400, NO_DECAY)
    assert m.weights[-1] == 1.0 and m.sums[-1] == 10 * 86400
    assert m.observations == 3


def test_old_observations_decay_with_the_half_life() -> None:
    s = AdaptiveSettings(half_life=2)
    m = model_of([600.0, 600.0, 7200.0], s)
    # the two 600 s gaps were seen 1 and 2 observations ago: weights 2^-1/2 + 2^-1
    assert m.weights[EDGES.index(420.0)] == pytest.approx(2**-0.5 + 2**-1.0)
    assert m.weights[EDGES.index(5400.0)] == pytest.approx(1.0)


@settings(max_examples=200, deadline=None)
@given(gaps_st)
def test_expected_cost_at_every_edge_is_exact(gaps: list[float]) -> None:
    b = 600.0
    costs = expected_costs(model_of(gaps), b)
    recorded = [g for g in gaps if g > MIN_GAP]
    for k, edge in enumerate(EDGES):
        assert costs[k] == pytest.approx(sum(cost_of(edge, g, b) for g in recorded), rel=1e-9)


@settings(max_examples=200, deadline=None)
@given(gaps_st)
def test_the_chosen_timeout_is_the_best_edge_within_the_bounds(gaps: list[float]) -> None:
    s = AdaptiveSettings(half_life=1e12, trust=0.99)  # bounds [6 s, 16.7 h]
    chosen = choose_timeout(model_of(gaps, s), None, s, fallback=900)
    recorded = [g for g in gaps if g > MIN_GAP]
    if not recorded:
        assert chosen == 900
        return
    lo, hi = s.bounds
    candidates = [min(max(e, lo), hi) for e in EDGES]
    best = min(sum(cost_of(c, g, s.break_even) for g in recorded) for c in candidates)
    assert sum(cost_of(chosen, g, s.break_even) for g in recorded) == pytest.approx(best)


def test_bimodal_user_sleeps_just_after_the_short_gaps() -> None:
    gaps = [150.0, 170.0, 130.0] * 10 + [3 * 3600.0, 5 * 3600.0] * 5
    assert choose_timeout(model_of(gaps), None, NO_DECAY, fallback=900) == 180.0


def test_user_with_gaps_just_over_break_even_sleeps_at_once() -> None:
    gaps = [1500.0] * 20  # 25 min: cheaper asleep (1 min + 10 min) than warm (25 min)
    assert choose_timeout(model_of(gaps), None, NO_DECAY, fallback=900) == 60.0


def test_user_whose_gaps_are_cheaper_warm_keeps_warm() -> None:
    gaps = [400.0, 500.0, 550.0] * 10  # all shorter than break-even (600 s)
    assert choose_timeout(model_of(gaps), None, NO_DECAY, fallback=60) == 600.0


def test_only_short_gaps_seen_means_the_shortest_timeout_that_covers_them() -> None:
    """Every timeout above the longest gap seen costs the same under the model; rounding must
    not tip the choice to the longest one (it did: 100 minutes instead of 3)."""
    s = AdaptiveSettings(half_life=100)
    cases = {
        (70.0,): 90.0,
        (70.0, 65.0, 88.0): 90.0,
        (61.0, 130.0, 95.0, 170.0): 180.0,
        (170.0,) * 7 + (75.0,) * 13: 180.0,
        (500.0, 61.0): 600.0,
    }
    for gaps, expected in cases.items():
        own = model_of(list(gaps), s)
        assert choose_timeout(own, None, s, fallback=900) == expected, gaps
        assert choose_timeout(None, own, s, fallback=900) == expected, gaps
        assert choose_timeout(own, own, s, fallback=900) == expected, gaps


def test_no_data_uses_the_fallback_within_the_bounds() -> None:
    s = AdaptiveSettings(trust=0.5)  # [300, 1200]
    assert choose_timeout(None, None, s, fallback=900) == 900
    assert choose_timeout(None, None, s, fallback=60) == 300
    assert choose_timeout(GapModel(), GapModel(), s, fallback=86400) == 1200


def test_zero_trust_is_the_break_even_rule() -> None:
    s = AdaptiveSettings(trust=0.0, half_life=1e12)
    assert s.bounds == (600.0, 600.0)
    assert choose_timeout(model_of([120.0] * 5), None, s, 900) == 600.0
    assert choose_timeout(model_of([86400.0] * 5), None, s, 900) == 600.0


def test_a_new_user_follows_the_shared_model_until_their_own_outweighs_it() -> None:
    shared = model_of([150.0, 140.0, 4 * 3600.0] * 30)  # population: sleep after 3 min
    s = AdaptiveSettings(half_life=1e12, prior_weight=5)
    assert choose_timeout(None, shared, s, fallback=900) == 180.0
    own = model_of([1000.0] * 3)  # this user: gaps of 17 min, cheaper asleep at once
    assert choose_timeout(own, shared, s, fallback=900) == 180.0  # 3 < 5 pseudo-observations
    own = model_of([1000.0] * 40)
    assert choose_timeout(own, shared, s, fallback=900) == 60.0


@settings(max_examples=300, deadline=None)
@given(
    gaps_st,
    st.floats(min_value=0.0, max_value=0.95),
    st.floats(min_value=1.0, max_value=3 * 86400),
    st.floats(min_value=30.0, max_value=7200.0),
)
def test_trust_bounds_the_worst_case_on_any_gap(
    history: list[float], trust: float, gap: float, b: float
) -> None:
    """Whatever the model learned, one gap never costs more than 1 + 1/(1 - trust) times the
    offline optimum (the learning-augmented ski-rental guarantee)."""
    s = AdaptiveSettings(trust=trust, break_even=b)
    timeout = choose_timeout(model_of(history, s), None, s, fallback=900)
    lo, hi = s.bounds
    assert lo - 1e-6 <= timeout <= hi + 1e-6
    offline = min(gap, b)
    assert cost_of(timeout, gap, b) <= s.competitive_bound() * offline * (1 + 1e-9)


def test_randomized_timeout_is_deterministic_in_range_and_has_the_right_mean() -> None:
    b = 600.0
    draws = [randomized_timeout(b, f"user-{i}") for i in range(4000)]
    assert draws[:5] == [randomized_timeout(b, f"user-{i}") for i in range(5)]
    assert all(1.0 <= t <= b for t in draws)
    # density e^(t/B) / (B (e - 1)) on [0, B] has mean B / (e - 1)
    assert sum(draws) / len(draws) == pytest.approx(b / (math.e - 1), rel=0.03)
    # and its CDF at B/2 is (e^0.5 - 1) / (e - 1)
    below = sum(1 for t in draws if t <= b / 2) / len(draws)
    assert below == pytest.approx((math.exp(0.5) - 1) / (math.e - 1), abs=0.03)


def test_gap_model_json_round_trip_and_foreign_edges_start_afresh() -> None:
    m = model_of([100.0, 700.0, 9000.0])
    assert GapModel.from_json(m.to_json()) == m
    doc = m.to_json()
    doc["edges"] = [1, 2, 3]
    assert GapModel.from_json(doc) == GapModel()


def test_adaptive_policy_nests_its_settings_and_takes_flat_overrides() -> None:
    p = adaptive_policy()
    assert isinstance(p, AdaptivePolicy) and isinstance(p, PolicySettings)
    d = p.to_dict()
    assert d["sleep_after"] == PRESETS["balanced"].sleep_after
    assert d["adaptive"] == {
        "scope": "user",
        "mode": "learned",
        "break_even": 600.0,
        "trust": 0.9,
        "half_life": 300.0,
        "prior_weight": 20.0,
    }
    q = p.with_overrides({"trust": "0.5", "break_even": "5m", "sleep_after": "20m"})
    assert isinstance(q, AdaptivePolicy)
    assert (q.adaptive.trust, q.adaptive.break_even, q.sleep_after) == (0.5, 300.0, 1200.0)
    r = build_adaptive({"scope": "template", "delete_after": "1h"})
    assert r.adaptive.scope == "template" and r.delete_after == 3600
    assert p.with_overrides({"adaptive": {"mode": "randomized"}}).adaptive.mode == "randomized"


@pytest.mark.parametrize(
    "overrides",
    [
        {"trust": 1.0},
        {"trust": -0.1},
        {"trust": "lots"},
        {"scope": "planet"},
        {"mode": "psychic"},
        {"break_even": 0},
        {"half_life": 0.5},
        {"prior_weight": -1},
        {"sleep_after": 0},
        {"wisdom": 3},
        {"adaptive": 7},
    ],
)
def test_invalid_adaptive_settings_are_refused(overrides: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput):
        build_adaptive(overrides)


def view(**kw: Any) -> SessionView:
    return SessionView(**{"state": State.RUNNING, "created_at": T0, "state_since": T0, **kw})


def test_effective_policy_of_a_fixed_policy_is_the_policy_itself() -> None:
    stored = PRESETS["aggressive"].to_dict()
    got = effective_policy(stored, view(), lambda k: None, tenant="t", user_id="u", template="x")
    assert got == PRESETS["aggressive"]


def test_effective_policy_learns_and_decide_uses_it() -> None:
    stored = adaptive_policy().to_dict()
    keys = model_keys(AdaptiveSettings(), "t", "u", "x")
    assert keys == ("user:t/u", "template:t/x")
    models = {"user:t/u": model_of([150.0, 4 * 3600.0] * 20)}
    got = effective_policy(stored, view(), models.get, tenant="t", user_id="u", template="x")
    assert type(got) is PolicySettings
    assert got.sleep_after == 180.0 and got.warn_before < got.sleep_after
    assert got.delete_after == PRESETS["balanced"].delete_after
    d = decide(view(last_activity_at=T0), got, T0)
    assert d.at == T0 + timedelta(seconds=180) and d.code == "inactivity"
    # nobody else is affected by this user's model
    other = effective_policy(stored, view(), models.get, tenant="t", user_id="v", template="x")
    assert other.sleep_after == 900.0


def test_randomized_policy_draws_per_idle_period() -> None:
    stored = adaptive_policy(None, AdaptiveSettings(mode="randomized")).to_dict()
    a = effective_policy(
        stored, view(last_activity_at=T0), dict().get, tenant="t", user_id="u", template="x"
    )
    again = effective_policy(
        stored, view(last_activity_at=T0), dict().get, tenant="t", user_id="u", template="x"
    )
    assert a == again and 1.0 <= a.sleep_after <= 600.0
    later = [
        effective_policy(
            stored,
            view(last_activity_at=T0 + timedelta(minutes=i)),
            dict().get,
            tenant="t",
            user_id="u",
            template="x",
        ).sleep_after
        for i in range(1, 20)
    ]
    assert len(set(later)) > 10  # a new draw for every idle period


def test_observe_learns_long_gaps_and_says_when_the_timeout_shrinks() -> None:
    stored = adaptive_policy(None, AdaptiveSettings(scope="template", half_life=1e12)).to_dict()
    learner = learner_of(stored, "t", "u", "x", T0)
    assert learner is not None and learner.keys == ("template:t/x", None)
    assert learner_of(PRESETS["balanced"].to_dict(), "t", "u", "x", T0) is None
    models: dict[str, GapModel] = {}
    # a short gap teaches nothing
    learner, changed, sooner = observe(learner, T0 + timedelta(seconds=30), models)
    assert changed == {} and not sooner and learner.last == T0 + timedelta(seconds=30)
    # activity out of order teaches nothing either
    same, changed, sooner = observe(learner, T0, models)
    assert same == learner and changed == {} and not sooner
    # the first long gap: the timeout drops from the fallback (15 min) to a minute
    at = learner.last + timedelta(hours=3)
    learner, changed, sooner = observe(learner, at, models)
    assert set(changed) == {"template:t/x"} and sooner and learner.timeout == 60.0
    models.update(changed)
    # another long gap: same timeout, nothing to re-decide
    learner, changed, sooner = observe(learner, at + timedelta(hours=3), models)
    assert changed and not sooner
