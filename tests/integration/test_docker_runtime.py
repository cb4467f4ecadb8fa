"""The docker runtime against each real engine (Podman's Docker-compatible API and Docker
Engine): every test that needs an engine runs on both."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp import web

from dormant.errors import InvalidInput, RuntimeFailure, RuntimeUnavailable, TemporaryError
from dormant.runtimes import ContainerSpec, ContainerStatus, Resources
from dormant.runtimes.docker import DockerRuntime, ImageMissing

from .engines import (
    CONTAINER_PORT,
    IMAGE,
    RUN_ID,
    RUN_LABEL,
    ContainerEngine,
    api_get,
    container_names,
    free_port,
    http_get,
)

pytestmark = pytest.mark.integration


def spec(sid: str, **changes: object) -> ContainerSpec:
    labels = {
        "dormant.managed": "true",
        "dormant.session": sid,
        "dormant.instance": "test",
        "dormant.created": "2026-01-05T09:00:00+00:00",
        RUN_LABEL: RUN_ID,
    }
    base = ContainerSpec(
        name=f"dormant-{sid}",
        session_id=sid,
        labels=labels,
        port=free_port(),
        image=IMAGE,
        container_port=CONTAINER_PORT,
        start_timeout=20,
        stop_timeout=2,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def sid() -> str:
    import uuid

    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def runtime(docker_runtime: DockerRuntime) -> DockerRuntime:
    return docker_runtime


async def test_lifecycle_serves_sleeps_wakes_with_files_and_removes_volumes(
    runtime: DockerRuntime, engine: ContainerEngine
) -> None:
    s = spec(
        sid(),
        # Every start appends a line to a file of the container's filesystem, then serves it.
        command=["sh", "-c", "echo started >> /www/starts.txt; exec serve"],
    )
    state = await runtime.create(s)
    assert state["id"]
    info = await runtime.inspect(s.name)
    assert info is not None and info.status is ContainerStatus.STOPPED
    assert info.session_id == s.session_id
    assert info.labels["dormant.managed"] == "true"
    # the image declares VOLUME /data: the container has an anonymous volume
    volume = next(
        m["Name"] for m in engine.inspect(s.name)["Mounts"] if m["Destination"] == "/data"
    )  # type: ignore[attr-defined]
    assert volume in engine.volumes()

    state = await runtime.start(s.name, state)
    assert state["host_port"] == s.port
    assert await asyncio.to_thread(http_get, s.port) == "dormant test container\n"
    assert await asyncio.to_thread(http_get, s.port, "/starts.txt") == "started\n"
    # published on 127.0.0.1 only
    bindings = engine.inspect(s.name)["HostConfig"]["PortBindings"]  # type: ignore[index]
    assert bindings == {f"{CONTAINER_PORT}/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(s.port)}]}

    state = await runtime.stop(s.name, state)
    info = await runtime.inspect(s.name)
    assert info is not None and info.status is ContainerStatus.STOPPED
    assert await asyncio.to_thread(http_get, s.port) is None

    state = await runtime.start(s.name, state)
    assert await asyncio.to_thread(http_get, s.port, "/starts.txt") == "started\nstarted\n"

    await runtime.remove(s.name, state)
    assert await runtime.inspect(s.name) is None
    assert s.name not in container_names(engine.managed_containers())
    assert volume not in engine.volumes()


async def test_stop_and_remove_of_nothing_succeed(runtime: DockerRuntime) -> None:
    assert await runtime.stop("dormant-nothing-here", {"x": 1}) == {"x": 1}
    await runtime.remove("dormant-nothing-here", {})
    assert await runtime.inspect("dormant-nothing-here") is None


async def test_start_of_a_running_container_and_stop_of_a_stopped_one_succeed(
    runtime: DockerRuntime,
) -> None:
    s = spec(sid())
    state = await runtime.start(s.name, await runtime.create(s))
    again = await runtime.start(s.name, state)
    assert again["id"] == state["id"]
    await runtime.stop(s.name, again)
    await runtime.stop(s.name, again)
    info = await runtime.inspect(s.name)
    assert info is not None and info.status is ContainerStatus.STOPPED


async def test_start_of_a_missing_container_is_a_permanent_failure(runtime: DockerRuntime) -> None:
    with pytest.raises(RuntimeFailure, match="does not exist"):
        await runtime.start("dormant-never-created", {})


async def test_create_of_an_existing_name_for_the_same_session_adopts_it(
    runtime: DockerRuntime,
) -> None:
    s = spec(sid())
    first = await runtime.create(s)
    again = await runtime.create(s)  # made by this process: found, not made again
    assert again["id"] == first["id"]
    restarted = DockerRuntime(
        runtime.host, scope={RUN_LABEL: RUN_ID}
    )  # a restarted dormant: the create conflicts
    try:
        adopted = await restarted.create(s)
    finally:
        await restarted.close()
    assert adopted["id"] == first["id"]
    assert adopted["adopted"] is True


async def test_name_conflict_with_another_sessions_container_is_refused_and_kept(
    runtime: DockerRuntime, engine: ContainerEngine
) -> None:
    s = spec(sid())
    other = replace(s, session_id="someone-else", labels={**s.labels, "dormant.session": "x"})
    old = await runtime.create(other)
    with pytest.raises(RuntimeFailure, match="exists for session 'x'"):
        await runtime.create(s)
    info = await runtime.inspect(s.name)
    assert info is not None and info.session_id == "x"  # never removed by a create
    assert engine.inspect(s.name)["Id"] == old["id"]


async def test_name_conflict_with_a_foreign_container_is_refused(
    runtime: DockerRuntime, engine: ContainerEngine
) -> None:
    s = spec(sid())
    engine.cli("create", "--name", s.name, "--label", f"{RUN_LABEL}={RUN_ID}", IMAGE)
    with pytest.raises(RuntimeFailure, match="not managed by dormant"):
        await runtime.create(s)
    assert "Labels" in engine.inspect(s.name)["Config"]  # type: ignore[operator]  # still there


async def test_container_exiting_at_start_fails_with_the_tail_of_its_logs(
    runtime: DockerRuntime,
) -> None:
    s = spec(sid(), command=["sh", "-c", "echo 'config missing: /etc/app.yml' >&2; exit 3"])
    state = await runtime.create(s)
    with pytest.raises(RuntimeFailure, match=r"code 3.*config missing: /etc/app\.yml"):
        await runtime.start(s.name, state)


async def test_command_not_found_fails_permanently(runtime: DockerRuntime) -> None:
    s = spec(sid(), command=["/no/such/binary"])
    state = await runtime.create(s)
    with pytest.raises(RuntimeFailure) as caught:
        await runtime.start(s.name, state)
    assert not isinstance(caught.value, TemporaryError)


async def test_container_that_never_listens_times_out_and_is_stopped(
    runtime: DockerRuntime,
) -> None:
    s = spec(sid(), command=["sh", "-c", "trap 'exit 0' TERM; echo waiting; sleep 600 & wait"])
    state = await runtime.create(replace(s, start_timeout=1))
    with pytest.raises(RuntimeFailure, match=r"did not answer.*waiting"):
        await runtime.start(s.name, state)
    info = await runtime.inspect(s.name)
    assert info is not None and info.status is ContainerStatus.STOPPED


async def test_a_host_port_another_container_holds_is_a_temporary_failure(
    runtime: DockerRuntime, engine: ContainerEngine
) -> None:
    """Docker Engine says "port is already allocated", Podman "address already in use": both
    are worth a retry (the other container may be an orphan the reconciler removes)."""
    s = spec(sid())
    holder = f"dormant-holder-{RUN_ID}"
    engine.cli(
        "run", "-d", "--name", holder, "--label", f"{RUN_LABEL}={RUN_ID}",
        "-p", f"127.0.0.1:{s.port}:{CONTAINER_PORT}", IMAGE,
    )  # fmt: skip
    state = await runtime.create(s)
    with pytest.raises(TemporaryError):
        await runtime.start(s.name, state)
    engine.remove_containers([holder])
    state = await runtime.start(s.name, state)  # the port is free again: it serves
    assert await asyncio.to_thread(http_get, s.port) is not None
    await runtime.remove(s.name, state)


async def test_unknown_image_is_refused_before_anything_is_made(runtime: DockerRuntime) -> None:
    s = spec(sid(), image="localhost/no-such-image:1")
    with pytest.raises(ImageMissing, match="no-such-image"):
        await runtime.check(s)
    with pytest.raises(InvalidInput, match="not on the container engine"):
        await runtime.create(s)
    assert await runtime.inspect(s.name) is None


async def test_resources_and_isolation_reach_the_engine(
    runtime: DockerRuntime, engine: ContainerEngine
) -> None:
    s = spec(
        sid(),
        resources=Resources(cpus=0.5, memory="64m", pids_limit=64),
        read_only=True,
        tmpfs={"/tmp": "rw,size=16m"},
        cap_drop=("ALL",),
        no_new_privileges=True,
        command=[
            "sh",
            "-c",
            "touch /tmp/ok && ! touch /root-is-writable 2>/dev/null && exec serve",
        ],
    )
    state = await runtime.start(s.name, await runtime.create(s))
    assert await asyncio.to_thread(http_get, s.port) is not None  # it started: /tmp writable
    host = engine.inspect(s.name)["HostConfig"]
    assert isinstance(host, dict)
    assert host["Memory"] == 64 * 1024**2
    assert host["NanoCpus"] == 500_000_000
    assert host["PidsLimit"] == 64
    assert host["ReadonlyRootfs"] is True
    assert "/tmp" in (host.get("Tmpfs") or {})
    assert any("no-new-privileges" in opt for opt in host["SecurityOpt"])
    # podman reports the dropped capabilities one by one
    assert host["CapDrop"] and all(c.startswith("CAP_") or c == "ALL" for c in host["CapDrop"])
    await runtime.stop(s.name, state)


async def test_network_mode_none_starts_without_a_published_port(
    runtime: DockerRuntime, engine: ContainerEngine
) -> None:
    s = spec(sid(), network_mode="none")
    state = await runtime.start(s.name, await runtime.create(s))
    info = await runtime.inspect(s.name)
    assert info is not None and info.status is ContainerStatus.RUNNING
    assert engine.inspect(s.name)["HostConfig"]["NetworkMode"] == "none"  # type: ignore[index]
    await runtime.stop(s.name, state)


def http_get_at(host: str, port: int) -> str | None:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{host}:{port}/", timeout=3) as response:
            return str(response.read().decode())
    except OSError:
        return None


async def test_a_session_on_a_network_has_no_host_port_and_serves_at_its_address(
    runtime: DockerRuntime, engine: ContainerEngine
) -> None:
    network = f"dormant-test-{RUN_ID}"
    existed = engine.network_exists(network)
    first, second = spec(sid(), port=None, network=network), spec(sid(), port=None, network=network)
    try:
        state = await runtime.create(first)  # the network is made on demand
        made = engine.inspect(network, "network")
        # shared: not dormant's (Podman says "labels", Docker "Labels")
        assert "dormant.managed" not in (made.get("labels") or made.get("Labels") or {})
        state = await runtime.start(first.name, state)
        raw = engine.inspect(first.name)
        address = raw["NetworkSettings"]["Networks"][network]["IPAddress"]  # type: ignore[index]
        assert address and address != "127.0.0.1"
        assert state["endpoint"] == {"host": address, "port": CONTAINER_PORT}
        bindings = raw["HostConfig"].get("PortBindings") or {}  # type: ignore[attr-defined]
        assert not any(binds for binds in bindings.values()), bindings  # nothing published
        assert http_get_at(address, CONTAINER_PORT) is not None  # reachable from the host
        info = await runtime.inspect(first.name)
        assert info is not None and info.detail["port"] is None

        # slept and woken: served again at its address on the network (perhaps a new one)
        state = await runtime.start(first.name, await runtime.stop(first.name, state))
        woken = state["endpoint"]
        assert woken["port"] == CONTAINER_PORT
        assert http_get_at(woken["host"], woken["port"]) is not None

        # a second session joins the existing network, with an address of its own
        other = await runtime.start(second.name, await runtime.create(second))
        assert other["endpoint"]["host"] != woken["host"]
        assert http_get_at(other["endpoint"]["host"], CONTAINER_PORT) is not None
        # and a restarted dormant (no cached state) finds the address by inspecting
        fresh = DockerRuntime(runtime.host, scope=runtime.scope)
        try:
            again = await fresh.start(second.name, {"network": network})
            assert again["endpoint"] == other["endpoint"]
        finally:
            await fresh.close()
    finally:
        await runtime.remove(first.name, {})
        await runtime.remove(second.name, {})
        if not existed:
            engine.remove_network(network)
    assert not engine.network_exists(network) or existed


async def test_concurrent_first_sessions_on_a_network_make_it_once(
    engine: ContainerEngine, containers: None
) -> None:
    """Docker Engine 20.10 makes a second network of the same name unless told not to (then
    every use of the name is "ambiguous"); Podman refuses the duplicate. Several dormant
    processes making the first sessions on a new network at once must end with one network."""
    network = f"dormant-race-{RUN_ID}"
    runtimes = [DockerRuntime(engine.host(), scope={RUN_LABEL: RUN_ID}) for _ in range(4)]
    specs = [spec(sid(), port=None, network=network) for _ in runtimes]
    try:
        states = await asyncio.gather(
            *(rt.create(s) for rt, s in zip(runtimes, specs, strict=True))
        )
        assert all(state["made"] for state in states)
        named = api_get(engine.host(), "/networks", filters={"name": [network]})
        assert [n["Name"] for n in named if n["Name"] == network] == [network]
        started = await runtimes[0].start(specs[0].name, states[0])
        assert started["endpoint"]["port"] == CONTAINER_PORT
    finally:
        for rt, s in zip(runtimes, specs, strict=True):
            await rt.remove(s.name, {})
            await rt.close()
        # every one of that name, should there be several (then the name is ambiguous)
        named = api_get(engine.host(), "/networks", filters={"name": [network]})
        for found in named:
            if found["Name"] == network:
                engine.remove_network(str(found["Id"]))
    assert not engine.network_exists(network)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"network": "dormant-x", "port": 8000}, "no host port"),
        ({"network": "host", "port": None}, "network"),
        ({"network": "bad name!", "port": None}, "network"),
        ({"network": "dormant-x", "port": None, "network_mode": "none"}, "exclude"),
        ({"resources": Resources(memory="-512m")}, "memory"),
        ({"resources": Resources(memory="1k")}, "memory"),
        ({"resources": Resources(cpus=0)}, "cpus"),
        ({"resources": Resources(cpus=10_000)}, "cpus"),
        ({"resources": Resources(pids_limit=0)}, "pids_limit"),
        ({"port": 80}, "host port"),
        ({"port": None}, "host port"),
        ({"container_port": 0}, "container port"),
        ({"container_port": None}, "port"),
        ({"image": None}, "image"),
        ({"tmpfs": {"relative": ""}}, "tmpfs"),
        ({"cap_drop": ("rm -rf",)}, "cap_drop"),
        ({"network_mode": "container:other"}, "network_mode"),
        ({"stop_timeout": -1.0}, "stop_timeout"),
        ({"env": {"BAD NAME": "x"}}, "environment"),
    ],
)
async def test_bad_values_are_refused_before_the_engine_is_called(
    changes: dict[str, object], message: str
) -> None:
    # An unreachable engine: if the runtime called it, the error would be RuntimeUnavailable.
    rt = DockerRuntime("unix:///nonexistent/dormant-test.sock")
    try:
        with pytest.raises(InvalidInput, match=message):
            await rt.create(spec(sid(), **changes))
        with pytest.raises(InvalidInput, match=message):
            await rt.check(spec(sid(), **changes))
    finally:
        await rt.close()


async def test_unreachable_engine_is_a_temporary_error() -> None:
    rt = DockerRuntime("unix:///nonexistent/dormant-test.sock")
    try:
        with pytest.raises(RuntimeUnavailable):
            await rt.ping()
        with pytest.raises(RuntimeUnavailable):
            await rt.create(spec(sid()))
        with pytest.raises(RuntimeUnavailable):
            await rt.stop("dormant-x", {})
        with pytest.raises(RuntimeUnavailable):
            await rt.list_managed()
        with pytest.raises(RuntimeUnavailable):
            await rt.watch(lambda _: None)
    finally:
        await rt.close()


async def test_list_managed_sees_every_labelled_container(
    runtime: DockerRuntime, engine: ContainerEngine
) -> None:
    a, b = spec(sid()), spec(sid())
    await runtime.create(a)
    await runtime.start(b.name, await runtime.create(b))
    engine.cli(
        "create", "--name", f"unlabelled-{RUN_ID}", "--label", f"{RUN_LABEL}={RUN_ID}", IMAGE
    )
    other = f"dormant-other-scope-{RUN_ID}"
    engine.cli("create", "--name", other, "--label", "dormant.managed=true", IMAGE)
    try:
        found = {i.name: i for i in await runtime.list_managed()}
    finally:
        engine.remove_containers([other])
    assert other not in found  # managed, but outside this runtime's scope
    assert found[a.name].labels[RUN_LABEL] == RUN_ID
    assert found[a.name].status is ContainerStatus.STOPPED
    assert found[b.name].status is ContainerStatus.RUNNING
    assert found[b.name].session_id == b.session_id
    assert f"unlabelled-{RUN_ID}" not in found
    await runtime.stop(b.name, {"stop_timeout": 1})


async def test_watch_reports_events_of_managed_containers(runtime: DockerRuntime) -> None:
    seen: list[str] = []
    arrived = asyncio.Event()
    s = spec(sid())

    def notify(what: str) -> None:
        seen.append(what)
        if s.name in what:
            arrived.set()

    watcher = asyncio.create_task(runtime.watch(notify))
    try:
        await asyncio.wait_for(runtime.watching.wait(), 60)  # connected before the event
        await runtime.create(s)
        await asyncio.wait_for(arrived.wait(), 30)
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    assert any(w.startswith("create") and s.name in w for w in seen), seen


async def test_engine_outage_and_recovery(
    engine: ContainerEngine, containers: None, tmp_path: Path
) -> None:
    """A killed API service: calls fail as temporary; after a restart they work, and the
    containers it ran are still there (Podman's conmon, Docker's containerd shims keep them)."""
    with engine.private_api(tmp_path) as service:
        rt = DockerRuntime(service.url, scope={RUN_LABEL: RUN_ID})
        try:
            s = spec(sid())
            state = await rt.start(s.name, await rt.create(s))
            service.kill()
            with pytest.raises(RuntimeUnavailable):
                await rt.ping()
            with pytest.raises(TemporaryError):
                await rt.stop(s.name, state)
            assert await asyncio.to_thread(http_get, s.port) is not None
            service.start()
            await rt.ping()
            info = await rt.inspect(s.name)
            assert info is not None and info.status is ContainerStatus.RUNNING
            await rt.remove(s.name, state)
            assert await rt.inspect(s.name) is None
        finally:
            await rt.close()


async def test_an_engine_that_refuses_api_1_41_is_spoken_to_in_one_it_serves(
    tmp_path: Path,
) -> None:
    """Docker Engine 29 refuses API 1.41 (its minimum is 1.44); neither engine here does, so a
    stand-in answers as Docker 29 does: 400 below 1.44, its range on the unversioned /version."""
    asked: list[str] = []

    async def containers(request: web.Request) -> web.Response:
        version = request.match_info["version"]
        asked.append(version)
        if tuple(int(p) for p in version.split(".")) < (1, 44):
            message = (
                f"client version {version} is too old. Minimum supported API version is 1.44, "
                "please upgrade your client to a newer version"
            )
            return web.json_response({"message": message}, status=400)
        return web.json_response([])

    async def version(request: web.Request) -> web.Response:
        asked.append("version")
        return web.json_response({"ApiVersion": "1.52", "MinAPIVersion": "1.44"})

    app = web.Application()
    app.router.add_get("/v{version}/containers/json", containers)
    app.router.add_get("/version", version)
    runner = web.AppRunner(app)
    await runner.setup()
    socket_path = tmp_path / "docker29.sock"
    await web.UnixSite(runner, str(socket_path)).start()
    rt = DockerRuntime(f"unix://{socket_path}", scope={RUN_LABEL: RUN_ID})
    try:
        assert await rt.list_managed() == []
        assert await rt.list_managed() == []  # negotiated once, then kept
    finally:
        await rt.close()
        await runner.cleanup()
    assert asked == ["1.41", "version", "1.44", "1.44"]
    assert rt.api_version == "1.44"
