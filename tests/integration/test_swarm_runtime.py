"""What is Swarm's own in the swarm runtime, on the project's single-node Swarm (Docker Engine):
replicas 1/0 as ``docker service inspect`` shows them, labels on the service and on its task's
container, resources and isolation in the service spec and on the container, volumes pinned to
their node and a user's volume outliving the session, a failing task reported with its output,
refusals of what Swarm cannot do, and ``watch`` seeing a service removed behind dormant's back.

This run's services and volumes are removed after every test, also on failure, and checked gone.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace

import pytest

from dormant.errors import InvalidInput, RuntimeFailure
from dormant.runtimes import ContainerSpec, ContainerStatus, Endpoint, Resources, VolumeMount
from dormant.runtimes.docker import DockerRuntime
from dormant.runtimes.swarm import SwarmRuntime

from .engines import CONTAINER_PORT, DOCKER, IMAGE, RUN_ID, RUN_LABEL, free_port, http_get
from .swarm_support import (
    api_get,
    replicas,
    run_volumes,
    service,
    swarm_cleanup,
    task_containers,
    wait_for,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def swarm() -> Iterator[str]:
    yield from swarm_cleanup()


@pytest.fixture
async def runtime(swarm: str) -> AsyncIterator[SwarmRuntime]:
    rt = SwarmRuntime(swarm, scope={RUN_LABEL: RUN_ID})
    try:
        yield rt
    finally:
        await rt.close()


def spec(**changes: object) -> ContainerSpec:
    session = f"w{uuid.uuid4().hex[:12]}"
    base = ContainerSpec(
        name=f"dormant-{session}",
        session_id=session,
        labels={
            "dormant.managed": "true",
            "dormant.session": session,
            "dormant.user": "alice",
            "dormant.tenant": "acme",
            "dormant.deployment": f"dep-{RUN_ID}",
        },
        port=free_port(),
        image=IMAGE,
        container_port=CONTAINER_PORT,
        start_timeout=30,
        stop_timeout=1,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def volume(name: str, target: str, retain: str, session: str | None = None) -> VolumeMount:
    labels = {
        "dormant.managed": "true",
        "dormant.deployment": f"dep-{RUN_ID}",
        "dormant.tenant": "acme",
        "dormant.user": "alice",
        "dormant.retain": retain,
    }
    if session is not None:
        labels["dormant.session"] = session
    return VolumeMount(name, target, retain, labels)


async def test_a_session_is_a_service_of_one_replica_or_none_with_its_labels_and_limits(
    runtime: SwarmRuntime,
) -> None:
    s = spec(
        resources=Resources(cpus=0.5, memory="64m", pids_limit=64),
        read_only=True,
        tmpfs={"/tmp": "size=8m,mode=1777"},
        cap_drop=("NET_RAW",),
        user="1000:1000",
        workdir="/www",
        env={"GREETING": "hi"},
    )
    state = await runtime.create(s)
    assert state["made"] is True
    assert replicas(s.name) == 0  # made asleep
    assert task_containers(s.name) == []
    made = service(s.name)["Spec"]
    for key in ("dormant.session", "dormant.user", "dormant.tenant", "dormant.deployment"):
        assert made["Labels"][key] == s.labels[key]
    assert made["Labels"][RUN_LABEL] == RUN_ID  # the runtime's scope
    container = made["TaskTemplate"]["ContainerSpec"]
    # the same labels on the task's containers, but not dormant.managed: those are Swarm's,
    # and the docker runtime on the same engine must not take them for its own
    assert container["Labels"] == {
        k: v for k, v in made["Labels"].items() if k != "dormant.managed"
    }
    assert (container["ReadOnly"], container["User"], container["Dir"]) == (
        True,
        "1000:1000",
        "/www",
    )
    assert container["CapabilityDrop"] == ["NET_RAW"]
    assert "GREETING=hi" in container["Env"]
    assert {
        "Type": "tmpfs",
        "Target": "/tmp",
        "TmpfsOptions": {"SizeBytes": 8 * 1024**2, "Mode": 0o1777},
    } in container["Mounts"]
    resources = made["TaskTemplate"]["Resources"]
    assert resources["Limits"] == {"NanoCPUs": 500_000_000, "MemoryBytes": 64 * 1024**2, "Pids": 64}
    assert resources["Reservations"] == {"MemoryBytes": 64 * 1024**2}
    assert made["EndpointSpec"]["Ports"] == [
        {
            "Protocol": "tcp",
            "TargetPort": CONTAINER_PORT,
            "PublishedPort": s.port,
            "PublishMode": "host",
        }
    ]

    state = await runtime.start(s.name, {**state, "port": s.port})
    assert replicas(s.name) == 1
    assert Endpoint.from_state(state) == Endpoint("127.0.0.1", s.port)  # the node's address
    assert http_get(s.port) is not None
    [task] = task_containers(s.name, running=True)
    for key in ("dormant.session", "dormant.user", "dormant.tenant", "dormant.deployment"):
        assert task["Labels"][key] == s.labels[key]
    assert "dormant.managed" not in task["Labels"]
    docker = DockerRuntime(DOCKER.host(), scope={RUN_LABEL: RUN_ID})
    try:  # not one of the docker runtime's containers on that engine
        assert task["Id"] not in {i.detail["id"] for i in await docker.list_managed()}
    finally:
        await docker.close()
    host_config = DOCKER.inspect(task["Id"])["HostConfig"]
    assert (host_config["Memory"], host_config["NanoCpus"], host_config["PidsLimit"]) == (
        64 * 1024**2,
        500_000_000,
        64,
    )
    assert host_config["ReadonlyRootfs"] is True and host_config["CapDrop"] == ["NET_RAW"]
    status, output = await runtime.exec(s.name, ["sh", "-c", "id -u; pwd; echo $GREETING"], 10)
    assert (status, output.split()) == (0, ["1000", "/www", "hi"])

    await runtime.stop(s.name, state)
    assert replicas(s.name) == 0
    assert task_containers(s.name, running=True) == []  # nothing runs while it sleeps
    assert http_get(s.port) is None
    info = await runtime.inspect(s.name)
    assert info is not None and info.status is ContainerStatus.STOPPED

    await runtime.remove(s.name, state)
    assert api_get(DOCKER.host(), "/services", filters={"name": [s.name]}) == []
    assert task_containers(s.name) == []


async def test_volumes_are_pinned_to_their_node_and_a_users_volume_outlives_the_session(
    runtime: SwarmRuntime,
) -> None:
    home = f"home-{RUN_ID}-{uuid.uuid4().hex[:6]}"
    first = spec()
    scratch = f"scratch-{first.session_id}"
    first = replace(
        first,
        volumes=(
            volume(home, "/home/dev", "user"),
            volume(scratch, "/scratch", "session", first.session_id),
        ),
    )
    state = await runtime.create(first)
    node = api_get(DOCKER.host(), "/info")["Swarm"]["NodeID"]
    assert state["node"] == node
    made = service(first.name)["Spec"]["TaskTemplate"]
    assert made["Placement"]["Constraints"] == [f"node.id=={node}"]
    volumes = {m["Source"]: m for m in made["ContainerSpec"]["Mounts"] if m["Type"] == "volume"}
    assert volumes[home]["VolumeOptions"]["Labels"]["dormant.retain"] == "user"
    assert {home, scratch} <= run_volumes()  # made before the service, with its labels

    state = await runtime.start(first.name, state)
    status, _ = await runtime.exec(first.name, ["sh", "-c", "echo kept > /home/dev/f"], 10)
    assert status == 0
    await runtime.remove(first.name, state)
    assert home in run_volumes() and scratch not in run_volumes()

    second = spec(volumes=(volume(home, "/home/dev", "user"),))
    state = await runtime.start(second.name, await runtime.create(second))
    assert await runtime.exec(second.name, ["cat", "/home/dev/f"], 10) == (0, "kept\n")
    await runtime.remove(second.name, state)
    assert await runtime.remove_volume(home) is True
    assert home not in run_volumes()


async def test_a_task_that_exits_while_starting_fails_with_its_output_and_is_scaled_to_0(
    runtime: SwarmRuntime,
) -> None:
    s = spec(command=["sh", "-c", "echo no luck; exit 3"])
    state = await runtime.create(s)
    with pytest.raises(RuntimeFailure, match="no luck"):
        await runtime.start(s.name, state)
    assert replicas(s.name) == 0  # Swarm does not restart it over and over
    await runtime.remove(s.name, state)


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"shm_size": "64m"}, "shm_size"),
        ({"no_new_privileges": True}, "no_new_privileges"),
        ({"network_mode": "none"}, "network_mode"),
        ({"tmpfs": {"/tmp": "size=8m,noexec"}}, "noexec"),
        ({"name": "dormant_under_score"}, "DNS label"),
        ({"network": "ingress", "port": None}, "Swarm's own"),
    ],
)
def test_what_a_service_cannot_do_is_refused_at_load(changes: dict[str, object], says: str) -> None:
    with pytest.raises(InvalidInput, match=says):
        SwarmRuntime.validate(spec(**changes))


async def test_watch_sees_a_service_removed_behind_dormants_back(runtime: SwarmRuntime) -> None:
    s = spec()
    state = await runtime.start(s.name, await runtime.create(s))
    seen: list[str] = []
    arrived = asyncio.Event()

    def notify(what: str) -> None:
        seen.append(what)
        if f"service remove {s.name}" in what:
            arrived.set()

    watcher = asyncio.create_task(runtime.watch(notify))
    try:
        await asyncio.wait_for(runtime.watching.wait(), 60)  # connected before the event
        DOCKER.cli("service", "rm", s.name)
        await asyncio.wait_for(arrived.wait(), 60)
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    assert f"service remove {s.name}" in seen
    wait_for(lambda: not task_containers(s.name), what="the task container to go")
    assert await runtime.inspect(s.name) is None
    await runtime.remove(s.name, state)  # gone already: fine


async def test_with_a_volume_driver_the_mounts_name_it_and_no_node_is_pinned(swarm: str) -> None:
    runtime = SwarmRuntime(swarm, scope={RUN_LABEL: RUN_ID}, volume_driver="local")
    try:
        home = f"home-{RUN_ID}-{uuid.uuid4().hex[:6]}"
        s = spec(volumes=(volume(home, "/home/dev", "user"),))
        state = await runtime.start(s.name, await runtime.create(s))
        assert "node" not in state
        made = service(s.name)["Spec"]["TaskTemplate"]
        assert "Placement" not in made or not made["Placement"].get("Constraints")
        [mount] = [m for m in made["ContainerSpec"]["Mounts"] if m["Type"] == "volume"]
        assert mount["VolumeOptions"]["DriverConfig"] == {"Name": "local"}
        made_volume = DOCKER.inspect(home, "volume")
        assert made_volume["Driver"] == "local"
        assert made_volume["Labels"]["dormant.user"] == "alice"  # made by dormant, labelled
        assert await runtime.exec(s.name, ["sh", "-c", "echo x > /home/dev/f"], 10) == (0, "")
        await runtime.remove(s.name, state)
        assert home in run_volumes()
        assert await runtime.remove_volume(home) is True
    finally:
        await runtime.close()


async def test_on_a_network_the_service_joins_an_attachable_overlay_and_publishes_nothing(
    runtime: SwarmRuntime,
) -> None:
    # Made, not started: the endpoint is then the task's overlay address, which only a dormant
    # attached to that network can reach (not this host's network, where the test runs).
    network = f"dormant-ov-{RUN_ID}"
    s = spec(network=network, port=None)
    try:
        state = await runtime.create(s)
        assert state["network"] == network
        made = DOCKER.inspect(network, "network")
        assert (made["Driver"], made["Attachable"], made["Scope"]) == ("overlay", True, "swarm")
        body = service(s.name)["Spec"]
        assert [n["Target"] for n in body["TaskTemplate"]["Networks"]] in ([network], [made["Id"]])
        assert body["EndpointSpec"] == {"Mode": "dnsrr"}  # no published port, no virtual IP
        await runtime.remove(s.name, state)
    finally:
        DOCKER.remove_network(network)
    assert not DOCKER.network_exists(network)
