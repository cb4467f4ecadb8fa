"""Integration fixtures. ``store`` is each implementation of the Store contract: the
MemoryStore, and a migrated SqlStore on SQLite and on the real PostgreSQL (a throw-away database
per test). The docker runtime's tests run on real engines, Podman and Docker Engine
(``engines.py``; the ``engine`` fixture is each of them); whatever they do, their containers are
removed, and after the session none of this run's containers or volumes labelled
``dormant.managed=true`` may remain on either engine (on CI: none at all)."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from dormant.runtimes.docker import DockerRuntime
from dormant.store import MemoryStore, SqlStore, Store
from dormant.store.migrate import upgrade_async

from .engines import ENGINES, PODMAN, RUN_ID, RUN_LABEL, ContainerEngine, container_names

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "memory":
        m = MemoryStore()
        try:
            yield m
        finally:
            await m.close()
        return
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
        await upgrade_async(url)
        s = SqlStore(url)
        try:
            yield s
        finally:
            await s.close()
        return
    name = f"dormant_test_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(PG_ADMIN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    try:
        await upgrade_async(url)
        s = SqlStore(url)
        try:
            yield s
        finally:
            await s.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture(scope="session")
def docker_host() -> str:
    """Podman's Docker API: the engine of tests that run on one engine only."""
    return PODMAN.host()


@pytest.fixture(scope="session", params=sorted(ENGINES))
def engine(request: pytest.FixtureRequest) -> ContainerEngine:
    """Each engine the docker runtime is tested on (Podman and Docker Engine), started."""
    chosen = ENGINES[request.param]
    chosen.host()
    return chosen


@pytest.fixture(scope="session", autouse=True)
def no_leaked_containers() -> Iterator[None]:
    """After the session no container or dormant-made volume of this run remains on any engine
    (on CI: none at all)."""
    yield
    problems = []
    for used in (e for e in ENGINES.values() if e.started):
        left = used.purge_run()
        volumes = used.managed_volumes()
        used.remove_volumes(volumes)
        if left or volumes:
            problems.append(f"{used.kind}: containers {left}, volumes {sorted(volumes)}")
        # Any run's: only where this process is the only test run (a pytest-xdist worker would
        # take the other workers' containers; scripts/test.sh checks the engines after them all).
        if os.environ.get("CI") and not os.environ.get("PYTEST_XDIST_WORKER"):
            stray = container_names(used.managed_containers(all_runs=True))
            used.remove_containers(stray)
            stray_volumes = used.managed_volumes(all_runs=True)
            used.remove_volumes(stray_volumes)
            if stray or stray_volumes:
                problems.append(
                    f"{used.kind} (any run): containers {sorted(stray)}, "
                    f"volumes {sorted(stray_volumes)}"
                )
    assert not problems, f"tests left things labelled dormant.managed=true: {problems}"


@pytest.fixture
def containers() -> Iterator[None]:
    """Removes this run's containers from every engine started so far after the test, also on
    failure, and checks it worked. (Not tied to one engine, so that kits can ask for it.)"""
    try:
        yield
    finally:
        for used in (e for e in ENGINES.values() if e.started):
            used.purge_run()
            assert used.managed_containers() == [], used.kind


@pytest.fixture
async def docker_runtime(engine: ContainerEngine, containers: None) -> AsyncIterator[DockerRuntime]:
    """The docker runtime on each engine, confined to this run's containers (closed after)."""
    runtime = DockerRuntime(engine.host(), scope={RUN_LABEL: RUN_ID})
    try:
        yield runtime
    finally:
        await runtime.close()
