"""Volumes, binds, user, workdir and shm_size of the docker runtime on each real engine (Podman
and Docker Engine)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from dormant.errors import RuntimeFailure
from dormant.runtimes import BindMount, ContainerSpec, VolumeMount
from dormant.runtimes.docker import DockerRuntime

from .engines import CONTAINER_PORT, IMAGE, RUN_ID, RUN_LABEL, ContainerEngine, free_port, http_get

pytestmark = pytest.mark.integration

DEPLOYMENT = f"dep-{RUN_ID}"


def owner_labels(user: str, retain: str, session: str | None = None) -> dict[str, str]:
    labels = {
        "dormant.managed": "true",
        "dormant.deployment": DEPLOYMENT,
        "dormant.tenant": "acme",
        "dormant.user": user,
        "dormant.template": "ide",
        "dormant.retain": retain,
    }
    if session is not None:
        labels["dormant.session"] = session
    return labels


def spec(session: str, **changes: object) -> ContainerSpec:
    base = ContainerSpec(
        name=f"dormant-{session}",
        session_id=session,
        labels={"dormant.managed": "true", "dormant.session": session, RUN_LABEL: RUN_ID},
        port=free_port(),
        image=IMAGE,
        container_port=CONTAINER_PORT,
        start_timeout=20,
        stop_timeout=1,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def new_id() -> str:
    return f"v{uuid.uuid4().hex[:12]}"


@pytest.fixture
def volume_names(engine: ContainerEngine) -> Iterator[list[str]]:
    """Names a test may make: removed afterwards whatever happened, and checked gone."""
    names: list[str] = []
    try:
        yield names
    finally:
        engine.purge_run()
        engine.remove_volumes(names)
        assert not set(names) & engine.volumes()


@pytest.fixture
def runtime(docker_runtime: DockerRuntime) -> DockerRuntime:
    return docker_runtime


def inspect(engine: ContainerEngine, kind: str, name: str) -> dict[str, object]:
    return engine.inspect(name, kind)


def exec_sh(engine: ContainerEngine, container: str, script: str) -> str:
    return engine.cli("exec", container, "sh", "-c", script).stdout


async def test_volumes_are_made_labelled_mounted_kept_or_removed_by_their_rule(
    runtime: DockerRuntime, engine: ContainerEngine, volume_names: list[str], tmp_path: Path
) -> None:
    first, second = new_id(), new_id()
    home = f"home-acme-{first}"  # one user's volume, across both sessions
    scratch = [f"scratch-{first}", f"scratch-{second}"]
    volume_names.extend([home, *scratch])
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "motd").write_text("hello from the host\n")

    def session_spec(session: str, scratch_name: str) -> ContainerSpec:
        return spec(
            session,
            volumes=(
                VolumeMount(home, "/home/dev", "user", owner_labels(first, "user")),
                VolumeMount(
                    scratch_name, "/scratch", "session", owner_labels(first, "session", session)
                ),
            ),
            binds=(BindMount(str(shared), "/shared"),),
            workdir="/home/dev",
            shm_size="96m",
        )

    s1 = session_spec(first, scratch[0])
    state = await runtime.create(s1)
    assert state["made"] is True and state["session_volumes"] == [scratch[0]]
    for name, retain in [(home, "user"), (scratch[0], "session")]:
        labels = inspect(engine, "volume", name)["Labels"]
        assert labels == {**owner_labels(first, retain, first if retain == "session" else None),
                          RUN_LABEL: RUN_ID}  # fmt: skip
    listed = {v.name: v for v in await runtime.list_volumes()}
    assert {home, scratch[0]} <= set(listed) and listed[home].retain == "user"
    assert listed[home].created_at is not None

    container = inspect(engine, "container", s1.name)
    mounts = {m["Destination"]: m for m in container["Mounts"]}  # type: ignore[attr-defined]
    assert mounts["/home/dev"]["Name"] == home and mounts["/scratch"]["Name"] == scratch[0]
    assert mounts["/shared"]["Source"] == str(shared) and mounts["/shared"]["RW"] is False
    assert container["Config"]["WorkingDir"] == "/home/dev"  # type: ignore[index]
    assert container["HostConfig"]["ShmSize"] == 96 * 1024**2  # type: ignore[index]

    state = await runtime.start(s1.name, {**state, "port": s1.port})
    assert await asyncio.to_thread(http_get, s1.port) is not None
    exec_sh(engine, s1.name, "echo kept > /home/dev/notes.txt; echo gone > /scratch/tmp.txt")
    assert exec_sh(engine, s1.name, "pwd; cat /shared/motd") == "/home/dev\nhello from the host\n"
    refused = engine.cli("exec", s1.name, "sh", "-c", "echo x > /shared/motd", check=False)
    assert refused.returncode != 0  # read-only by default
    # in use by a container: not removed
    assert await runtime.remove_volume(home) is False

    await runtime.remove(s1.name, state)
    assert home in engine.volumes() and scratch[0] not in engine.volumes()

    s2 = session_spec(second, scratch[1])
    state2 = await runtime.start(s2.name, {**await runtime.create(s2), "port": s2.port})
    assert exec_sh(engine, s2.name, "cat /home/dev/notes.txt; ls /scratch") == "kept\n"
    await runtime.remove(s2.name, state2)
    assert await runtime.remove_volume(home) is True
    assert await runtime.remove_volume(home) is True  # not found is success
    assert not set(volume_names) & engine.volumes()


async def test_a_volume_of_another_owner_is_refused_before_a_container_is_made(
    runtime: DockerRuntime, engine: ContainerEngine, volume_names: list[str]
) -> None:
    session = new_id()
    name = f"home-acme-{session}"
    volume_names.append(name)
    engine.cli("volume", "create", "--label", f"{RUN_LABEL}={RUN_ID}", name)  # hand-made
    s = spec(session, volumes=(VolumeMount(name, "/home/dev", "user", owner_labels("u", "user")),))
    with pytest.raises(RuntimeFailure, match=f"volume {name} exists and is not managed"):
        await runtime.create(s)
    assert await runtime.inspect(s.name) is None
    engine.cli("volume", "rm", name)
    # another user's (e.g. another tenant whose name looked the same): refused too
    engine.cli(
        "volume",
        "create",
        *(f"--label={k}={v}" for k, v in owner_labels("someone-else", "user").items()),
        name,
    )
    with pytest.raises(RuntimeFailure, match="belongs to acme/someone-else"):
        await runtime.create(s)
    assert await runtime.inspect(s.name) is None


async def test_user_is_the_containers_user_and_create_says_when_it_made_one(
    runtime: DockerRuntime, engine: ContainerEngine
) -> None:
    s = spec(new_id(), user="1234:1234")
    state = await runtime.create(s)
    assert state["made"] is True
    assert inspect(engine, "container", s.name)["Config"]["User"] == "1234:1234"  # type: ignore[index]
    assert "made" not in await runtime.create(s)  # found: not made again
    restarted = DockerRuntime(runtime.host, scope={RUN_LABEL: RUN_ID})
    try:
        assert "made" not in await restarted.create(s)  # adopted after a name conflict
    finally:
        await restarted.close()
    state = await runtime.start(s.name, {**state, "port": s.port})
    assert exec_sh(engine, s.name, "id -u").strip() == "1234"
    await runtime.remove(s.name, state)
