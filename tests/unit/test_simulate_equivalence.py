"""The simulator decides nothing itself: the same trace through the simulator and through a
FakeClock-driven engine (SQLite store, FakeRuntime, activity flushed every second, as in the
engine's own tests) gives the same decisions, at the same times, for the same sessions."""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from dormant.engine import (
    Catalog,
    Engine,
    EngineEvent,
    EngineSettings,
    PortAllocator,
    Template,
    runner,
    scheduler,
    writer,
)
from dormant.engine.notify import Transitioned, Warned
from dormant.engine.retry import Backoff
from dormant.policy import Action, Category, Decision, State, parse_kind
from dormant.simulate.generate import generate
from dormant.simulate.memstore import MemoryStore
from dormant.simulate.policies import PolicySpec, Prices, WakeLatency, resolve
from dormant.simulate.simulator import TENANT, Replay, Step, simulate, simulate_async
from dormant.simulate.trace import Trace, TraceEvent, make_trace
from dormant.store import SqlStore
from dormant.store.migrate import upgrade_async
from dormant.testing import FakeClock, FakeRuntime

PRICES = Prices()
LATENCY = WakeLatency.parse("fixed:2")


def trace_under_test() -> Trace:
    """Four generated users (a steady worker, bursty and idle ones) plus a scripted user who
    logs out and comes back, so that every rule of the driver is exercised."""
    base = generate("mixed", 4, seed=11)
    t0 = base.start
    scripted = [
        TraceEvent(t0 + 10, "x/ws", "x", "connect"),
        TraceEvent(t0 + 20, "x/ws", "x", "command"),
        TraceEvent(t0 + 3000, "x/ws", "x", "focus"),  # presence on a sleeping session
        TraceEvent(t0 + 3100, "x/ws", "x", "build"),  # wakes it
        TraceEvent(t0 + 3130, "x/ws", "x", "disconnect"),  # grace, then sleep
        TraceEvent(t0 + 9000, "x/ws", "x", "connect"),  # after a deletion (aggressive)
        TraceEvent(t0 + 9010, "x/ws", "x", "chat"),
        TraceEvent(t0 + 9100, "x/ws", "x", "logout"),
        TraceEvent(t0 + 9200, "x/ws", "x", "command"),  # a fresh session
        TraceEvent(t0 + 9201, "x/ws", "x", "ping"),
    ]
    return make_trace([*base.events, *scripted], end=base.end, name="equivalence")


async def engine_steps(trace: Trace, spec: PolicySpec, tmp: Path) -> list[Step]:
    """Drive a FakeClock engine on SQLite through the trace, event by event, deadline by
    deadline, the way dormant serve would see it."""
    url = f"sqlite+aiosqlite:///{tmp / f'{spec.name}.db'}"
    await upgrade_async(url)
    store = SqlStore(url)
    clock = FakeClock(datetime.fromtimestamp(trace.start, UTC))
    catalog = Catalog(
        templates={"app": Template(name="app", runtime="process", policy=spec.name)},
        policies={spec.name: spec.settings},
        default_template="app",
    )
    engine = Engine(
        store,
        {"process": FakeRuntime()},
        catalog,
        clock,
        PortAllocator(range(30400, 30500), store.used_ports),
        EngineSettings(instance_id="eq", backoff=Backoff(0.001, 0.002, 2)),
    )
    steps: list[Step] = []
    owner: dict[str, str] = {}  # engine session -> trace session

    def listen(e: EngineEvent) -> None:
        if e.session_id not in owner:
            return
        at = clock.now().timestamp()
        sid = owner[e.session_id]
        match e:
            case Warned(decision=decision):
                steps.append(Step(at, sid, "warning", None, None, decision.code))
            case Transitioned(from_state=None):
                pass  # the create itself
            case Transitioned(from_state=old, to_state=new, code=code):
                steps.append(Step(at, sid, "transition", old, new, code))
                if new is State.DELETED:
                    alive.pop(sid, None)
            case _:
                pass

    engine.listeners.append(listen)
    alive: dict[str, str] = {}  # trace session -> live engine session
    fresh: set[str] = set()  # trace sessions whose next event starts anew
    seen: set[str] = set()
    links: dict[str, int] = defaultdict(int)  # open connections per trace session
    users: dict[str, set[str]] = defaultdict(set)

    async def settle() -> None:
        for _ in range(100):
            await engine.drain()
            if not await engine.tick() and not engine._tasks:
                nxt = engine.deadlines.next_at()
                if nxt is not None and nxt <= clock.now():
                    clock.advance(timedelta(microseconds=1))
                    continue
                return

    async def move_to(when: datetime) -> None:
        while (nxt := engine.deadlines.next_at()) is not None and nxt < when:
            if nxt > clock.now():
                clock.advance(nxt - clock.now())
            await settle()
        if when > clock.now():
            clock.advance(when - clock.now())

    async def start(sid: str, user: str) -> None:
        record = await engine.create_session(tenant=TENANT, user_id=user)
        owner[record.id] = sid
        alive[sid] = record.id
        fresh.discard(sid)
        await engine.drain()
        for _ in range(links[sid]):
            await engine.connect(record.id)

    try:
        last_flush = -math.inf
        events = list(trace.events)
        for i, e in enumerate(events):
            await move_to(datetime.fromtimestamp(e.ts, UTC))
            users[e.user].add(e.session)
            if e.event == "logout":
                if any(s in alive for s in users[e.user]):
                    await engine.logout(e.user, TENANT)
                    await engine.drain()
                for s in users[e.user]:
                    fresh.add(s)
                    links[s] = 0
            elif e.session not in alive:
                first = e.session not in seen or e.session in fresh
                if e.event == "connect":
                    links[e.session] += 1
                if e.event == "disconnect":
                    links[e.session] = max(0, links[e.session] - 1)
                elif first:
                    await start(e.session, e.user)
                    if e.event != "connect":
                        await apply(engine, alive[e.session], e, links)
                elif e.event not in ("connect",) and (
                    parse_kind(e.event).category is Category.MEANINGFUL
                ):
                    await start(e.session, e.user)
                    await apply(engine, alive[e.session], e, links)
            else:
                await apply(engine, alive[e.session], e, links)
            seen.add(e.session)
            if i + 1 == len(events) or events[i + 1].ts != e.ts:
                await engine.drain()
                await settle()
                if e.ts - last_flush >= 1:  # the flush loop: once a second at most
                    await engine.flush()
                    last_flush = e.ts
        await move_to(datetime.fromtimestamp(trace.end, UTC))
        await settle()
        await engine.flush()
    finally:
        await engine.drain()
        await store.close()
    return steps


