"""The engine driven by a FakeClock and a FakeRuntime: time travels, nothing sleeps."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from dormant.errors import CapacityExhausted, InvalidInput, NotFound, RuntimeFailure
from dormant.policy import ActivityKind, State
from dormant.store.schema import operations

from .conftest import Rig, make_engine


async def create(rig: Rig, user: str = "alice", **kw: object) -> str:
    record = await rig.engine.create_session(tenant="t1", user_id=user, **kw)  # type: ignore[arg-type]
    await rig.settle()
    return record.id


async def state(rig: Rig, sid: str) -> State:
    record = await rig.store.get_session(sid)
    assert record is not None
    return record.state


async def test_create_runs_the_container_after_writing_intent(rig: Rig) -> None:
    sid = await create(rig)
    assert await state(rig, sid) is State.RUNNING
    name = f"dormant-{sid}"
    assert rig.runtime.running() == {name}
    assert [c[0] for c in rig.runtime.calls] == ["create", "start"]
    labels = rig.runtime.containers[name].spec.labels
    assert labels["dormant.managed"] == "true"
    assert labels["dormant.session"] == sid
    assert labels["dormant.user"] == "alice"
    assert labels["dormant.tenant"] == "t1"
    assert labels["dormant.instance"] == "test-1"
    ops = await rig.store.pending_operations()
    assert ops == []  # the create intent was marked done


async def test_balanced_session_left_alone_sleeps_at_15m_and_is_deleted_24h_later(rig: Rig) -> None:
    sid = await create(rig)
    await rig.advance(15 * 60 - 1)
    assert await state(rig, sid) is State.RUNNING
    await rig.advance(1)
    assert await state(rig, sid) is State.SLEEPING
    assert rig.runtime.running() == set()
    await rig.advance(24 * 3600 - 1)
    assert await state(rig, sid) is State.SLEEPING
    await rig.advance(1)
    assert await state(rig, sid) is State.DELETED
    assert rig.runtime.containers == {}
    events = await rig.store.list_events(sid)
    sleep = next(e for e in events if e.to_state == "stopping")
    assert sleep.code == "inactivity" and "15m" in sleep.reason
    delete = next(e for e in events if e.to_state == "deleting")
    assert delete.code == "asleep_too_long" and "24h" in delete.reason
    with pytest.raises(NotFound):
        await rig.engine.get(sid)


async def test_activity_every_5_minutes_never_sleeps(rig: Rig) -> None:
    sid = await create(rig)
    for _ in range(8 * 12):  # eight hours
        await rig.advance(5 * 60)
        rig.engine.record_activity(sid, ActivityKind.USER_INTERACTION)
        await rig.engine.flush()
    assert await state(rig, sid) is State.RUNNING
    assert [c[0] for c in rig.runtime.calls] == ["create", "start"]


async def test_presence_and_keepalive_do_not_keep_a_session_awake(rig: Rig) -> None:
    sid = await create(rig)
    for _ in range(20):
        await rig.advance(60)
        rig.engine.record_activity(sid, ActivityKind.FOCUS)
        rig.engine.record_activity(sid, ActivityKind.PING)
    await rig.engine.flush()
    assert await state(rig, sid) is State.SLEEPING
    record = await rig.store.get_session(sid)
    assert record is not None and record.last_activity_at is None
    assert record.last_seen_at is not None


async def test_restart_resumes_pending_deadlines_from_the_store(rig: Rig) -> None:
    sid = await create(rig)
    await rig.engine.stop()
    fresh = rig.new_engine()
    assert await fresh.load() == 1
    rig.engine = fresh
    await rig.advance(15 * 60)
    assert await state(rig, sid) is State.SLEEPING


async def test_activity_is_coalesced_into_one_write_per_session_per_flush(rig: Rig) -> None:
    a, b = await create(rig), await create(rig, "bob")
    for i in range(500):
        rig.clock.advance(0.001)
        rig.engine.record_activity(a if i % 2 else b, ActivityKind.COMMAND)
    assert await rig.engine.flush() == 2
    assert await rig.engine.flush() == 0
    record = await rig.engine.get(a)
    assert record.last_activity_kind == "command"
    assert record.last_activity_at == rig.clock.now()


async def test_activity_never_moves_last_activity_backwards(rig: Rig) -> None:
    sid = await create(rig)
    now = rig.clock.now()
    rig.engine.record_activity(sid, ActivityKind.BUILD, at=now)
    await rig.engine.flush()
    rig.engine.record_activity(sid, ActivityKind.CHAT, at=now - timedelta(minutes=5))
    await rig.engine.flush()
    record = await rig.engine.get(sid)
    assert (record.last_activity_at, record.last_activity_kind) == (now, "build")


async def test_activity_far_in_the_future_is_refused(rig: Rig) -> None:
    sid = await create(rig)
    with pytest.raises(InvalidInput):
        rig.engine.record_activity(sid, ActivityKind.API, at=rig.clock.now() + timedelta(hours=1))


async def test_temporary_runtime_errors_are_retried(rig: Rig) -> None:
    rig.runtime.fail("start", times=2)
    sid = await create(rig)
    assert await state(rig, sid) is State.RUNNING
    async with rig.store.engine.connect() as conn:
        attempts = (await conn.execute(select(operations.c.attempts))).scalar_one()
    assert attempts == 4  # one create + three starts


async def test_permanent_failure_marks_the_session_failed_with_the_error(rig: Rig) -> None:
    rig.runtime.fail("start", RuntimeFailure("image has no shell"))
    sid = await create(rig)
    record = await rig.engine.get(sid)
    assert record.state is State.FAILED
    assert record.error is not None and "image has no shell" in record.error


async def test_temporary_errors_give_up_after_the_attempt_budget(rig: Rig) -> None:
    rig.runtime.fail("start", times=10)
    sid = await create(rig)
    record = await rig.engine.get(sid)
    assert record.state is State.FAILED
    assert record.error is not None and "gave up" in record.error


async def test_a_failed_removal_never_marks_the_session_deleted(rig: Rig) -> None:
    sid = await create(rig)
    rig.runtime.fail("remove", RuntimeFailure("engine said no"))
    await rig.engine.delete(sid)
    await rig.settle()
    assert await state(rig, sid) is State.DELETING
    assert f"dormant-{sid}" in rig.runtime.containers


async def test_logout_deletes_only_that_users_sessions(rig: Rig) -> None:
    a1, a2, b = await create(rig), await create(rig), await create(rig, "bob")
    deleted = await rig.engine.logout("alice", tenant="t1")
    await rig.settle()
    assert sorted(deleted) == sorted([a1, a2])
    assert await state(rig, a1) is State.DELETED
    assert await state(rig, a2) is State.DELETED
    assert await state(rig, b) is State.RUNNING
    events = await rig.store.list_events(a1)
    assert any(e.code == "logout" and e.to_state == "deleting" for e in events)


async def test_logout_is_scoped_to_the_tenant(rig: Rig) -> None:
    sid = await create(rig)
    assert await rig.engine.logout("alice", tenant="someone-else") == []
    await rig.settle()
    assert await state(rig, sid) is State.RUNNING


async def test_keepalive_postpones_sleep_and_is_bounded(rig: Rig) -> None:
    sid = await create(rig)
    until = rig.clock.now() + timedelta(hours=2)
    await rig.engine.keepalive(sid, until)
    await rig.advance(2 * 3600 - 1)
    assert await state(rig, sid) is State.RUNNING
    await rig.advance(1)
    assert await state(rig, sid) is State.SLEEPING
    with pytest.raises(InvalidInput):
        await rig.engine.keepalive(sid, rig.clock.now() + timedelta(days=30))


async def test_busy_is_bounded_and_must_be_in_the_future(rig: Rig) -> None:
    sid = await create(rig)
    with pytest.raises(InvalidInput):
        await rig.engine.keepalive(sid, rig.clock.now() - timedelta(seconds=1), busy=True)
    with pytest.raises(InvalidInput):
        await rig.engine.keepalive(sid, rig.clock.now() + timedelta(days=2), busy=True)


async def test_connected_session_is_warned_then_sleeps_and_activity_cancels(rig: Rig) -> None:
    seen: list[str] = []
    rig.engine.listeners.append(lambda e: seen.append(type(e).__name__))
    sid = await create(rig)
    await rig.engine.connect(sid)
    await rig.advance(14 * 60)
    assert "Warned" in seen
    rig.engine.record_activity(sid, ActivityKind.USER_INTERACTION)
    assert "WarningCancelled" in seen
    await rig.engine.flush()
    await rig.advance(60)
    assert await state(rig, sid) is State.RUNNING
    await rig.advance(14 * 60)
    assert seen.count("Warned") == 2
    await rig.advance(60)
    assert await state(rig, sid) is State.SLEEPING


async def test_disconnect_grace_sleeps_unless_a_client_comes_back(rig: Rig) -> None:
    kept, slept = await create(rig), await create(rig, "bob")
    for sid in (kept, slept):
        await rig.engine.connect(sid)
        await rig.engine.disconnect(sid)
    await rig.advance(20)
    await rig.engine.connect(kept)
    await rig.advance(10)
    assert await state(rig, slept) is State.SLEEPING
    assert await state(rig, kept) is State.RUNNING
    events = await rig.store.list_events(slept)
    assert any(e.code == "disconnect_grace" for e in events)


async def test_meaningful_activity_wakes_a_sleeping_session(rig: Rig) -> None:
    sid = await create(rig)
    await rig.engine.sleep(sid)
    await rig.settle()
    assert await state(rig, sid) is State.SLEEPING
    rig.engine.record_activity(sid, ActivityKind.FOCUS)
    await rig.settle()
    assert await state(rig, sid) is State.SLEEPING
    rig.engine.record_activity(sid, ActivityKind.REQUEST)
    await rig.settle()
    assert await state(rig, sid) is State.RUNNING
    events = await rig.store.list_events(sid)
    assert any(e.action == "wake" and e.code == "activity" for e in events)


async def test_wake_on_activity_can_be_turned_off(rig: Rig) -> None:
    sid = await create(rig, policy={"wake_on_activity": False})
    await rig.engine.sleep(sid)
    await rig.settle()
    rig.engine.record_activity(sid, ActivityKind.REQUEST)
    await rig.settle()
    assert await state(rig, sid) is State.SLEEPING


async def test_a_woken_session_gets_a_fresh_inactivity_clock(rig: Rig) -> None:
    sid = await create(rig)
    await rig.advance(15 * 60)
    assert await state(rig, sid) is State.SLEEPING
    await rig.advance(3600)
    await rig.engine.wake(sid)
    await rig.settle()
    assert await state(rig, sid) is State.RUNNING
    await rig.advance(15 * 60 - 1)
    assert await state(rig, sid) is State.RUNNING


async def test_sleep_of_a_session_that_is_not_running_is_a_conflict(rig: Rig) -> None:
    from dormant.errors import Conflict

    rig.runtime.fail("start", RuntimeFailure("boom"))
    sid = await create(rig)
    with pytest.raises(Conflict):
        await rig.engine.sleep(sid)


async def test_tenants_cannot_see_each_other(rig: Rig) -> None:
    sid = await create(rig)
    with pytest.raises(NotFound):
        await rig.engine.get(sid, tenant="t2")
    with pytest.raises(NotFound):
        await rig.engine.delete(sid, tenant="t2")
    assert (await rig.engine.get(sid, tenant="t1")).id == sid


async def test_unknown_template_and_bad_policy_write_nothing(rig: Rig) -> None:
    with pytest.raises(InvalidInput):
        await rig.engine.create_session(tenant="t1", user_id="a", template="nope")
    with pytest.raises(InvalidInput):
        await rig.engine.create_session(tenant="t1", user_id="a", policy={"sleep_after": -1})
    with pytest.raises(InvalidInput):
        await rig.engine.create_session(tenant="t1", user_id="a", policy={"bogus": 1})
    assert await rig.store.list_sessions(include_deleted=True) == []


async def test_ports_are_never_handed_out_twice_and_exhaustion_is_clear(rig: Rig) -> None:
    engine = make_engine(rig.store, rig.runtime, rig.clock, ports=range(31000, 31002))
    rig.others.append(engine)  # drained before the store closes
    a = await engine.create_session(tenant="t1", user_id="a")
    b = await engine.create_session(tenant="t1", user_id="b")
    assert a.port != b.port
    with pytest.raises(CapacityExhausted, match="no free port"):
        await engine.create_session(tenant="t1", user_id="c")
    await engine.drain()
    await engine.delete(a.id)
    await engine.drain()
    c = await engine.create_session(tenant="t1", user_id="c")
    assert c.port == a.port
    await engine.drain()
    async with rig.store.engine.connect() as conn:
        from dormant.store.schema import sessions

        n = (await conn.execute(select(func.count()).select_from(sessions))).scalar_one()
    assert n == 3


async def test_a_due_session_whose_handling_fails_is_tried_again(rig: Rig) -> None:
    from dormant.testing import FlakyStore

    sid = await create(rig)
    flaky = FlakyStore(rig.store)
    rig.engine.store = flaky  # type: ignore[assignment]
    flaky.fail("get_session", times=2)
    await rig.advance(15 * 60)
    assert await state(rig, sid) is State.RUNNING  # the store refused; the deadline stays armed
    for _ in range(20):
        await rig.advance(1)
    assert await state(rig, sid) is State.SLEEPING


async def test_per_session_locks_do_not_outlive_their_use(rig: Rig) -> None:
    for user in ("a", "b", "c"):
        await create(rig, user)
    await rig.advance(15 * 60)
    assert rig.engine._locks == {}
