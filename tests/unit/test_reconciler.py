"""Reconciliation: the pure plan, and its application through the engine."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from dormant.policy import State
from dormant.reconciler import Reconciler, plan
from dormant.runtimes import ContainerInfo, ContainerSpec, ContainerStatus
from dormant.store.records import SessionRecord

from .conftest import Rig

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def session(sid: str, state: State) -> SessionRecord:
    return SessionRecord(
        id=sid,
        tenant="t",
        user_id="u",
        template="default",
        runtime="process",
        policy_name="balanced",
        policy={},
        state=state,
        state_since=T0,
        created_at=T0,
        container_name=f"dormant-{sid}",
    )


def container(
    sid: str,
    status: ContainerStatus = ContainerStatus.RUNNING,
    *,
    instance: str = "me",
    created: datetime = T0,
) -> ContainerInfo:
    labels = {
        "dormant.managed": "true",
        "dormant.session": sid,
        "dormant.instance": instance,
        "dormant.created": created.isoformat(),
    }
    return ContainerInfo(f"dormant-{sid}", labels, status)


async def ghost_labels(rig: Rig) -> dict[str, str]:
    """dormant's labels on a container with no session, made well before the sweep."""
    return {
        "dormant.managed": "true",
        "dormant.session": "ghost",
        "dormant.deployment": await rig.engine.ensure_deployment(),
        "dormant.created": (rig.clock.now() - timedelta(hours=1)).isoformat(),
    }


def kinds(steps: list) -> list[tuple[str, str]]:  # type: ignore[type-arg]
    return sorted((s.kind, s.target) for s in steps)


def run_plan(
    containers: list[ContainerInfo],
    sessions: list[SessionRecord],
    *,
    busy: set[str] | None = None,
    live: set[str] | None = None,
) -> list:  # type: ignore[type-arg]
    live_ids = {s.id for s in sessions}
    return plan(
        {"process": containers},
        {s.id: s for s in sessions},
        [],
        busy=busy or set(),
        instance_id="me",
        live_instances=live or {"me"},
        sweep_started=T0 + timedelta(minutes=1),
        ended={c.session_id: None for c in containers if c.session_id not in live_ids},
    ).steps


def test_agreeing_views_need_nothing() -> None:
    steps = run_plan(
        [container("a"), container("b", ContainerStatus.STOPPED)],
        [session("a", State.RUNNING), session("b", State.SLEEPING)],
    )
    assert steps == []


def test_container_without_session_is_an_orphan() -> None:
    assert kinds(run_plan([container("ghost")], [])) == [("remove-orphan", "dormant-ghost")]


def test_container_of_another_live_instance_is_left_to_it() -> None:
    assert run_plan([container("x", instance="other")], [], live={"me", "other"}) == []


def test_container_of_a_dead_instance_is_ours_to_remove() -> None:
    steps = run_plan([container("x", instance="dead")], [], live={"me"})
    assert kinds(steps) == [("remove-orphan", "dormant-x")]


def test_container_created_after_the_sweep_began_is_left_alone() -> None:
    late = container("new", created=T0 + timedelta(minutes=2))
    assert run_plan([late], []) == []


def test_running_session_without_container_is_marked_vanished() -> None:
    steps = run_plan(
        [container("b", ContainerStatus.STOPPED)],
        [session("a", State.RUNNING), session("b", State.RUNNING)],
    )
    assert kinds(steps) == [("mark-vanished", "a"), ("mark-vanished", "b")]


def test_sleeping_session_with_a_running_container_is_stopped() -> None:
    steps = run_plan([container("a")], [session("a", State.SLEEPING)])
    assert kinds(steps) == [("stop-stray", "a")]


def test_interrupted_transitions_are_resumed_unless_in_flight_here() -> None:
    sessions = [
        session(s.value, s)
        for s in (State.CREATING, State.STARTING, State.STOPPING, State.DELETING)
    ]
    steps = run_plan([], sessions, busy={"stopping"})
    assert kinds(steps) == [("resume", "creating"), ("resume", "deleting"), ("resume", "starting")]


async def test_reconcile_removes_orphans_and_resumes_interrupted_sessions(rig: Rig) -> None:
    # A container with dormant's labels but no session, as after a crash before the row landed.
    ghost = ContainerSpec("dormant-ghost", "ghost", await ghost_labels(rig), None)
    await rig.runtime.create(ghost)
    await rig.runtime.start("dormant-ghost", {})
    # A session whose create was interrupted: row written, runtime never called.
    record = await rig.engine.create_session(tenant="t", user_id="u")
    await rig.engine.drain()
    stuck = await rig.store.get_session(record.id)
    assert stuck is not None
    await rig.store.update_session(stuck.replace(state=State.CREATING), stuck.version)
    rig.runtime.containers.clear()
    await rig.runtime.create(ghost)

    steps = await Reconciler(rig.engine).run()
    await rig.engine.drain()
    assert ("remove-orphan", "dormant-ghost") in kinds(steps)
    assert ("resume", record.id) in kinds(steps)
    assert "dormant-ghost" not in rig.runtime.containers
    fresh = await rig.store.get_session(record.id)
    assert fresh is not None and fresh.state is State.RUNNING
    assert rig.runtime.running() == {record.container_name}
    assert await rig.store.pending_operations() == []


async def test_dry_run_changes_nothing(rig: Rig) -> None:
    ghost = ContainerSpec("dormant-ghost", "ghost", await ghost_labels(rig), None)
    await rig.runtime.create(ghost)
    steps = await Reconciler(rig.engine).run(dry_run=True)
    assert kinds(steps) == [("remove-orphan", "dormant-ghost")]
    assert "dormant-ghost" in rig.runtime.containers


async def test_vanished_container_makes_the_session_sleep_and_wake_recreates_it(rig: Rig) -> None:
    record = await rig.engine.create_session(tenant="t", user_id="u")
    await rig.settle()
    rig.runtime.containers.clear()  # the container died behind dormant's back
    await Reconciler(rig.engine).run()
    await rig.engine.drain()
    fresh = await rig.store.get_session(record.id)
    assert fresh is not None and fresh.state is State.SLEEPING
    events = await rig.store.list_events(record.id)
    assert any(e.code == "container_exited" for e in events)
    await rig.engine.wake(record.id)
    await rig.settle()
    assert rig.runtime.running() == {record.container_name}


async def test_sleep_and_wake_accepted_before_a_crash_are_carried_out(rig: Rig) -> None:
    a = await rig.engine.create_session(tenant="t", user_id="a")
    b = await rig.engine.create_session(tenant="t", user_id="b")
    await rig.settle()
    await rig.engine.sleep(b.id)
    await rig.settle()
    # What a crash right after the 202s leaves: intents written, nothing else done.
    await rig.store.insert_operation(a.id, "stop", a.container_name, a.labels, "dead", T0)
    await rig.store.insert_operation(b.id, "start", b.container_name, b.labels, "dead", T0)
    steps = await Reconciler(rig.engine).run()
    await rig.settle()
    assert ("sleep", a.id) in kinds(steps)
    assert ("wake", b.id) in kinds(steps)
    fresh_a, fresh_b = await rig.store.get_session(a.id), await rig.store.get_session(b.id)
    assert fresh_a is not None and fresh_a.state is State.SLEEPING
    assert fresh_b is not None and fresh_b.state is State.RUNNING
    assert await rig.store.pending_operations() == []
