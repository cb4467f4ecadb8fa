"""Safety of the engine: store errors are not runtime errors, counts survive crashes, deleted
sessions are purged, and the reconciler judges only what a consistent read shows."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from dormant.errors import Conflict, RuntimeFailure
from dormant.policy import State
from dormant.reconciler import Reconciler, plan
from dormant.runtimes import ContainerInfo, ContainerStatus
from dormant.store.records import InstanceRecord
from dormant.testing import FakeRuntime, FlakyStore

from .conftest import Rig, make_engine


class StoreDownAfterStart(FakeRuntime):
    """A start that works, after which the database goes away for a few calls."""

    flaky: FlakyStore | None = None
    outage: int = 0

    async def start(self, name: str, state: dict[str, Any]) -> dict[str, Any]:
        started = await super().start(name, state)
        if self.flaky is not None and self.outage:
            self.flaky.fail("update_session", self.outage)
            self.flaky.fail("finish_operation", self.outage)
            self.outage = 0
        return started


async def test_a_store_outage_after_a_wake_does_not_fail_the_session(rig: Rig) -> None:
    flaky = FlakyStore(rig.store)
    runtime = StoreDownAfterStart()
    engine = make_engine(flaky, runtime, rig.clock, "flaky-1")  # type: ignore[arg-type]
    rig.others.append(engine)  # drained before the store closes
    record = await engine.create_session(tenant="t", user_id="u")
    await engine.drain()
    await engine.sleep(record.id)
    await engine.drain()
    assert (await rig.store.get_session(record.id)).state is State.SLEEPING  # type: ignore[union-attr]
    runtime.flaky, runtime.outage = flaky, 3
    await engine.wake(record.id)
    await engine.drain()
    after = await rig.store.get_session(record.id)
    assert after is not None
    assert (after.state, after.error) == (State.RUNNING, None)
    assert runtime.running() == {record.container_name}
    assert await rig.store.pending_operations() == []
    timeline = [(e.to_state, e.code) for e in await rig.store.list_events(record.id)]
    assert ("failed", "error") not in timeline


async def test_a_start_that_fails_for_good_leaves_no_running_container(rig: Rig) -> None:
    record = await rig.engine.create_session(tenant="t", user_id="u")
    await rig.settle()
    await rig.engine.sleep(record.id)
    await rig.settle()

    original = rig.runtime.start

    async def starts_then_fails(name: str, state: dict[str, Any]) -> dict[str, Any]:
        await original(name, state)  # the container runs, but readiness never comes
        raise RuntimeFailure("did not answer on its port")

    rig.runtime.start = starts_then_fails  # type: ignore[method-assign]
    await rig.engine.wake(record.id)
    await rig.settle()
    failed = await rig.store.get_session(record.id)
    assert failed is not None and failed.state is State.FAILED
    assert "did not answer" in (failed.error or "")
    assert rig.runtime.running() == set()


async def test_reconciler_repairs_a_failed_session_whose_container_serves(rig: Rig) -> None:
    record = await rig.engine.create_session(tenant="t", user_id="u")
    await rig.settle()
    got = await rig.store.get_session(record.id)
    assert got is not None
    # What a lost store write once left: the API says failed, the container runs.
    await rig.store.update_session(got.replace(state=State.FAILED, error="x"), got.version)
    rig.clock.advance(60)
    steps = await Reconciler(rig.engine).run()
    await rig.settle()
    assert [(s.kind, s.target) for s in steps] == [("repair-failed", record.id)]
    repaired = await rig.store.get_session(record.id)
    assert repaired is not None
    assert (repaired.state, repaired.error) == (State.RUNNING, None)


async def test_counts_of_a_killed_instance_are_dropped_and_grace_starts(rig: Rig) -> None:
    record = await rig.engine.create_session(tenant="t", user_id="u")
    await rig.settle()
    for n in (1, 2, 3):
        await rig.engine.connect(record.id, count=n)
    held = await rig.store.get_session(record.id)
    assert held is not None
    assert (held.connections, held.connections_by_instance) == (3, {"test-1": 3})
    # test-1 is SIGKILLed: no more heartbeats. A successor starts 60 s later.
    rig.clock.advance(60)
    successor = rig.new_engine("test-2")
    await successor.heartbeat()
    await successor.load()
    after = await rig.store.get_session(record.id)
    assert after is not None
    assert (after.connections, after.connections_by_instance) == (0, {})
    assert after.last_disconnect_at == rig.clock.now()
    events = await rig.store.list_events(record.id)
    assert events[-1].code == "connections-dropped" and "test-1" in events[-1].reason
    assert successor.connections_dropped == 3
    # The 30 s grace runs out and the session sleeps.
    rig.clock.advance(31)
    await successor.tick()
    await successor.drain()
    slept = await rig.store.get_session(record.id)
    assert slept is not None and slept.state is State.SLEEPING


async def test_counts_of_a_live_replica_are_kept(rig: Rig) -> None:
    record = await rig.engine.create_session(tenant="t", user_id="u")
    await rig.settle()
    await rig.engine.connect(record.id, count=2)
    other = rig.new_engine("test-2")
    await other.heartbeat()
    await other.connect(record.id, count=1)
    await rig.engine.heartbeat()
    assert await other.drop_dead_connections() == 0
    after = await rig.store.get_session(record.id)
    assert after is not None
    assert after.connections_by_instance == {"test-1": 2, "test-2": 1}
    assert after.connections == 3
    await rig.engine.disconnect(record.id, count=0)
    left = await rig.store.get_session(record.id)
    assert left is not None and (left.connections, left.connections_by_instance) == (
        1,
        {"test-2": 1},
    )


async def test_restart_under_the_same_instance_id_drops_its_own_old_counts(rig: Rig) -> None:
    record = await rig.engine.create_session(tenant="t", user_id="u")
    await rig.settle()
    await rig.engine.connect(record.id, count=2)
    await rig.store.heartbeat_instance(
        InstanceRecord("test-1", "h", 1, rig.clock.now(), rig.clock.now())
    )
    again = rig.new_engine("test-1")
    await again.load()
    after = await rig.store.get_session(record.id)
    assert after is not None and after.connections == 0


async def test_deleted_sessions_are_purged_after_retention(rig: Rig) -> None:
    keep = await rig.engine.create_session(tenant="t", user_id="keep")
    gone = await rig.engine.create_session(tenant="t", user_id="gone")
    await rig.settle()
    await rig.engine.delete(gone.id)
    await rig.settle()
    rig.clock.advance(timedelta(days=30) - timedelta(seconds=1))
    assert await rig.engine.purge() == 0
    rig.clock.advance(2)
    assert await rig.engine.purge() == 1
    assert await rig.store.get_session(gone.id) is None
    assert await rig.store.list_events(gone.id) == []
    assert await rig.store.get_session(keep.id) is not None


async def test_containers_are_labelled_with_the_deployment(rig: Rig) -> None:
    record = await rig.engine.create_session(tenant="t", user_id="u")
    await rig.settle()
    deployment = await rig.store.deployment_id("ignored", rig.clock.now())
    assert len(deployment) == 16
    labels = rig.runtime.containers[record.container_name].spec.labels
    assert labels["dormant.deployment"] == deployment


def info(sid: str, deployment: str | None, created: str) -> ContainerInfo:
    labels = {"dormant.managed": "true", "dormant.session": sid, "dormant.created": created}
    if deployment is not None:
        labels["dormant.deployment"] = deployment
    return ContainerInfo(f"dormant-{sid}", labels, ContainerStatus.RUNNING)


async def test_plan_touches_only_this_deployments_settled_orphans(rig: Rig) -> None:
    now = rig.clock.now()
    old = (now - timedelta(hours=1)).isoformat()
    fresh = (now - timedelta(seconds=5)).isoformat()
    deleted = await rig.engine.create_session(tenant="t", user_id="u")
    await rig.settle()
    await rig.engine.delete(deleted.id)
    await rig.settle()
    just_deleted = await rig.store.get_session(deleted.id)
    assert just_deleted is not None and just_deleted.state is State.DELETED
    containers = [
        info("foreign", "other-deployment", old),  # another deployment's: never judged
        info("legacy", None, old),  # from before deployment ids, no session here
        info("young", "mine", fresh),  # made moments ago
        info(deleted.id, "mine", old),  # its session was deleted moments ago
        info("orphan", "mine", old),  # ours, no session, settled: the only orphan
        info("unread", "mine", old),  # its session was not read after the listing
    ]
    result = plan(
        {"process": containers},
        {},
        [],
        busy=set(),
        instance_id="test-1",
        live_instances={"test-1"},
        sweep_started=now,
        deployment_id="mine",
        ended={deleted.id: just_deleted, "orphan": None, "young": None, "legacy": None},
    )
    assert [(s.kind, s.target) for s in result.steps] == [("remove-orphan", "dormant-orphan")]
    assert (result.foreign, result.unadopted) == (1, 1)
    later = plan(
        {"process": [info(deleted.id, "mine", old)]},
        {},
        [],
        busy=set(),
        instance_id="test-1",
        live_instances={"test-1"},
        sweep_started=now + timedelta(minutes=5),
        deployment_id="mine",
        ended={deleted.id: just_deleted},
    )
    assert [s.kind for s in later.steps] == ["remove-orphan"]


async def test_an_orphan_already_gone_is_not_counted(rig: Rig) -> None:
    reconciler = Reconciler(rig.engine)
    ghost = info("ghost", await rig.engine.ensure_deployment(), "2020-01-01T00:00:00+00:00")
    removed = await rig.engine.remove_container("process", ghost, "test")
    assert removed is False
    assert reconciler.orphans_removed == 0


async def test_a_stale_write_keeps_other_instances_counts(rig: Rig) -> None:
    record = await rig.engine.create_session(tenant="t", user_id="u")
    await rig.settle()
    other = rig.new_engine("test-2")
    await other.heartbeat()
    stale = await rig.store.get_session(record.id)
    assert stale is not None
    await other.connect(record.id, count=2)  # changes the row under our stale copy
    # A write of ours from the stale copy (a keepalive-like change) conflicts and re-applies.
    saved = await rig.engine._save(stale.replace(labels={**stale.labels, "x": "1"}), [])
    assert saved.connections_by_instance == {"test-2": 2} and saved.connections == 2


async def test_a_stale_transition_never_undoes_another_writers(rig: Rig) -> None:
    record = await rig.engine.create_session(tenant="t", user_id="u")
    await rig.settle()
    stale = await rig.store.get_session(record.id)
    assert stale is not None and stale.state is State.RUNNING
    other = rig.new_engine("test-2")
    await other.sleep(record.id)
    await other.drain()
    with pytest.raises(Conflict):
        await rig.engine._transition(stale, State.FAILED, "error", "stale")
    after = await rig.store.get_session(record.id)
    assert after is not None and after.state is State.SLEEPING


async def test_an_instance_that_lost_the_store_judges_no_one(rig: Rig) -> None:
    record = await rig.engine.create_session(tenant="t", user_id="u")
    await rig.settle()
    await rig.engine.connect(record.id, count=1)
    rig.clock.advance(120)  # test-1's heartbeat looks stale to anyone who looks now
    other = rig.new_engine("test-2")
    await other.heartbeat()  # healthy for 0 s: not long enough to judge
    assert await other.drop_dead_connections() == 0
    rig.clock.advance(31)
    await other.heartbeat()
    assert await other.drop_dead_connections() == 1
    after = await rig.store.get_session(record.id)
    assert after is not None and after.connections == 0


async def test_a_container_that_cannot_be_stopped_is_not_repaired_into_a_loop(rig: Rig) -> None:
    record = await rig.engine.create_session(tenant="t", user_id="u")
    await rig.settle()
    rig.runtime.fail("stop", RuntimeFailure("stuck in D state"), times=10)
    await rig.engine.sleep(record.id)
    await rig.settle()
    failed = await rig.store.get_session(record.id)
    assert failed is not None and failed.state is State.FAILED
    assert (failed.error or "").startswith("stop failed: ")
    assert rig.runtime.running() == {record.container_name}
    assert await rig.engine.repair_failed(record.id) is False


async def test_a_stalled_instance_never_drops_its_own_counts(rig: Rig) -> None:
    record = await rig.engine.create_session(tenant="t", user_id="u")
    await rig.settle()
    await rig.engine.connect(record.id, count=2)
    rig.clock.advance(31)
    await rig.engine.heartbeat()  # healthy for a lease now
    rig.clock.advance(40)  # the loop stalled: its own row looks 40 s old
    assert await rig.engine.drop_dead_connections() == 0
    after = await rig.store.get_session(record.id)
    assert after is not None and after.connections == 2
