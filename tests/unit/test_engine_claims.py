"""Several instances on one store: due sessions are claimed, so each is acted on once; a dead
instance's sessions are picked up by the others; an instance that lost its claim cannot write."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from dormant.policy import ActivityKind, State
from dormant.store.records import Claim

from .conftest import Rig


def stops(rig: Rig, name: str) -> int:
    return sum(1 for method, target in rig.runtime.calls if (method, target) == ("stop", name))


async def test_a_session_due_in_two_heaps_is_slept_once(rig: Rig) -> None:
    record = await rig.engine.create_session(tenant="t", user_id="u")
    await rig.settle()
    other = rig.new_engine("test-2")
    await other.heartbeat()
    await rig.engine.heartbeat()
    assert await other.load() == 1  # both heaps hold the deadline now
    rig.clock.advance(15 * 60)
    claimed = [await rig.engine.tick(), await other.tick()]
    await rig.engine.drain()
    await other.drain()
    assert sorted(claimed) == [0, 1]
    after = await rig.store.get_session(record.id)
    assert after is not None and after.state is State.SLEEPING
    assert stops(rig, record.container_name) == 1
    events = await rig.store.list_events(record.id)
    assert [e.to_state for e in events].count("sleeping") == 1


async def test_a_dead_instances_sessions_are_handled_by_another(rig: Rig) -> None:
    record = await rig.engine.create_session(tenant="t", user_id="u")
    await rig.settle()
    # test-1 dies now. test-2 started before the session existed: its heap knows nothing.
    survivor = rig.new_engine("test-2")
    rig.clock.advance(15 * 60 + 1)
    await survivor.heartbeat()  # test-1's lease has long expired
    assert len(survivor.deadlines) == 0
    assert await survivor.tick() == 1  # found in the store
    await survivor.drain()
    after = await rig.store.get_session(record.id)
    assert after is not None and after.state is State.SLEEPING
    assert stops(rig, record.container_name) == 1


async def test_an_instance_that_lost_its_claim_cannot_act(rig: Rig) -> None:
    record = await rig.engine.create_session(tenant="t", user_id="u")
    await rig.settle()
    paused = rig.engine
    rig.clock.advance(15 * 60)
    now = rig.clock.now()
    (stale,) = await rig.store.claim_due(
        "test-1", now, now + timedelta(seconds=60), live_instances=["test-1"]
    )
    # test-1 is paused past its lease; test-2 claims the session and handles it.
    rig.clock.advance(61)
    taker = rig.new_engine("test-2")
    await taker.heartbeat()
    assert await taker.tick() == 1
    await taker.drain()
    assert stops(rig, record.container_name) == 1
    # test-1 wakes up and goes on with its stale claim: its first write is refused.
    await paused._due_guarded(record.id, stale)
    assert stops(rig, record.container_name) == 1
    after = await rig.store.get_session(record.id)
    assert after is not None and after.state is State.SLEEPING
    assert after.fence == stale.fence + 1


async def test_a_stale_claim_never_moves_a_session_it_no_longer_holds(rig: Rig) -> None:
    record = await rig.engine.create_session(tenant="t", user_id="u")
    await rig.settle()
    rig.clock.advance(15 * 60)
    now = rig.clock.now()
    old = Claim(record.id, 0, now)  # the fence before any claim
    (current,) = await rig.store.claim_due(
        "test-2", now, now + timedelta(seconds=60), live_instances=["test-2"]
    )
    assert current.fence == 1
    await rig.engine._due_guarded(record.id, old)
    after = await rig.store.get_session(record.id)
    assert after is not None and after.state is State.RUNNING  # untouched by test-1
    assert stops(rig, record.container_name) == 0


async def test_concurrent_creates_on_two_instances_never_share_a_port(rig: Rig) -> None:
    other = rig.new_engine("test-2")
    rig.engine.ports._next = other.ports._next = 0  # both start at the same port on purpose
    results = await asyncio.gather(
        *(
            engine.create_session(tenant="t", user_id=f"u{i}")
            for i in range(8)
            for engine in (rig.engine, other)
        )
    )
    ports = [r.port for r in results]
    assert len(ports) == 16 and len(set(ports)) == 16
    await rig.engine.drain()
    await other.drain()


async def test_activity_through_an_instance_that_did_not_create_the_session(rig: Rig) -> None:
    record = await rig.engine.create_session(tenant="t", user_id="u")
    await rig.settle()
    other = rig.new_engine("test-2")
    seen = await other.get(record.id, "t")  # what the API does before recording activity
    other.record_activity(seen.id, ActivityKind.COMMAND)
    await other.flush()
    after = await rig.store.get_session(record.id)
    assert after is not None and after.last_activity_kind == "command"
