"""The Runtime contract (``dormant.runtimes.base``), one suite on every backend: every kit in
``tests/integration/kits`` (the FakeRuntime that unit tests rely on, the ProcessRuntime on real
local processes, the DockerRuntime on the project's Podman, …).

Every container a test makes is removed by the ``kit`` fixture, also when the test fails, and
the fixture checks that none remains."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from dormant.errors import DormantError, RuntimeFailure
from dormant.runtimes import ContainerStatus, Endpoint, Resources
from dormant.testing import FakeRuntime

from .kits import CUSTOM, Kit, kits
from .podman import free_port, http_get

pytestmark = pytest.mark.integration


@pytest.fixture(params=list(kits()))
async def kit(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Kit]:
    opened = await kits()[request.param].open(request, tmp_path)
    try:
        yield opened
    finally:
        await opened.close()


def json_able(state: dict[str, Any]) -> bool:
    return bool(json.loads(json.dumps(state)) == state)


async def test_create_then_start_serves_and_stop_keeps_it_listed(kit: Kit) -> None:
    rt, s = kit.runtime, kit.spec()
    state = await rt.create(s)
    assert json_able(state)
    made = await rt.inspect(s.name)
    assert made is not None and made.status is ContainerStatus.STOPPED
    assert (made.name, made.session_id) == (s.name, s.session_id)

    state = await rt.start(s.name, state)
    assert json_able(state)
    assert await kit.serves(s)  # start returns once it serves
    running = await rt.inspect(s.name)
    assert running is not None and running.status is ContainerStatus.RUNNING

    state = await rt.stop(s.name, state)
    assert json_able(state)
    stopped = await rt.inspect(s.name)
    assert stopped is not None and stopped.status is ContainerStatus.STOPPED
    assert not await kit.serves(s)
    listed = await kit.listed(s.name)
    assert listed is not None and listed.status is ContainerStatus.STOPPED
    assert listed.labels["dormant.managed"] == "true"
    assert listed.session_id == s.session_id
    assert {k: listed.labels.get(k) for k in CUSTOM} == CUSTOM

    # started again from the state kept with the session: it serves again
    state = await rt.start(s.name, state)
    assert await kit.serves(s)
    await rt.remove(s.name, state)  # running: removed all the same
    assert await rt.inspect(s.name) is None
    assert await kit.listed(s.name) is None
    assert not await kit.serves(s)


async def test_start_of_a_running_container_succeeds(kit: Kit) -> None:
    rt, s = kit.runtime, kit.spec()
    state = await rt.start(s.name, await rt.create(s))
    again = await rt.start(s.name, state)
    assert json_able(again)
    assert await kit.serves(s)
    info = await rt.inspect(s.name)
    assert info is not None and info.status is ContainerStatus.RUNNING
    await rt.stop(s.name, again)
    await rt.stop(s.name, again)  # stop of a stopped one: also fine
    info = await rt.inspect(s.name)
    assert info is not None and info.status is ContainerStatus.STOPPED


async def test_create_of_an_existing_name_for_the_same_session_adopts_it(kit: Kit) -> None:
    rt, s = kit.runtime, kit.spec()
    state = await rt.start(s.name, await rt.create(s))
    assert json_able(await rt.create(s))  # the same runtime: adopted
    restarted = kit.reopen()  # a restarted dormant finds it too
    try:
        adopted = await restarted.create(s)
        assert json_able(adopted)
        info = await restarted.inspect(s.name)
        assert info is not None and info.status is ContainerStatus.RUNNING  # not made anew
        assert info.session_id == s.session_id
        assert await kit.serves(s)
        await restarted.stop(s.name, {**state, **adopted})
        state = await restarted.start(s.name, {**state, **adopted})  # the state survives
        assert await kit.serves(s)
    finally:
        if restarted is not rt:
            await restarted.close()
    assert [i.name for i in await rt.list_managed() if i.name == s.name] == [s.name]


async def test_create_of_an_existing_name_for_another_session_raises(kit: Kit) -> None:
    rt, mine = kit.runtime, kit.spec()
    await rt.create(mine)
    theirs = kit.spec("someone-else", name=mine.name)
    with pytest.raises(RuntimeFailure):
        await rt.create(theirs)
    info = await rt.inspect(mine.name)
    assert info is not None and info.session_id == mine.session_id  # left alone


async def test_stop_and_remove_of_a_missing_name_succeed(kit: Kit) -> None:
    rt, name = kit.runtime, f"dormant-never-{uuid.uuid4().hex[:8]}"
    assert json_able(await rt.stop(name, {"kept": 1}))
    await rt.remove(name, {})
    await rt.remove(name, {"kept": 1})
    assert await rt.inspect(name) is None
    assert await kit.listed(name) is None


async def test_failures_are_dormant_errors(kit: Kit) -> None:
    rt, name = kit.runtime, f"dormant-never-{uuid.uuid4().hex[:8]}"
    with pytest.raises(RuntimeFailure) as raised:
        await rt.start(name, {})
    assert isinstance(raised.value, DormantError)
    assert await rt.inspect(name) is None


async def test_start_reports_an_endpoint_that_accepts_connections(kit: Kit) -> None:
    rt, s = kit.runtime, kit.spec()
    state = await rt.start(s.name, {**await rt.create(s), "port": s.port})
    assert json_able(state)
    endpoint = Endpoint.from_state(state)
    assert endpoint is not None, state
    assert state["endpoint"] == {"host": endpoint.host, "port": endpoint.port}
    assert endpoint == await kit.endpoint_of(s)  # where the backend says it serves
    if kit.host_ports:
        assert s.port is not None
        assert endpoint == Endpoint("127.0.0.1", s.port)  # a published port
    if kit.serves_traffic:
        assert await kit.accepts(endpoint)  # start returned once it served there
    # stopped and started again (a wake): an endpoint again, serving
    state = await rt.start(s.name, {**await rt.stop(s.name, state), "port": s.port})
    again = Endpoint.from_state(state)
    assert again is not None
    assert again == await kit.endpoint_of(s)
    if kit.serves_traffic:
        assert await kit.accepts(again)


async def test_the_port_a_session_serves_on_follows_start_or_create_as_declared(
    kit: Kit,
) -> None:
    rt, s = kit.runtime, kit.spec()
    if not kit.host_ports:
        # No host port at all (a pod's address): a port given to start changes nothing.
        first = await rt.start(s.name, {**await rt.create(s), "port": None})
        moved = await rt.start(s.name, {**await rt.stop(s.name, first), "port": free_port()})
        endpoint = Endpoint.from_state(moved)
        assert endpoint is not None and endpoint == await kit.endpoint_of(s)
        assert endpoint.port == Endpoint.from_state(first).port  # type: ignore[union-attr]
        assert await kit.accepts(endpoint)
        await rt.stop(s.name, moved)
        return
    assert s.port is not None
    if not rt.ports_follow_start:
        # Bound at create (docker): a port given to a later start is not where it serves.
        bound = await rt.start(s.name, await rt.create(s))
        restarted = await rt.start(s.name, {**await rt.stop(s.name, bound), "port": free_port()})
        assert Endpoint.from_state(restarted) == Endpoint("127.0.0.1", s.port)
        assert await kit.accepts(Endpoint("127.0.0.1", s.port))
        await rt.stop(s.name, restarted)
        return
    first = await rt.start(s.name, {**await rt.create(s), "port": s.port})
    assert Endpoint.from_state(first) == Endpoint("127.0.0.1", s.port)
    stopped = await rt.stop(s.name, first)
    other = free_port()  # the port was released while it slept; a wake brings another
    moved = await rt.start(s.name, {**stopped, "port": other})
    assert Endpoint.from_state(moved) == Endpoint("127.0.0.1", other)
    if kit.serves_traffic:
        assert await kit.accepts(Endpoint("127.0.0.1", other))
        assert http_get(s.port) is None  # nothing on the old one
        info = await rt.inspect(s.name)
        assert info is not None and info.detail["port"] == other
    # found running on another port (a repair): started again on the one given
    third = free_port()
    moved = await rt.start(s.name, {**moved, "port": third})
    assert Endpoint.from_state(moved) == Endpoint("127.0.0.1", third)
    if kit.serves_traffic:
        assert await kit.accepts(Endpoint("127.0.0.1", third))
        assert not await kit.accepts(Endpoint("127.0.0.1", other))
    await rt.stop(s.name, moved)


async def _load(endpoint: Endpoint, stop: asyncio.Event) -> int:
    """HTTP requests to ``endpoint`` one after another until ``stop``: work for the session."""
    sent = 0
    while not stop.is_set():
        await asyncio.to_thread(http_get, endpoint.port, "/", endpoint.host)
        sent += 1
    return sent


async def test_stats_reads_a_running_container_and_none_otherwise(kit: Kit) -> None:
    rt = kit.runtime
    s = dataclasses.replace(kit.spec(), resources=Resources(memory="64m"))
    name = s.name
    assert await rt.stats(name, {}) is None  # never made: no reading, no error
    state = await rt.create(s)
    assert await rt.stats(name, state) is None  # made, not running
    state = await rt.start(name, state)

    idle = await rt.stats(name, state)
    if not kit.measures_stats:  # the backend cannot tell: the default, never an error
        assert idle is None
        return
    assert idle is not None
    assert isinstance(idle.cpu_percent, float) and idle.cpu_percent >= 0
    assert idle.at.tzinfo is not None
    if isinstance(rt, FakeRuntime):
        assert (idle.cpu_percent, idle.memory_bytes) == rt.usage[:2]
    else:
        assert 0 < idle.memory_bytes < 1024**3  # a small server's resident memory
        # the docker runtime applies the template's limit; the process runtime enforces none
        expected_limit = 64 * 1024**2 if kit.enforces_memory_limit else None
        assert idle.memory_limit_bytes == expected_limit
        stop = asyncio.Event()
        endpoint = await kit.endpoint_of(s)
        assert endpoint is not None
        loader = [asyncio.create_task(_load(endpoint, stop)) for _ in range(4)]
        try:
            busy = await rt.stats(name, state)
        finally:
            stop.set()
            sent = sum(await asyncio.gather(*loader))
        assert busy is not None and sent > 0
        assert busy.cpu_percent > 0, (busy, sent)  # serving requests takes CPU

    state = await rt.stop(name, state)
    assert await rt.stats(name, state) is None  # asleep: no reading
