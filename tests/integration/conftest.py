"""Integration fixtures. ``store`` is each implementation of the Store contract: the
MemoryStore, and a migrated SqlStore on SQLite and on the real PostgreSQL (a throw-away database
per test). The docker runtime's tests use a real Podman
(``podman.py``); whatever they do, their containers are removed, and after the session none of
this run's containers labelled ``dormant.managed=true`` may remain (on CI: none at all)."""

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

from . import podman

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
    return podman.podman_host()


@pytest.fixture(scope="session", autouse=True)
def no_leaked_containers() -> Iterator[None]:
    yield
    if not podman.was_used():
        return
    left = podman.purge_run()
    assert not left, f"tests left containers labelled dormant.managed=true: {left}"
    if os.environ.get("CI"):
        stray = podman.container_names(podman.managed_containers(all_runs=True))
        podman.remove_containers(stray)
        assert not stray, f"containers labelled dormant.managed=true remain: {sorted(stray)}"


@pytest.fixture
def containers(docker_host: str) -> Iterator[None]:
    """Removes this run's containers after the test, also on failure, and checks it worked."""
    try:
        yield
    finally:
        podman.purge_run()
        assert podman.managed_containers() == []


@pytest.fixture
async def docker_runtime(docker_host: str, containers: None) -> AsyncIterator[DockerRuntime]:
    """The docker runtime on Podman, confined to this run's containers (and closed after)."""
    runtime = DockerRuntime(docker_host, scope={podman.RUN_LABEL: podman.RUN_ID})
    try:
        yield runtime
    finally:
        await runtime.close()
