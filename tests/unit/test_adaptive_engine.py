"""The adaptive hook of the engine: decide() gets the learned sleep_after; models persist."""

from __future__ import annotations

from datetime import timedelta

from dormant.engine import Catalog, Engine, EngineSettings, PortAllocator, Template
from dormant.engine.retry import Backoff
from dormant.policy import PRESETS, ActivityKind, AdaptiveSettings, GapModel, State, adaptive_policy
from dormant.store.records import SessionRecord

from .conftest import Rig

SMART = adaptive_policy(None, AdaptiveSettings(half_life=1e9))
SHARED = adaptive_policy(None, AdaptiveSettings(scope="template", half_life=1e9))


def catalog() -> Catalog:
    return Catalog(
        templates={
            "default": Template(name="default", policy="balanced"),
            "smart": Template(name="smart", policy="smart"),
            "shared": Template(name="shared", policy="shared"),
        },
        policies={**PRESETS, "smart": SMART, "shared": SHARED},
    )


def engine_for(rig: Rig, instance: str = "adaptive-1") -> Engine:
    engine = Engine(
        rig.store,
        {"process": rig.runtime},
        catalog(),
        rig.clock,
        PortAllocator(range(30100, 30150), rig.store.used_ports),
        EngineSettings(instance_id=instance, backoff=Backoff(base=0.001, cap=0.005, attempts=4)),
    )
    rig.engine = engine
    return engine


async def create(rig: Rig, user: str, template: str = "smart") -> SessionRecord:
    record = await rig.engine.create_session(tenant="t1", user_id=user, template=template)
    await rig.settle()
    return record


async def state(rig: Rig, sid: str) -> State:
    record = await rig.store.get_session(sid)
    assert record is not None
    return record.state


async def act(rig: Rig, sid: str) -> None:
    rig.engine.record_activity(sid, ActivityKind.COMMAND)
    await rig.settle()


async def long_gaps(rig: Rig, sid: str, n: int, hours: float = 3) -> None:
    """Work a little, then vanish for hours (the session sleeps), then come back: n times."""
    for _ in range(n):
        for _ in range(3):
            await rig.advance(40)
            await act(rig, sid)
        await rig.advance(hours * 3600)
        assert await state(rig, sid) is State.SLEEPING
        await act(rig, sid)  # a cold wake, and a long gap learned
        assert await state(rig, sid) is State.RUNNING


async def test_without_data_an_adaptive_session_sleeps_at_its_fallback(rig: Rig) -> None:
    engine_for(rig)
    record = await create(rig, "alice")
    assert "adaptive" in record.policy
    await rig.advance(15 * 60 - 1)
    assert await state(rig, record.id) is State.RUNNING
    await rig.advance(1)
    assert await state(rig, record.id) is State.SLEEPING


async def test_a_user_with_long_gaps_gets_a_short_timeout(rig: Rig) -> None:
    engine = engine_for(rig)
    record = await create(rig, "alice")
    await long_gaps(rig, record.id, 2)
    assert engine.models["user:t1/alice"].observations == 2
    # now she is known: after a minute without activity her session sleeps
    await rig.advance(59)
    assert await state(rig, record.id) is State.RUNNING
    current = await engine.get(record.id)
    _, decision = engine.describe(current)
    assert decision.code == "inactivity" and "1m" in decision.reason
    await rig.advance(1)
    assert await state(rig, record.id) is State.SLEEPING
    events = await rig.store.list_events(record.id)
    last_sleep = [e for e in events if e.to_state == "stopping"][-1]
    assert "no meaningful activity for 1m" in last_sleep.reason


async def test_short_gaps_keep_a_user_warm(rig: Rig) -> None:
    engine = engine_for(rig)
    record = await create(rig, "bob")
    for _ in range(30):  # gaps of 6.5 minutes, again and again: cheaper warm (B = 10 min)
        await rig.advance(390)
        await act(rig, record.id)
    assert await state(rig, record.id) is State.RUNNING
    assert engine.models["user:t1/bob"].observations == 30
    _, decision = engine.describe(await engine.get(record.id))
    assert decision.at is not None
    # the shortest timeout that keeps such gaps warm (the bin edge above them)
    assert decision.at - rig.clock.now() == timedelta(minutes=7)


async def test_models_are_saved_and_a_restarted_engine_uses_them(rig: Rig) -> None:
    engine = engine_for(rig)
    record = await create(rig, "carol")
    await long_gaps(rig, record.id, 2)
    assert await engine.flush() >= 0
    stored = await rig.store.load_adaptive()
    assert set(stored) == {"user:t1/carol", "template:t1/smart"}
    assert GapModel.from_json(stored["user:t1/carol"]).observations == 2
    assert await rig.store.load_adaptive(["nobody"]) == {}

    restarted = engine_for(rig, "adaptive-2")
    assert restarted.models == {}
    await restarted.load()
    assert restarted.models["user:t1/carol"] == engine.models["user:t1/carol"]
    second = await create(rig, "carol")
    await rig.advance(60)
    assert await state(rig, second.id) is State.SLEEPING  # learned before the restart


async def test_template_scope_shares_what_one_user_taught(rig: Rig) -> None:
    engine = engine_for(rig)
    dave = await create(rig, "dave", template="shared")
    await long_gaps(rig, dave.id, 2)
    assert set(engine.models) == {"template:t1/shared"}
    erin = await create(rig, "erin", template="shared")
    await rig.advance(60)
    assert await state(rig, erin.id) is State.SLEEPING  # erin never had a gap


async def test_fixed_policies_learn_nothing(rig: Rig) -> None:
    engine = engine_for(rig)
    record = await create(rig, "frank", template="default")
    for _ in range(3):
        await rig.advance(3600)
        await act(rig, record.id)
    await engine.flush()
    assert engine.models == {} and engine._learners == {}
    assert await rig.store.load_adaptive() == {}


async def test_deleted_sessions_are_forgotten_but_the_model_stays(rig: Rig) -> None:
    engine = engine_for(rig)
    record = await create(rig, "gina")
    await long_gaps(rig, record.id, 1)
    assert record.id in engine._learners
    await engine.delete(record.id)
    await rig.settle()
    assert record.id not in engine._learners
    assert "user:t1/gina" in engine.models
