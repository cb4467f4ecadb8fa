"""Replay a trace through the real engine and policy, with a fake clock and an accounting runtime.

Nothing here decides anything: :class:`~dormant.engine.Engine` runs exactly as in ``dormant
serve`` (``decide``, deadlines, the operation log, the adaptive hook), on a
:class:`~dormant.testing.FakeClock` that jumps from one event or deadline to the next, a
:class:`~dormant.store.memory.MemoryStore` (or any Store), and an
:class:`~dormant.simulate.accounting.AccountingRuntime` that books running time and wakes.

How trace events drive the engine:

- A session is created (``create_session``) at its first event other than ``disconnect`` or
  ``logout``. After a ``logout`` the next event creates a fresh one.
- Activity kinds go to ``record_activity`` (a meaningful one wakes a sleeping session: a cold
  wake). ``connect`` and ``disconnect`` go to ``connect`` and ``disconnect``; ``logout`` to
  ``logout`` (which deletes every session of the user).
- If the policy deleted a session (asleep too long), its next meaningful activity creates it
  again: a cold wake and a *deletion followed by re-creation*; open connections are re-attached.
- Events at one instant are applied in trace order, then everything due at that instant runs;
  between events the clock jumps to each deadline (or, with ``check_every``, to the next check).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from dormant.engine import Catalog, Engine, EngineEvent, EngineSettings, Template
from dormant.engine.notify import Transitioned, Warned
from dormant.engine.retry import Backoff
from dormant.policy import Category, State
from dormant.simulate.accounting import AccountingRuntime, SimPorts
from dormant.simulate.optimum import ACTIVE_WINDOW, Optimum, incarnations, optimum
from dormant.simulate.policies import PolicySpec, Prices, WakeLatency
from dormant.simulate.trace import CONNECT, DISCONNECT, KINDS, LOGOUT, Trace
from dormant.store.base import Store
from dormant.store.memory import MemoryStore
from dormant.testing import FakeClock

TENANT = "sim"
TEMPLATE = "sim"
SESSION_LABEL = "sim.session"


@dataclass(frozen=True, slots=True)
class Step:
    """One thing the engine did to a session: a transition or a warning."""

    at: float
    session: str  # the trace's session id
    kind: str  # "transition" | "warning"
    from_state: str | None
    to_state: str | None
    code: str

    def key(self) -> tuple[Any, ...]:
        return (
            round(self.at, 3),
            self.session,
            self.kind,
            self.from_state,
            self.to_state,
            self.code,
        )


@dataclass
class SessionBooks:
    """Per trace session: when its containers ran, and what happened to it."""

    runs: list[tuple[float, float]] = field(default_factory=list)
    wakes: list[float] = field(default_factory=list)
    recreations: list[float] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)


@dataclass
class PolicyResult:
    policy: str
    description: str
    cost: float
    running_seconds: float
    waste_seconds: float
    cold_wakes: int
    wake_wait_p95_seconds: float
    deletions_recreated: int
    sleeps: int = 0
    deletions: int = 0
    cost_ratio: float | None = None
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0
    books: dict[str, SessionBooks] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "cost": round(self.cost, 6),
            "cost_ratio": None if self.cost_ratio is None else round(self.cost_ratio, 4),
            "waste_seconds": round(self.waste_seconds, 3),
            "running_seconds": round(self.running_seconds, 3),
            "cold_wakes": self.cold_wakes,
            "wake_wait_p95_seconds": round(self.wake_wait_p95_seconds, 3),
            "deletions_recreated": self.deletions_recreated,
            "sleeps": self.sleeps,
            "deletions": self.deletions,
            "description": self.description,
        }


def p95(values: list[float]) -> float:
    """Nearest-rank 95th percentile (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


@dataclass
class _Session:
    user: str
    engine_id: str | None = None
    alive: bool = False
    connections: int = 0
    fresh: bool = True  # the next event creates a new session (never created, or logged out)


class Replay:
    """One replay of one trace under one policy (use :func:`simulate`)."""

    def __init__(
        self,
        trace: Trace,
        spec: PolicySpec,
        store: Store | None = None,
        *,
        keep_books: bool = True,
    ) -> None:
        self.trace = trace
        self.spec = spec
        self.clock = FakeClock(_dt(trace.start))
        self.store = store or MemoryStore(keep_events=False)
        self.runtime = AccountingRuntime(self.clock)
        catalog = Catalog(
            templates={TEMPLATE: Template(name=TEMPLATE, runtime="sim", policy=spec.name)},
            policies={spec.name: spec.settings},
            default_template=TEMPLATE,
        )
        self.engine = Engine(
            self.store,
            {"sim": self.runtime},
            catalog,
            self.clock,
            SimPorts(),
            EngineSettings(instance_id="simulator", backoff=Backoff(0.001, 0.001, 1)),
        )
        self.engine.listeners.append(self._on_event)
        self.sessions: dict[str, _Session] = {}
        self.by_engine_id: dict[str, str] = {}
        self.by_user: dict[str, set[str]] = {}
        self.steps: list[Step] = []
        self.recreations: list[tuple[str, float]] = []
        self.keep_books = keep_books
        self._grid = spec.check_every
        #: Seconds of trace time between activity flushes: as ``dormant serve`` (at most 1 s).
        #: Decisions can depend on it: the engine stores the next decision of a session it
        #: writes from what the store has, and a randomized timeout drawn from stale activity
        #: may fall later than the fresh one.
        self.flush_every = 1.0
        # the culler's clock: checks at whole multiples of check_every since midnight (UTC)
        self._origin = math.floor(trace.start / 86400) * 86400.0

    # engine events ----------------------------------------------------------------------------

    def _on_event(self, event: EngineEvent) -> None:
        match event:
            case Warned(decision=decision):
                sid = self.by_engine_id.get(event.session_id)
                if sid is not None:
                    now = self.clock.now().timestamp()
                    self.steps.append(Step(now, sid, "warning", None, None, decision.code))
                return
            case Transitioned(from_state=None):
                return  # a create: the simulator books it itself
            case Transitioned(from_state=from_state, to_state=to_state, code=code):
                pass
            case _:
                return
        sid = self.by_engine_id.get(event.session_id)
        if sid is None:
            return
        now = self.clock.now().timestamp()
        self.steps.append(Step(now, sid, "transition", from_state, to_state, code))
        if to_state is State.DELETED:
            st = self.sessions[sid]
            if st.engine_id == event.session_id:
                st.alive = False
                st.engine_id = None

    # driving ----------------------------------------------------------------------------------

    async def _settle(self) -> None:
        """Run everything due now, and what that makes due now, to the end."""
        engine = self.engine
        for _ in range(1000):
            await engine.drain()
            due = await engine.tick()
            if not due and not engine._tasks:
                nxt = engine.deadlines.next_at()
                if nxt is not None and nxt <= self.clock.now():
                    # Rounding between float deadlines and datetimes: nudge the clock.
                    self.clock.advance(timedelta(microseconds=1))
                    continue
                return
        raise RuntimeError("the engine keeps finding work at one instant")

    def _next_check(self, at: datetime) -> datetime:
        if self._grid is None:
            return at
        offset = at.timestamp() - self._origin
        return _dt(self._origin + math.ceil(offset / self._grid - 1e-9) * self._grid)

    async def _run_until(self, limit: float, inclusive: bool) -> None:
        """Jump from deadline to deadline up to ``limit`` (events at ``limit`` not yet)."""
        end = _dt(limit)
        while True:
            nxt = self.engine.deadlines.next_at()
            if nxt is None:
                return
            at = self._next_check(nxt)
            if at > end or (at == end and not inclusive):
                return
            if at > self.clock.now():
                self.clock.advance(at - self.clock.now())
            await self._settle()

    async def _create(self, sid: str, st: _Session) -> None:
        record = await self.engine.create_session(
            tenant=TENANT, user_id=st.user, labels={SESSION_LABEL: sid}
        )
        st.engine_id = record.id
        st.alive = True
        st.fresh = False
        self.by_engine_id[record.id] = sid
        await self.engine.drain()
        for _ in range(st.connections):
            await self.engine.connect(record.id)

    async def _apply(self, sid: str, user: str, event: str) -> None:
        engine = self.engine
        st = self.sessions.get(sid)
        if st is None:
            st = self.sessions[sid] = _Session(user)
            self.by_user.setdefault(user, set()).add(sid)
        if event == LOGOUT:
            live = [self.sessions[s] for s in sorted(self.by_user.get(user, ()))]
            if any(s.alive for s in live):
                await engine.logout(user, TENANT)
                await engine.drain()
            for s in live:
                s.fresh = True
                s.connections = 0
            return
        kind = KINDS.get(event)
        if not st.alive:
            if event == CONNECT:
                st.connections += 1
            elif event == DISCONNECT:
                st.connections = max(0, st.connections - 1)
                return
            if st.fresh:
                await self._create(sid, st)
                if event == CONNECT:
                    return
            elif kind is not None and kind.category is Category.MEANINGFUL:
                now = self.clock.now().timestamp()
                self.recreations.append((sid, now))
                await self._create(sid, st)
            else:
                return
        assert st.engine_id is not None
        if event == CONNECT:
            st.connections += 1
            await engine.connect(st.engine_id)
        elif event == DISCONNECT:
            if st.connections > 0:
                st.connections -= 1
                await engine.disconnect(st.engine_id)
        elif kind is not None:
            engine.record_activity(st.engine_id, kind, self.clock.now(), source="trace")

    async def run(self) -> None:
        events = self.trace.events
        engine = self.engine
        await engine.load()  # models an earlier run left in the store (see warm-up)
        i, n = 0, len(events)
        next_flush = -math.inf
        while i < n:
            t = events[i].ts
            await self._run_until(t, inclusive=False)
            target = _dt(t)
            if target > self.clock.now():
                self.clock.advance(target - self.clock.now())
            while i < n and events[i].ts == t:
                e = events[i]
                await self._apply(e.session, e.user, e.event)
                i += 1
            await engine.drain()
            if self._grid is None:
                await self._settle()
            if t >= next_flush:
                await engine.flush()
                next_flush = t + self.flush_every
        await self._run_until(self.trace.end, inclusive=True)
        end = _dt(self.trace.end)
        if end > self.clock.now():
            self.clock.advance(end - self.clock.now())
        await engine.drain()
        await engine.flush()
        self.runtime.close_books(self.trace.end)


def _covered(runs: list[tuple[float, float]], activity: list[float], window: float) -> float:
    """Seconds of ``runs`` within ``window`` after some activity (both sorted)."""
    merged: list[list[float]] = []
    for a in activity:
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], a + window)
        else:
            merged.append([a, a + window])
    total = 0.0
    j = 0
    for start, end in runs:
        while j < len(merged) and merged[j][1] <= start:
            j += 1
        k = j
        while k < len(merged) and merged[k][0] < end:
            total += max(0.0, min(end, merged[k][1]) - max(start, merged[k][0]))
            k += 1
    return total


