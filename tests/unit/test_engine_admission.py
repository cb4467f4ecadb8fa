"""Admission ([limits]): creates and wakes beyond a limit wait in durable FIFO queues."""

from __future__ import annotations

import dataclasses
import logging
from datetime import timedelta
from pathlib import Path

import pytest

from dormant.config import load_settings
from dormant.engine import Engine
from dormant.engine.limits import (
    RUNNING,
    RUNNING_PER_USER,
    SESSIONS_PER_USER,
    Limits,
    blocking,
    positions,
)
from dormant.engine.notify import EngineEvent, Queued
from dormant.errors import InvalidInput
from dormant.policy import State
from dormant.store.records import AdmissionCounts

from .conftest import Rig


def limited(rig: Rig, instance: str = "test-1", **limits: object) -> Engine:
    engine = rig.new_engine(instance)
    engine.settings = dataclasses.replace(engine.settings, limits=Limits(**limits))  # type: ignore[arg-type]
    return engine


async def settle(engine: Engine) -> None:
    for _ in range(10):
        await engine.drain()
        if not await engine.tick() and not engine._tasks:
            break
    await engine.drain()


async def states(engine: Engine, *ids: str) -> list[str]:
    out = []
    for sid in ids:
        r = await engine.store.get_session(sid)
        assert r is not None
        out.append("queued" if r.queued_at is not None else r.state.value)
    return out


def test_blocking_names_the_broadest_limit_and_sessions_only_for_creates() -> None:
    limits = Limits(running=3, running_per_user=1, sessions_per_user=2)
    assert blocking(limits, AdmissionCounts(2, 2, 0, 0), "t", "create") is None
    assert blocking(limits, AdmissionCounts(3, 3, 1, 1), "t", "create") == RUNNING
    assert blocking(limits, AdmissionCounts(2, 2, 1, 1), "t", "create") == RUNNING_PER_USER
    assert blocking(limits, AdmissionCounts(0, 0, 0, 2), "t", "create") == SESSIONS_PER_USER
    assert blocking(limits, AdmissionCounts(0, 0, 0, 2), "t", "wake") is None
    tenants = Limits(running_per_tenant=5, tenants={"acme": 1})
    assert blocking(tenants, AdmissionCounts(1, 1, 0, 0), "acme", "wake") == "running_per_tenant"
    assert blocking(tenants, AdmissionCounts(1, 1, 0, 0), "other", "wake") is None
    assert not Limits().configured and Limits(tenants={"a": 1}).configured


async def test_no_limits_queue_nothing(rig: Rig) -> None:
    ids = [(await rig.engine.create_session(tenant="t", user_id="u")).id for _ in range(5)]
    await rig.settle()
    assert await states(rig.engine, *ids) == ["running"] * 5
    assert await rig.store.list_queued() == []


