"""Host ports follow the session's runs: released while it sleeps or has failed, taken again at
wake, and the endpoint a runtime reports is where the session serves (``endpoint_of``)."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from sqlalchemy import select

from dormant.engine import (
    Catalog,
    Engine,
    EngineSettings,
    PortAllocator,
    Template,
    default_catalog,
    endpoint_of,
)
from dormant.engine.outcome import OperationStatus
from dormant.engine.retry import Backoff
from dormant.errors import CapacityExhausted, RuntimeFailure
from dormant.policy import State
from dormant.runtimes import ContainerStatus, Endpoint
from dormant.store.records import SessionRecord
from dormant.store.schema import operations
from dormant.testing import FakeRuntime

from .conftest import Rig

LOW = 31000


def engine_on(
    rig: Rig,
    ports: int,
    *,
    runtime: FakeRuntime | None = None,
    catalog: Catalog | None = None,
    instance: str = "test-1",
) -> Engine:
    return Engine(
        rig.store,
        {"process": runtime or rig.runtime},
        catalog or default_catalog(),
        rig.clock,
        PortAllocator(range(LOW, LOW + ports), rig.store.used_ports),
        EngineSettings(instance_id=instance, backoff=Backoff(base=0.001, cap=0.005, attempts=4)),
    )


async def record_of(rig: Rig, sid: str) -> SessionRecord:
    record = await rig.store.get_session(sid)
    assert record is not None
    return record


async def create(engine: Engine, user: str = "u") -> SessionRecord:
    record = await engine.create_session(tenant="t", user_id=user)
    outcome = await engine.wait_for(record.id, State.RUNNING, 5)
    assert outcome is not None and outcome.ok, outcome
    return record


async def sleep(engine: Engine, sid: str) -> None:
    await engine.sleep(sid)
    outcome = await engine.wait_for(sid, State.SLEEPING, 5)
    assert outcome is not None and outcome.ok, outcome


async def wake(engine: Engine, sid: str) -> Any:
    await engine.wake(sid)
    outcome = await engine.wait_for(sid, State.RUNNING, 5)
    await engine.drain()
    return outcome


async def test_sleeping_releases_the_port_for_a_new_session(rig: Rig) -> None:
    engine = engine_on(rig, 1)
    a = await create(engine, "a")
    assert a.port == LOW
    running = await record_of(rig, a.id)
    assert endpoint_of(running) == Endpoint("127.0.0.1", LOW)
    assert running.runtime_state["endpoint"] == {"host": "127.0.0.1", "port": LOW}
    with pytest.raises(CapacityExhausted):
        await engine.create_session(tenant="t", user_id="b")

    await sleep(engine, a.id)
    asleep = await record_of(rig, a.id)
    assert asleep.port is None
    assert "endpoint" not in asleep.runtime_state and endpoint_of(asleep) is None
    assert await rig.store.used_ports() == set()

    b = await create(engine, "b")  # the one port, taken by a new session
    assert b.port == LOW
    assert rig.runtime.containers[b.container_name].port == LOW
    await engine.drain()


async def test_wake_takes_a_free_port_and_the_endpoint_follows(rig: Rig) -> None:
    engine = engine_on(rig, 2)
    a = await create(engine, "a")
    await sleep(engine, a.id)
    b = await create(engine, "b")  # may take a's old port
    assert b.port is not None
    outcome = await wake(engine, a.id)
    assert outcome is not None and outcome.ok, outcome
    woken = await record_of(rig, a.id)
    assert woken.state is State.RUNNING
    assert woken.port is not None and woken.port != b.port
    assert woken.port in range(LOW, LOW + 2)
    assert endpoint_of(woken) == Endpoint("127.0.0.1", woken.port)
    # the runtime was started on that port (the fake remembers what it was given)
    assert rig.runtime.containers[a.container_name].port == woken.port
    assert "port" not in woken.runtime_state  # the record's port is the truth
    events = [e.to_state for e in await rig.store.list_events(a.id) if e.type == "transition"]
    assert events[-2:] == ["starting", "running"]


async def test_two_ports_carry_five_sessions_with_at_most_two_running(rig: Rig) -> None:
    engine = engine_on(rig, 2)
    sids: list[str] = []
    for batch in ((0, 1), (2, 3), (4,)):
        made = [await create(engine, f"u{i}") for i in batch]
        sids += [r.id for r in made]
        for record in made:
            await sleep(engine, record.id)
    assert len(sids) == 5
    assert [(await record_of(rig, sid)).state for sid in sids] == [State.SLEEPING] * 5

    most = 0
    for i, sid in enumerate(sids):
        outcome = await wake(engine, sid)
        assert outcome is not None and outcome.ok, outcome
        running = [r for r in [await record_of(rig, s) for s in sids] if r.state is State.RUNNING]
        most = max(most, len(running))
        ports = [r.port for r in running if r.port is not None]
        assert len(set(ports)) == len(ports) == len(running)
        assert {endpoint_of(r) for r in running} == {Endpoint("127.0.0.1", p) for p in ports}
        if i >= 1:  # keep two running: the one before sleeps
            await sleep(engine, sids[i - 1])
    assert most == 2
    woken = {sid for sid in sids if rig.runtime.containers[f"dormant-{sid}"].starts >= 2}
    assert woken == set(sids)  # each woken once, after its first run
    await engine.drain()


async def test_a_wake_with_no_free_port_is_refused_and_the_session_stays_asleep(
    rig: Rig,
) -> None:
    engine = engine_on(rig, 1)
    a = await create(engine, "a")
    await sleep(engine, a.id)
    b = await create(engine, "b")
    outcome = await wake(engine, a.id)
    assert outcome is not None and not outcome.ok
    assert outcome.state is State.SLEEPING
    assert outcome.error is not None and "no free port" in outcome.error
    asleep = await record_of(rig, a.id)
    assert asleep.state is State.SLEEPING and asleep.port is None
    events = await rig.store.list_events(a.id)
    assert events[-1].code == "no_port" and "no free port" in events[-1].reason
    async with rig.store.engine.connect() as conn:
        rows = (
            await conn.execute(
                select(operations.c.status, operations.c.error)
                .where(operations.c.session_id == a.id)
                .order_by(operations.c.id)
            )
        ).all()
    assert rows[-1].status == OperationStatus.FAILED.value and "no free port" in rows[-1].error
    # once the port is free, the wake works
    await sleep(engine, b.id)
    again = await wake(engine, a.id)
    assert again is not None and again.ok
    assert (await record_of(rig, a.id)).port == LOW


async def test_a_port_taken_by_another_instance_meanwhile_is_given_up_for_another(
    rig: Rig,
) -> None:
    engine = engine_on(rig, 3)
    a = await create(engine, "a")
    await sleep(engine, a.id)
    b = await create(engine, "b")
    assert b.port is not None
    # the allocator hands out b's port first, as another instance's allocator could have
    real = engine.ports.allocate
    handed: list[int] = []

    async def racing() -> int:
        port = b.port if not handed else await real()
        assert port is not None
        handed.append(port)
        return port

    engine.ports.allocate = racing  # type: ignore[method-assign]
    outcome = await wake(engine, a.id)
    assert outcome is not None and outcome.ok, outcome
    woken = await record_of(rig, a.id)
    assert handed[0] == b.port and len(handed) == 2
    assert woken.port == handed[1] and woken.port != b.port
    assert (await record_of(rig, b.id)).port == b.port


async def test_a_failed_session_releases_its_port_and_a_wake_takes_one(rig: Rig) -> None:
    engine = engine_on(rig, 2)
    rig.runtime.fail("start", RuntimeFailure("image has no shell"))
    record = await engine.create_session(tenant="t", user_id="u")
    await engine.wait_for(record.id, State.RUNNING, 5)
    await engine.drain()
    failed = await record_of(rig, record.id)
    assert failed.state is State.FAILED and failed.port is None
    assert await rig.store.used_ports() == set()
    await engine.wake(record.id)  # (a wait would answer at once: it is failed now)
    await engine.drain()
    running = await record_of(rig, record.id)
    assert running.state is State.RUNNING
    assert running.port is not None and endpoint_of(running) == Endpoint("127.0.0.1", running.port)


async def test_a_session_whose_container_cannot_be_stopped_keeps_its_port(rig: Rig) -> None:
    engine = engine_on(rig, 2)
    record = await create(engine)
    rig.runtime.fail("stop", RuntimeFailure("stuck in D state"), times=10)
    await engine.sleep(record.id)
    await engine.wait_for(record.id, State.SLEEPING, 5)
    await engine.drain()
    failed = await record_of(rig, record.id)
    assert failed.state is State.FAILED
    assert failed.port == record.port  # its process may still listen there


async def test_a_failed_session_found_running_is_repaired_on_a_port_it_holds(rig: Rig) -> None:
    engine = engine_on(rig, 2)
    record = await create(engine)
    rig.runtime.fail("start", RuntimeFailure("boom"))
    await sleep(engine, record.id)
    await wake(engine, record.id)
    failed = await record_of(rig, record.id)
    assert failed.state is State.FAILED and failed.port is None
    rig.runtime.containers[record.container_name].status = ContainerStatus.RUNNING
    assert await engine.repair_failed(record.id) is True
    repaired = await record_of(rig, record.id)
    assert repaired.state is State.RUNNING and repaired.port is not None
    assert rig.runtime.containers[record.container_name].port == repaired.port
    assert endpoint_of(repaired) == Endpoint("127.0.0.1", repaired.port)


async def test_a_container_that_vanished_releases_its_port(rig: Rig) -> None:
    engine = engine_on(rig, 2)
    record = await create(engine)
    rig.runtime.containers.pop(record.container_name)
    assert await engine.mark_vanished(record.id, "gone") is True
    asleep = await record_of(rig, record.id)
    assert asleep.state is State.SLEEPING and asleep.port is None


class PublishingRuntime(FakeRuntime):
    """Like the docker runtime: the host port is bound when the container is made."""

    ports_follow_start: ClassVar[bool] = False


async def test_a_runtime_that_binds_ports_at_create_keeps_them_while_asleep(rig: Rig) -> None:
    runtime = PublishingRuntime()
    engine = engine_on(rig, 2, runtime=runtime)
    record = await create(engine)
    await sleep(engine, record.id)
    asleep = await record_of(rig, record.id)
    assert asleep.port == record.port
    outcome = await wake(engine, record.id)
    assert outcome is not None and outcome.ok
    assert (await record_of(rig, record.id)).port == record.port


async def test_a_template_without_a_host_port_allocates_none(rig: Rig) -> None:
    base = default_catalog()
    catalog = Catalog(
        templates={**base.templates, "net": Template(name="net", network="sessions", port=8080)},
        policies=base.policies,
    )
    engine = engine_on(rig, 1, catalog=catalog)
    made = [
        await engine.create_session(tenant="t", user_id=f"u{i}", template="net") for i in (1, 2)
    ]
    for record in made:
        outcome = await engine.wait_for(record.id, State.RUNNING, 5)
        assert outcome is not None and outcome.ok
        running = await record_of(rig, record.id)
        assert running.port is None
        assert endpoint_of(running) == Endpoint(f"{record.container_name}.fake.invalid", 8080)
        assert rig.runtime.containers[record.container_name].spec.network == "sessions"
    assert await rig.store.used_ports() == set()
    await sleep(engine, made[0].id)
    assert (await wake(engine, made[0].id)).ok
    assert (await record_of(rig, made[0].id)).port is None


def test_endpoint_of_records_from_before_endpoints_were_reported() -> None:
    from datetime import UTC, datetime

    now = datetime(2026, 1, 5, tzinfo=UTC)
    old = SessionRecord(
        id="s1",
        tenant="t",
        user_id="u",
        template="default",
        runtime="process",
        policy_name="balanced",
        policy={},
        state=State.RUNNING,
        state_since=now,
        created_at=now,
        container_name="dormant-s1",
        port=8123,
        runtime_state={"pid": 12},
    )
    assert endpoint_of(old) == Endpoint("127.0.0.1", 8123)
    assert endpoint_of(old.replace(port=None)) is None
    reported = old.replace(runtime_state={"endpoint": {"host": "10.88.0.7", "port": 8080}})
    assert endpoint_of(reported) == Endpoint("10.88.0.7", 8080)
    for bad in ({"host": "", "port": 1}, {"host": "h", "port": "80"}, {"host": "h", "port": 0}):
        assert endpoint_of(old.replace(runtime_state={"endpoint": bad})) == Endpoint(
            "127.0.0.1", 8123
        )


def test_only_host_port_runtimes_are_given_a_host_port() -> None:
    from dormant.engine.templates import Template
    from dormant.runtimes.docker import DockerRuntime
    from dormant.runtimes.kubernetes import KubernetesRuntime
    from dormant.runtimes.process import ProcessRuntime
    from dormant.runtimes.swarm import SwarmRuntime

    classes = {
        "process": ProcessRuntime,
        "docker": DockerRuntime,
        "swarm": SwarmRuntime,
        "kubernetes": KubernetesRuntime,
    }
    given = {
        (runtime, network): Template("t", runtime=runtime, network=network).needs_host_port(cls)
        for runtime, cls in classes.items()
        for network in (None, "sessions")
    }
    # a pod serves on its own address; a container on a network on its address there
    assert [k for k, v in given.items() if v] == [
        ("process", None),
        ("docker", None),
        ("swarm", None),
    ]
