"""The engine and the reconciler on the docker runtime, against each real engine (Podman and
Docker Engine)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

import pytest

from dormant.clock import SystemClock
from dormant.engine import Catalog, Engine, EngineSettings, PortAllocator, Template
from dormant.engine.retry import Backoff
from dormant.errors import InvalidInput
from dormant.policy import PRESETS, ActivityKind, State
from dormant.reconciler import Reconciler
from dormant.runtimes import ContainerStatus
from dormant.runtimes.docker import DockerRuntime
from dormant.store import SqlStore
from dormant.store.migrate import upgrade_async
from dormant.store.records import InstanceRecord

from .engines import (
    CONTAINER_PORT,
    IMAGE,
    RUN_ID,
    RUN_LABEL,
    ContainerEngine,
    container_names,
    http_get,
)

pytestmark = pytest.mark.integration

WEB = Template(
    name="web",
    runtime="docker",
    image=IMAGE,
    port=CONTAINER_PORT,
    command=["sh", "-c", "echo started >> /www/starts.txt && exec serve"],
    start_timeout=20,
    stop_timeout=1,
)
TEMPLATES = {
    "web": WEB,
    "crash": replace(
        WEB, name="crash", command=["sh", "-c", "echo 'config missing: /etc/app.yml'; exit 3"]
    ),
    "ghost": replace(WEB, name="ghost", image="localhost/no-such-image:404"),
    "fat": replace(WEB, name="fat", cap_drop=("ALL",), no_new_privileges=True, read_only=True),
}


@dataclass
class Rig:
    engine: ContainerEngine
    store: SqlStore
    runtime: DockerRuntime
    reconciler: Reconciler
    on: ContainerEngine

    async def create(self, template: str = "web") -> str:
        record = await self.engine.create_session(
            tenant="t", user_id="alice", template=template, labels={RUN_LABEL: RUN_ID}
        )
        await self.engine.drain()
        return record.id

    async def state(self, sid: str) -> State:
        record = await self.store.get_session(sid)
        assert record is not None
        return record.state


async def make_rig(
    tmp_path: Path,
    on: ContainerEngine,
    host: str | None = None,
    patience: float = 0.0,
    ports: range = range(30100, 30200),
) -> Rig:
    url = f"sqlite+aiosqlite:///{tmp_path / 'dormant.db'}"
    await upgrade_async(url)
    store = SqlStore(url)
    runtime = DockerRuntime(host or on.host(), scope={RUN_LABEL: RUN_ID})
    engine = Engine(
        store,
        {"docker": runtime},
        Catalog(templates=dict(TEMPLATES), policies=dict(PRESETS), default_template="web"),
        SystemClock(),
        PortAllocator(ports, store.used_ports),
        EngineSettings(
            instance_id="it-1",
            backoff=Backoff(base=0.05, cap=0.2, attempts=3),
            outage_patience=patience,
        ),
    )
    await engine.heartbeat()
    return Rig(engine, store, runtime, Reconciler(engine, debounce=0.1, min_gap=0.1), on)


@pytest.fixture
async def rig(tmp_path: Path, engine: ContainerEngine, containers: None) -> AsyncIterator[Rig]:
    r = await make_rig(tmp_path, engine)
    try:
        yield r
    finally:
        await r.engine.drain()
        await r.runtime.close()
        await r.store.close()


async def test_a_session_serves_sleeps_wakes_with_its_files_and_is_deleted(rig: Rig) -> None:
    sid = await rig.create()
    record = await rig.engine.get(sid)
    assert record.state is State.RUNNING, record.error
    assert record.port is not None
    name = record.container_name
    assert await asyncio.to_thread(http_get, record.port, "/starts.txt") == "started\n"
    labels = rig.on.inspect(name)["Config"]["Labels"]
    for key in ("managed", "session", "user", "tenant", "template", "instance", "created"):
        assert f"dormant.{key}" in labels
    assert labels["dormant.session"] == sid and labels["dormant.user"] == "alice"

    await rig.engine.sleep(sid)
    await rig.engine.drain()
    assert await rig.state(sid) is State.SLEEPING
    info = await rig.runtime.inspect(name)
    assert info is not None and info.status is ContainerStatus.STOPPED
    assert await asyncio.to_thread(http_get, record.port) is None

    await rig.engine.wake(sid)
    await rig.engine.drain()
    assert await rig.state(sid) is State.RUNNING
    assert await asyncio.to_thread(http_get, record.port, "/starts.txt") == "started\nstarted\n"

    volumes = {m["Name"] for m in rig.on.inspect(name)["Mounts"]}
    await rig.engine.delete(sid)
    await rig.engine.drain()
    assert await rig.state(sid) is State.DELETED
    assert await rig.runtime.inspect(name) is None
    assert not volumes & rig.on.volumes()


async def test_a_container_exiting_at_start_fails_the_session_with_its_logs(rig: Rig) -> None:
    sid = await rig.create("crash")
    record = await rig.engine.get(sid)
    assert record.state is State.FAILED
    assert record.error is not None
    assert "code 3" in record.error and "config missing: /etc/app.yml" in record.error


async def test_an_unknown_image_is_refused_before_a_session_or_container_exists(
    rig: Rig,
) -> None:
    with pytest.raises(InvalidInput, match="no-such-image"):
        await rig.engine.create_session(
            tenant="t", user_id="alice", template="ghost", labels={RUN_LABEL: RUN_ID}
        )
    assert await rig.store.list_sessions() == []
    assert rig.on.managed_containers() == []


async def test_isolation_settings_of_a_template_reach_the_container(rig: Rig) -> None:
    sid = await rig.create("fat")
    record = await rig.engine.get(sid)
    # read-only root: the start script cannot append to /www, so it failed, with the reason
    assert record.state is State.FAILED
    assert record.error is not None and "Read-only file system" in record.error
    host = rig.on.inspect(record.container_name)["HostConfig"]
    assert host["ReadonlyRootfs"] is True
    assert any("no-new-privileges" in o for o in host["SecurityOpt"])


def hand_made(
    on: ContainerEngine,
    name: str,
    session: str,
    instance: str,
    created: str = "2020-01-01T00:00:00+00:00",
    deployment: str | None = None,
) -> None:
    owner = ["--label", f"dormant.deployment={deployment}"] if deployment else []
    on.cli(
        "create",
        "--name",
        name,
        *owner,
        "--label",
        "dormant.managed=true",
        "--label",
        f"dormant.session={session}",
        "--label",
        f"dormant.instance={instance}",
        "--label",
        f"dormant.created={created}",
        "--label",
        f"{RUN_LABEL}={RUN_ID}",
        IMAGE,
    )


async def test_reconcile_removes_orphans_but_not_another_live_instances_containers(
    rig: Rig,
) -> None:
    kept = await rig.create()
    now = rig.engine.clock.now()
    ours = await rig.engine.ensure_deployment()
    await rig.store.heartbeat_instance(InstanceRecord("other-live", "elsewhere", 1, now, now))
    hand_made(rig.on, f"dormant-orphan-{RUN_ID}", "no-such-session", "long-gone", deployment=ours)
    hand_made(rig.on, f"dormant-theirs-{RUN_ID}", "their-session", "other-live", deployment=ours)
    hand_made(rig.on, f"dormant-mine-{RUN_ID}", "no-such-session-2", "it-1", deployment=ours)
    # made "after the sweep began" (a session may not be visible yet): left alone too
    future = (now + timedelta(hours=1)).isoformat()
    hand_made(
        rig.on, f"dormant-young-{RUN_ID}", "young-session", "long-gone", future, deployment=ours
    )
    # another deployment's, and one from before deployment ids with no session here: never ours
    hand_made(rig.on, f"dormant-foreign-{RUN_ID}", "x", "long-gone", deployment="0123456789abcdef")
    hand_made(rig.on, f"dormant-legacy-{RUN_ID}", "y", "long-gone")

    plan = await rig.reconciler.run(dry_run=True)
    assert container_names(rig.on.managed_containers()) >= {f"dormant-orphan-{RUN_ID}"}

    steps = await rig.reconciler.run()
    removed = {s.target for s in steps if s.kind == "remove-orphan"}
    assert removed == {f"dormant-orphan-{RUN_ID}", f"dormant-mine-{RUN_ID}"}
    assert {s.target for s in plan if s.kind == "remove-orphan"} == removed
    names = container_names(rig.on.managed_containers())
    assert f"dormant-orphan-{RUN_ID}" not in names
    assert f"dormant-mine-{RUN_ID}" not in names
    assert f"dormant-theirs-{RUN_ID}" in names
    assert f"dormant-young-{RUN_ID}" in names
    assert f"dormant-foreign-{RUN_ID}" in names and f"dormant-legacy-{RUN_ID}" in names
    assert (rig.reconciler.last_plan.foreign, rig.reconciler.last_plan.unadopted) == (1, 1)
    assert f"dormant-{kept}" in names
    assert await rig.state(kept) is State.RUNNING


async def test_a_container_stopped_behind_dormants_back_marks_the_session_asleep(
    rig: Rig,
) -> None:
    sid = await rig.create()
    record = await rig.engine.get(sid)
    rig.on.cli("stop", "-t", "1", record.container_name)
    await rig.reconciler.run()
    assert await rig.state(sid) is State.SLEEPING
    events = await rig.store.list_events(sid)
    assert any(e.code == "container_exited" for e in events)
    # the next meaningful activity wakes it (wake_on_activity)
    rig.engine.record_activity(sid, ActivityKind.COMMAND)
    await rig.engine.drain()
    assert await rig.state(sid) is State.RUNNING
    assert await asyncio.to_thread(http_get, record.port or 0) is not None


async def test_an_engine_event_wakes_the_reconciler(rig: Rig) -> None:
    sid = await rig.create()
    record = await rig.engine.get(sid)
    loop = asyncio.create_task(rig.reconciler.loop(interval=3600))  # only events can wake it
    try:
        await asyncio.wait_for(rig.runtime.watching.wait(), 60)  # the event stream is connected
        rig.on.remove_containers([record.container_name])
        for _ in range(600):
            if await rig.state(sid) is State.SLEEPING:
                break
            await asyncio.sleep(0.1)
        assert await rig.state(sid) is State.SLEEPING
        assert rig.reconciler.wakeups >= 1
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop


async def test_during_an_engine_outage_operations_wait_and_nothing_is_wrongly_deleted(
    tmp_path: Path, engine: ContainerEngine, containers: None
) -> None:
    with engine.private_api(tmp_path) as service:
        rig = await make_rig(
            tmp_path, engine, service.url, patience=3600, ports=range(30200, 30300)
        )
        try:
            sleeper, doomed = await rig.create(), await rig.create()
            assert await rig.state(sleeper) is State.RUNNING
            service.kill()
            await rig.engine.sleep(sleeper)
            await rig.engine.delete(doomed)
            await asyncio.sleep(1.0)  # both operations are now waiting for the engine
            assert await rig.state(sleeper) is State.STOPPING
            assert await rig.state(doomed) is State.DELETING
            with pytest.raises(Exception, match="unreachable"):
                await rig.runtime.ping()
            service.start()
            await rig.engine.drain()
            assert await rig.state(sleeper) is State.SLEEPING
            assert await rig.state(doomed) is State.DELETED
            assert await rig.runtime.inspect(f"dormant-{doomed}") is None
            info = await rig.runtime.inspect(f"dormant-{sleeper}")
            assert info is not None and info.status is ContainerStatus.STOPPED
        finally:
            await rig.engine.drain()
            await rig.runtime.close()
            await rig.store.close()


async def test_a_delete_that_gives_up_stays_deleting_until_the_reconciler_finishes_it(
    tmp_path: Path, engine: ContainerEngine, containers: None
) -> None:
    with engine.private_api(tmp_path) as service:
        rig = await make_rig(tmp_path, engine, service.url, patience=0, ports=range(30300, 30400))
        try:
            sid = await rig.create()
            service.kill()
            await rig.engine.delete(sid)
            await rig.engine.drain()
            assert await rig.state(sid) is State.DELETING  # never deleted with a container left
            assert f"dormant-{sid}" in container_names(rig.on.managed_containers())
            service.start()
            await rig.reconciler.run()
            await rig.engine.drain()
            assert await rig.state(sid) is State.DELETED
            assert f"dormant-{sid}" not in container_names(rig.on.managed_containers())
        finally:
            await rig.engine.drain()
            await rig.runtime.close()
            await rig.store.close()