def account(
    replay: Replay,
    prices: Prices,
    latency: WakeLatency,
    seed: int = 0,
    active_window: float = ACTIVE_WINDOW,
) -> PolicyResult:
    """Turn a finished replay's ledgers into the numbers a policy is judged by."""
    books: dict[str, SessionBooks] = {}
    for ledger in replay.runtime.ledgers.values():
        sid = ledger.labels.get(SESSION_LABEL, ledger.name)
        b = books.setdefault(sid, SessionBooks())
        b.runs.extend(ledger.runs)
        b.wakes.extend(ledger.starts[1:])
    for sid, at in replay.recreations:
        books.setdefault(sid, SessionBooks()).recreations.append(at)
    for step in replay.steps:
        books.setdefault(step.session, SessionBooks()).steps.append(step)
    activity: dict[str, list[float]] = {}
    for inc in incarnations(replay.trace):
        activity.setdefault(inc.session, []).extend(inc.activity)
    running = waste = 0.0
    cold = [t for b in books.values() for t in (*b.wakes, *b.recreations)]
    for sid, b in books.items():
        b.runs.sort()
        length = sum(e - s for s, e in b.runs)
        running += length
        waste += length - _covered(b.runs, sorted(activity.get(sid, [])), active_window)
    rng = random.Random(seed)
    waits = [latency.sample(rng) for _ in cold]
    sleeps = sum(1 for s in replay.steps if s.to_state == "stopping")
    deletions = sum(1 for s in replay.steps if s.to_state == "deleting" and s.code != "logout")
    return PolicyResult(
        policy=replay.spec.name,
        description=replay.spec.description,
        cost=prices.cost(running, len(cold)),
        running_seconds=running,
        waste_seconds=waste,
        cold_wakes=len(cold),
        wake_wait_p95_seconds=p95(waits),
        deletions_recreated=len(replay.recreations),
        sleeps=sleeps,
        deletions=deletions,
        books=books if replay.keep_books else {},
    )


