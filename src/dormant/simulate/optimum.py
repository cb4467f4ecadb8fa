"""The offline optimum of a trace and the Pareto frontier of waste against cold wakes.

A session lives from its first event (an *incarnation*; a ``logout`` ends all of a user's, and
the next event starts a new one, as in the simulator). Its container is needed at creation and
at every meaningful activity; between two such moments lies an idle **gap** of length ``g``.
Knowing the future, the cheapest thing to do in each gap is exactly one of:

- keep the container warm: ``price * g``, no cold wake;
- put it to sleep at once: one cold wake when the user comes back, ``wake_penalty``.

So the optimum costs ``sum(min(price * g, wake_penalty))`` (keep warm on ties). The last gap of
an incarnation (until ``logout`` or the end of the trace) is free: nobody comes back. Every
online policy pays at least this on every gap, hence the cost ratio ``>= 1``.

Waste is running time with nobody active: a gap kept warm wastes ``max(0, g - active_window)``.
Sleeping the ``k`` longest gaps gives the least waste any policy can have with ``k`` cold wakes,
which is the frontier.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from dormant.simulate.policies import Prices
from dormant.simulate.trace import DISCONNECT, LOGOUT, Trace

#: Seconds after a meaningful activity during which the user counts as active (the ``active``
#: level of DESIGN.md).
ACTIVE_WINDOW = 120.0


@dataclass
class Incarnation:
    session: str
    user: str
    start: float
    end: float = 0.0
    activity: list[float] = field(default_factory=list)
    by_logout: bool = False

    def anchors(self) -> list[float]:
        """Creation and every meaningful activity, in order, without repeats."""
        out = [self.start]
        for t in self.activity:
            if t > out[-1]:
                out.append(t)
        return out

    def gaps(self) -> list[float]:
        """The idle gaps that end with the user coming back (the last one does not)."""
        a = self.anchors()
        return [a[i + 1] - a[i] for i in range(len(a) - 1)]


def incarnations(trace: Trace) -> list[Incarnation]:
    """Every session's incarnations, created the way the simulator creates sessions: at the
    first event that is not a ``disconnect`` or ``logout``; a ``logout`` ends all of the user's
    incarnations."""
    live: dict[str, Incarnation] = {}
    by_user: dict[str, set[str]] = {}
    done: list[Incarnation] = []
    for e in trace.events:
        if e.event == LOGOUT:
            for sid in sorted(by_user.pop(e.user, set())):
                inc = live.pop(sid, None)
                if inc is not None:
                    inc.end = e.ts
                    inc.by_logout = True
                    done.append(inc)
            continue
        inc = live.get(e.session)
        if inc is None:
            if e.event == DISCONNECT:
                continue
            inc = live[e.session] = Incarnation(e.session, e.user, e.ts)
            by_user.setdefault(e.user, set()).add(e.session)
        if e.meaningful:
            inc.activity.append(e.ts)
    for inc in live.values():
        inc.end = trace.end
        done.append(inc)
    done.sort(key=lambda i: (i.start, i.session))
    return done


@dataclass(frozen=True, slots=True)
class Optimum:
    cost: float
    running_seconds: float
    waste_seconds: float
    cold_wakes: int
    gaps: int


def optimum(trace: Trace, prices: Prices, active_window: float = ACTIVE_WINDOW) -> Optimum:
    return optimum_of_gaps(all_gaps(trace), prices, active_window)


def all_gaps(trace: Trace) -> list[float]:
    return [g for inc in incarnations(trace) for g in inc.gaps()]


def optimum_of_gaps(
    gaps: Iterable[float], prices: Prices, active_window: float = ACTIVE_WINDOW
) -> Optimum:
    running = waste = 0.0
    wakes = n = 0
    for g in gaps:
        n += 1
        if prices.per_second * g <= prices.wake_penalty:
            running += g
            waste += max(0.0, g - active_window)
        else:
            wakes += 1
    return Optimum(prices.cost(running, wakes), running, waste, wakes, n)


@dataclass(frozen=True, slots=True)
class FrontierPoint:
    cold_wakes: int
    waste_seconds: float
    running_seconds: float
    cost: float


def frontier(
    trace: Trace,
    prices: Prices,
    active_window: float = ACTIVE_WINDOW,
    max_points: int | None = 400,
) -> list[FrontierPoint]:
    """The least waste (and, with it, the least running time and cost) reachable with exactly
    ``k`` cold wakes, for ``k`` from 0 up to the number of gaps longer than the active window;
    thinned to about ``max_points`` points (the ends and the optimum's ``k`` always kept)."""
    return frontier_of_gaps(all_gaps(trace), prices, active_window, max_points)


def frontier_of_gaps(
    gaps: Iterable[float],
    prices: Prices,
    active_window: float = ACTIVE_WINDOW,
    max_points: int | None = 400,
) -> list[FrontierPoint]:
    ordered = sorted(gaps, reverse=True)
    running = sum(ordered)
    waste = sum(max(0.0, g - active_window) for g in ordered)
    useful = sum(1 for g in ordered if g > active_window)
    points = [FrontierPoint(0, waste, running, prices.cost(running, 0))]
    for k, g in enumerate(ordered[:useful], start=1):
        running -= g
        waste -= g - active_window
        points.append(FrontierPoint(k, max(0.0, waste), max(0.0, running), prices.cost(running, k)))
    if max_points is None or len(points) <= max_points:
        return points
    keep_k = optimum_of_gaps(ordered, prices, active_window).cold_wakes
    step = len(points) / max_points
    chosen = {round(i * step) for i in range(max_points)} | {0, len(points) - 1}
    if keep_k < len(points):
        chosen.add(keep_k)
    return [points[i] for i in sorted(chosen) if i < len(points)]