async def apply(engine: Engine, esid: str, e: TraceEvent, links: dict[str, int]) -> None:
    if e.event == "connect":
        links[e.session] += 1
        await engine.connect(esid)
    elif e.event == "disconnect":
        if links[e.session] > 0:
            links[e.session] -= 1
            await engine.disconnect(esid)
    else:
        engine.record_activity(esid, parse_kind(e.event), engine.clock.now(), source="trace")


def by_session(steps: list[Step]) -> dict[str, list[tuple[Any, ...]]]:
    out: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    for s in steps:
        out[s.session].append(s.key())
    return dict(out)


@pytest.mark.parametrize("policy", ["balanced", "aggressive", "adaptive", "randomized"])
async def test_simulator_and_engine_decide_the_same(policy: str, tmp_path: Path) -> None:
    trace = trace_under_test()
    spec = resolve(policy, PRICES)
    replay = Replay(trace, spec)
    await replay.run()
    simulated = by_session(replay.steps)
    served = by_session(await engine_steps(trace, spec, tmp_path))
    assert simulated == served
    codes = {k[-1] for steps in simulated.values() for k in steps}
    states = {k[4] for steps in simulated.values() for k in steps}
    # the comparison covered sleeps, wakes and, for the connected users, warnings
    assert {"sleeping", "starting", "running"} <= states
    assert "sleep_warning" in codes and "activity" in codes
    assert any(k[-1] == "logout" for k in simulated["x/ws"])
    if policy == "aggressive":
        assert "asleep_too_long" in codes  # deleted, then re-created by the next activity
        assert replay.recreations


async def test_the_memory_store_replays_exactly_like_sqlite(tmp_path: Path) -> None:
    trace = trace_under_test()
    for policy in ("adaptive",):  # aggressive: test_simulate_cli (--store sqlite)
        spec = resolve(policy, PRICES)
        url = f"sqlite+aiosqlite:///{tmp_path / f'{policy}.db'}"
        await upgrade_async(url)
        store = SqlStore(url)
        try:
            on_sql = await simulate_async(trace, spec, PRICES, LATENCY, store=store)
        finally:
            await store.close()
        in_memory = await simulate_async(trace, spec, PRICES, LATENCY, store=MemoryStore())
        assert on_sql.row() == in_memory.row()
        assert by_session([s for b in on_sql.books.values() for s in b.steps]) == by_session(
            [s for b in in_memory.books.values() for s in b.steps]
        )


def test_the_simulator_asks_the_engines_decide(monkeypatch: pytest.MonkeyPatch) -> None:
    trace = generate("steady", 2, seed=3)
    spec = resolve("balanced", PRICES)
    normal = simulate(trace, spec, PRICES, LATENCY)
    assert normal.sleeps > 0
    calls = 0
    real = writer.decide
    deciders = (writer, runner, scheduler)  # every stage that asks the policy

    def counting(*args: Any, **kw: Any) -> Decision:
        nonlocal calls
        calls += 1
        return real(*args, **kw)

    for stage in deciders:
        monkeypatch.setattr(stage, "decide", counting)
    again = simulate(trace, spec, PRICES, LATENCY)
    assert calls > 100 and again.row() == normal.row()

    def never(*args: Any, **kw: Any) -> Decision:
        return Decision(Action.NONE, None, "never", "never")

    for stage in deciders:
        monkeypatch.setattr(stage, "decide", never)
    sabotaged = simulate(trace, spec, PRICES, LATENCY)
    assert sabotaged.sleeps == 0 and sabotaged.cold_wakes == 0
    assert sabotaged.running_seconds > normal.running_seconds