def simulate(
    trace: Trace,
    spec: PolicySpec,
    prices: Prices | None = None,
    latency: WakeLatency | None = None,
    *,
    seed: int = 0,
    store: Store | None = None,
    keep_books: bool = True,
    warmup: Trace | None = None,
) -> PolicyResult:
    """Replay ``trace`` under ``spec`` and account for it (runs its own event loop)."""
    return asyncio.run(
        simulate_async(
            trace,
            spec,
            prices,
            latency,
            seed=seed,
            store=store,
            keep_books=keep_books,
            warmup=warmup,
        )
    )


async def simulate_async(
    trace: Trace,
    spec: PolicySpec,
    prices: Prices | None = None,
    latency: WakeLatency | None = None,
    *,
    seed: int = 0,
    store: Store | None = None,
    keep_books: bool = True,
    warmup: Trace | None = None,
) -> PolicyResult:
    """Replay and account. With ``warmup``, a learning policy first replays that trace (say,
    the day before) and keeps only what it learned, through the store, as ``dormant serve``
    keeps it across restarts; the warm-up itself is not accounted."""
    prices = prices or Prices()
    latency = latency or WakeLatency()
    started = time.perf_counter()
    cpu = time.process_time()
    quiet = logging.getLogger("dormant")
    level = quiet.level
    quiet.setLevel(max(level, logging.WARNING))  # a replay makes millions of INFO lines
    try:
        store = store or MemoryStore(keep_events=False)
        if warmup is not None and warmup.events and "adaptive" in spec.settings.to_dict():
            learning = Replay(warmup, spec, keep_books=False)
            await learning.run()
            learned = await learning.store.load_adaptive()
            await store.save_adaptive(learned, learning.clock.now())
        replay = Replay(trace, spec, store, keep_books=keep_books)
        await replay.run()
    finally:
        quiet.setLevel(level)
    result = account(replay, prices, latency, seed)
    result.wall_seconds = time.perf_counter() - started
    result.cpu_seconds = time.process_time() - cpu
    return result


