"""What the simulator books for small scripted traces: wakes, re-creations, logouts, polling."""

from __future__ import annotations

from dormant.simulate.policies import STANDARD, Prices, WakeLatency, resolve, resolve_all
from dormant.simulate.simulator import run_policies, simulate
from dormant.simulate.trace import TraceEvent, make_trace

T0 = 1_767_600_000.0  # 2026-01-05T08:00:00Z
PRICES = Prices()
FIXED = WakeLatency.parse("fixed:3")


def ev(t: float, event: str, session: str = "s", user: str = "u") -> TraceEvent:
    return TraceEvent(T0 + t, session, user, event)


def test_deleted_sessions_are_created_again_and_counted() -> None:
    # aggressive: sleep after 5 min, delete after 1 h asleep; the user is back after 3 h
    trace = make_trace([ev(0, "command"), ev(3 * 3600, "command")], end=T0 + 4 * 3600)
    r = simulate(trace, resolve("aggressive", PRICES), PRICES, FIXED)
    assert r.deletions == 1 and r.deletions_recreated == 1 and r.cold_wakes == 1
    assert r.running_seconds == 300 + 300  # five minutes after each activity
    assert r.wake_wait_p95_seconds == 3.0
    steps = [(s.to_state, s.code) for s in r.books["s"].steps if s.kind == "transition"]
    assert ("deleted", "asleep_too_long") in steps
    # balanced keeps it asleep instead: a wake, not a re-creation
    b = simulate(trace, resolve("balanced", PRICES), PRICES, FIXED)
    assert (b.deletions, b.deletions_recreated, b.cold_wakes) == (0, 0, 1)


def test_a_logout_deletes_and_the_next_visit_is_a_fresh_start() -> None:
    trace = make_trace(
        [ev(0, "command"), ev(60, "logout"), ev(7200, "focus"), ev(7260, "command")],
        end=T0 + 8000,
    )
    r = simulate(trace, resolve("balanced", PRICES), PRICES, FIXED)
    assert r.cold_wakes == 0 and r.deletions_recreated == 0 and r.deletions == 0
    assert r.running_seconds == 60 + (8000 - 7200)
    codes = [s.code for s in r.books["s"].steps if s.to_state == "deleting"]
    assert codes == ["logout"]


def test_option1_deletes_at_the_first_check_after_thirty_minutes() -> None:
    # activity at 08:01; 30 minutes later is 08:31; the culler runs at 08:00, 08:05, ...
    trace = make_trace([ev(60, "command"), ev(3 * 3600 + 120, "command")], end=T0 + 4 * 3600)
    r = simulate(trace, resolve("option1", PRICES), PRICES, FIXED)
    deleted = [s.at - T0 for s in r.books["s"].steps if s.to_state == "deleting"]
    assert deleted == [35 * 60, 3 * 3600 + 35 * 60]
    assert r.deletions_recreated == 1
    # precise deadlines would have slept it at 08:31 and 11:32
    exact = simulate(trace, resolve("fixed-30m", PRICES), PRICES, FIXED)
    assert r.running_seconds - exact.running_seconds == 4 * 60 + 3 * 60


def test_an_open_tab_is_not_a_user_but_a_closed_one_sleeps_after_the_grace() -> None:
    trace = make_trace(
        [ev(0, "connect"), ev(10, "command"), ev(4000, "command"), ev(4100, "disconnect")],
        end=T0 + 9000,
    )
    r = simulate(trace, resolve("conservative", PRICES), PRICES, FIXED)
    books = r.books["s"]
    # connected and silent: warned, then asleep 30 min after the command
    assert [s.code for s in books.steps if s.kind == "warning"] == ["sleep_warning"]
    sleeps = [(s.at - T0, s.code) for s in books.steps if s.to_state == "stopping"]
    assert sleeps == [(10 + 1800, "inactivity"), (4100 + 30, "disconnect_grace")]
    assert r.cold_wakes == 1 and books.wakes == [T0 + 4000]


def test_every_standard_policy_replays_and_the_table_is_ordered() -> None:
    trace = make_trace(
        [ev(0, "connect"), ev(5, "command"), ev(900, "chat"), ev(5000, "command")],
        end=T0 + 6000,
    )
    specs = resolve_all(["all"], PRICES)
    assert [s.name for s in specs] == list(STANDARD)
    results, opt = run_policies(trace, specs, PRICES, FIXED, jobs=2)
    assert [r.policy for r in results] == [*STANDARD, "optimal"]
    assert all(r.cost_ratio is not None and r.cost_ratio >= 1 - 1e-9 for r in results)
    assert opt.gaps == 3


def test_warm_up_carries_only_what_was_learned() -> None:
    """A user who works a minute and leaves for hours: learned the day before, the adaptive
    policy sleeps a minute after each visit at once; cold, it first waits for data."""
    day = 86400.0

    def visits(offset: float) -> list[TraceEvent]:
        out = []
        for h in range(0, 10, 2):  # a visit every two hours
            start = offset + h * 3600
            out += [ev(start, "command"), ev(start + 30, "command"), ev(start + 50, "chat")]
        return out

    monday = make_trace(visits(0), end=T0 + day)
    tuesday = make_trace(visits(day), end=T0 + 2 * day)
    adaptive = resolve("adaptive", PRICES)
    cold = simulate(tuesday, adaptive, PRICES, FIXED)
    warm = simulate(tuesday, adaptive, PRICES, FIXED, warmup=monday)
    assert warm.running_seconds < cold.running_seconds
    assert warm.running_seconds == 5 * (50 + 60)  # every visit, then one minute
    assert warm.cold_wakes == cold.cold_wakes == 4
    # a fixed policy has nothing to learn: the warm-up changes nothing
    fixed = resolve("balanced", PRICES)
    assert (
        simulate(tuesday, fixed, PRICES, FIXED, warmup=monday).row()
        == simulate(tuesday, fixed, PRICES, FIXED).row()
    )