async def test_creates_beyond_the_limits_queue_in_order_and_are_admitted_as_slots_free(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    engine = limited(rig, running=3, running_per_user=1)
    told: list[EngineEvent] = []
    engine.listeners.append(told.append)
    made = []
    with caplog.at_level(logging.WARNING, "dormant.engine"):
        for user in ("a", "b", "c", "d", "a", "b"):
            made.append((await engine.create_session(tenant="t", user_id=user)).id)
    await settle(engine)
    assert await states(engine, *made) == ["running"] * 3 + ["queued"] * 3
    queued = await rig.store.list_queued()
    assert positions(queued) == {made[3]: 1, made[4]: 2, made[5]: 3}
    assert all(r.queue_limit == RUNNING for r in queued)
    assert "limit running=3" in caplog.text
    # the policy leaves queued sessions alone: no next action while queued
    assert all(r.next_action_at is None for r in queued)
    await engine.admit_queued()
    assert [e.position for e in told if isinstance(e, Queued)] == [1, 2, 3]
    # user c's session sleeps: the first queued (d) is admitted; a and b move up
    await engine.sleep(made[2], "t")
    await settle(engine)
    assert await engine.admit_queued() == 1
    await settle(engine)
    assert await states(engine, *made[3:]) == ["running", "queued", "queued"]
    left = await rig.store.list_queued()
    assert [r.queue_limit for r in left] == [RUNNING, RUNNING]
    assert positions(left) == {made[4]: 1, made[5]: 2}
    assert [e.position for e in told if isinstance(e, Queued)][3:] == [None, 1, 2]
    # a's first session is deleted: a's queued one runs
    await engine.delete(made[0], "t")
    await settle(engine)
    await engine.admit_queued()
    await settle(engine)
    assert await states(engine, made[4], made[5]) == ["running", "queued"]


async def test_a_request_blocked_by_its_users_limit_waits_in_that_users_queue(rig: Rig) -> None:
    engine = limited(rig, running=5, running_per_user=1)
    first = await engine.create_session(tenant="t", user_id="a")
    second = await engine.create_session(tenant="t", user_id="a")
    other = await engine.create_session(tenant="t", user_id="b")
    await settle(engine)
    await engine.admit_queued()
    await settle(engine)
    assert await states(engine, first.id, second.id, other.id) == ["running", "queued", "running"]
    queued = await rig.store.list_queued()
    assert [(r.queue_limit, r.queue_kind) for r in queued] == [(RUNNING_PER_USER, "create")]
    # another user's create does not wait behind a's own queue
    third = await engine.create_session(tenant="t", user_id="c")
    assert third.queued_at is None


async def test_a_wake_beyond_a_limit_is_queued_and_admitted(rig: Rig) -> None:
    engine = limited(rig, running=1)
    first = await engine.create_session(tenant="t", user_id="a")
    await settle(engine)
    await engine.sleep(first.id, "t")
    await settle(engine)
    second = await engine.create_session(tenant="t", user_id="b")
    await settle(engine)
    woken = await engine.wake(first.id, "t")
    assert woken.queued_at is not None and woken.queue_kind == "wake"
    assert woken.state is State.SLEEPING and woken.next_action_at is None
    await engine.sleep(second.id, "t")
    await settle(engine)
    await engine.admit_queued()
    await settle(engine)
    assert await states(engine, first.id, second.id) == ["running", "sleeping"]


async def test_the_queue_times_out(rig: Rig) -> None:
    engine = limited(rig, running=1, queue_timeout=60)
    holder = await engine.create_session(tenant="t", user_id="a")
    await settle(engine)
    await engine.sleep(holder.id, "t")
    await settle(engine)
    other = await engine.create_session(tenant="t", user_id="b")
    queued = await engine.create_session(tenant="t", user_id="c")
    await settle(engine)
    await engine.wake(holder.id, "t")  # queued behind c
    rig.clock.advance(61)
    await engine.admit_queued()
    await settle(engine)
    gone = await rig.store.get_session(queued.id)
    assert gone is not None and gone.state is State.DELETED
    assert gone.error is not None and gone.error.startswith("queue timeout")
    asleep = await rig.store.get_session(holder.id)
    assert asleep is not None and asleep.state is State.SLEEPING and asleep.queued_at is None
    assert asleep.next_action_at is not None  # the policy has it again
    assert await states(engine, other.id) == ["running"]


async def test_a_restart_keeps_the_queue_and_resumes_nothing_queued(rig: Rig) -> None:
    engine = limited(rig, running=1)
    ids = [(await engine.create_session(tenant="t", user_id=u)).id for u in "abc"]
    await settle(engine)
    again = limited(rig, "test-2", running=1)
    await again.load()
    assert not await again.resume(ids[1])  # queued: not an interrupted create
    assert [r.id for r in await rig.store.list_queued()] == ids[1:]
    await engine.sleep(ids[0], "t")
    await settle(engine)
    await again.admit_queued()
    await settle(again)
    assert await states(again, *ids) == ["sleeping", "running", "queued"]


async def test_evict_idle_sleeps_the_idlest_running_session_of_the_tenant(rig: Rig) -> None:
    engine = limited(rig, running=2, evict_idle=True, active_within=60)
    old = await engine.create_session(tenant="t", user_id="a")
    await settle(engine)
    rig.clock.advance(30)
    recent = await engine.create_session(tenant="t", user_id="b")
    await settle(engine)
    rig.clock.advance(45)  # old idle 75 s, recent 45 s (within active_within)
    waiting = await engine.create_session(tenant="t", user_id="c")
    await engine.admit_queued()
    await settle(engine)
    slept = await rig.store.get_session(old.id)
    assert slept is not None and slept.state is State.SLEEPING
    events = await rig.store.list_events(old.id)
    assert any(e.reason == "capacity: idlest of 2 running" for e in events)
    await engine.admit_queued()
    await settle(engine)
    assert await states(engine, recent.id, waiting.id) == ["running", "running"]


async def test_evict_idle_spares_busy_kept_alive_and_active_sessions(rig: Rig) -> None:
    engine = limited(rig, running=2, evict_idle=True, active_within=60)
    busy = await engine.create_session(tenant="t", user_id="a")
    kept = await engine.create_session(tenant="t", user_id="b")
    await settle(engine)
    rig.clock.advance(100)
    now = rig.clock.now()
    await engine.keepalive(busy.id, now + timedelta(seconds=300), "t", busy=True)
    await engine.keepalive(kept.id, now + timedelta(seconds=300), "t")
    waiting = await engine.create_session(tenant="t", user_id="c")
    await engine.admit_queued()
    await settle(engine)
    assert await states(engine, busy.id, kept.id, waiting.id) == ["running", "running", "queued"]


async def test_one_replica_admits_the_queue(rig: Rig) -> None:
    first = limited(rig, "a-1", running=1)
    second = limited(rig, "b-2", running=1)
    for e in (first, second):
        await e.heartbeat()
    await first.heartbeat()
    holder = await first.create_session(tenant="t", user_id="a")
    waiting = await second.create_session(tenant="t", user_id="b")
    await settle(first)
    await first.sleep(holder.id, "t")
    await settle(first)
    assert await second.admit_queued() == 0  # not the first live instance
    assert await first.admit_queued() == 1
    await settle(first)
    assert await states(first, waiting.id) == ["running"]


def test_limits_come_from_dormant_toml_and_the_environment(tmp_path: Path) -> None:
    config = tmp_path / "dormant.toml"
    config.write_text(
        "[limits]\nrunning = 40\nrunning_per_user = 2\nrunning_per_tenant = 20\n"
        'tenants = { acme = 10 }\nqueue_timeout = "2m"\nevict_idle = true\n'
    )
    limits = load_settings(config, environ={"DORMANT_LIMITS_SESSIONS_PER_USER": "3"}).limits
    got = limits.to_limits()
    assert (got.running, got.running_per_user, got.sessions_per_user) == (40, 2, 3)
    assert got.tenant_limit("acme") == 10 and got.tenant_limit("other") == 20
    assert got.queue_timeout == 120 and got.evict_idle and got.active_within == 120
    env = {"DORMANT_LIMITS_TENANTS": "acme=5,beta=1", "DORMANT_LIMITS_RUNNING": "3"}
    assert load_settings(environ=env).limits.to_limits().tenants == {"acme": 5, "beta": 1}
    assert not load_settings(environ={}).limits.to_limits().configured
    for bad in ({"DORMANT_LIMITS_RUNNING": "0"}, {"DORMANT_LIMITS_TENANTS": "acme"}):
        with pytest.raises(InvalidInput):
            load_settings(environ=bad)