def optimal_result(
    trace: Trace,
    prices: Prices,
    latency: WakeLatency,
    seed: int = 0,
    active_window: float = ACTIVE_WINDOW,
) -> tuple[PolicyResult, Optimum]:
    opt = optimum(trace, prices, active_window)
    rng = random.Random(seed)
    waits = [latency.sample(rng) for _ in range(opt.cold_wakes)]
    result = PolicyResult(
        policy="optimal",
        description="offline optimum: per gap, keep warm or sleep at once, knowing the future",
        cost=opt.cost,
        running_seconds=opt.running_seconds,
        waste_seconds=opt.waste_seconds,
        cold_wakes=opt.cold_wakes,
        wake_wait_p95_seconds=p95(waits),
        deletions_recreated=0,
        cost_ratio=1.0,
    )
    return result, opt


def with_ratios(results: list[PolicyResult], opt_cost: float) -> list[PolicyResult]:
    for r in results:
        if r.policy == "optimal":
            r.cost_ratio = 1.0
        elif opt_cost > 0:
            r.cost_ratio = r.cost / opt_cost
        else:
            r.cost_ratio = 1.0 if r.cost == 0 else math.inf
    return results


ProgressFn = Callable[[PolicyResult], None]


def _one(
    args: tuple[Trace, PolicySpec, Prices, WakeLatency, int, bool, Trace | None],
) -> PolicyResult:
    trace, spec, prices, latency, seed, keep_books, warmup = args
    return simulate(trace, spec, prices, latency, seed=seed, keep_books=keep_books, warmup=warmup)


def run_policies(
    trace: Trace,
    specs: list[PolicySpec],
    prices: Prices | None = None,
    latency: WakeLatency | None = None,
    *,
    seed: int = 0,
    jobs: int = 1,
    keep_books: bool = True,
    progress: ProgressFn | None = None,
    warmup: Trace | None = None,
) -> tuple[list[PolicyResult], Optimum]:
    """Every policy on the same trace (in ``jobs`` processes), the optimum last, with ratios;
    learning policies first learn from ``warmup`` if given."""
    prices = prices or Prices()
    latency = latency or WakeLatency()
    work = [(trace, s, prices, latency, seed, keep_books, warmup) for s in specs]
    results: list[PolicyResult] = []
    if jobs > 1 and len(work) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
            for r in pool.map(_one, work):
                results.append(r)
                if progress:
                    progress(r)
    else:
        for w in work:
            r = _one(w)
            results.append(r)
            if progress:
                progress(r)
    best, opt = optimal_result(trace, prices, latency, seed)
    return with_ratios([*results, best], opt.cost), opt
