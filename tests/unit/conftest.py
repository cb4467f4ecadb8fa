from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dormant.engine import Engine, EngineSettings, PortAllocator, default_catalog
from dormant.engine.retry import Backoff
from dormant.store import SqlStore
from dormant.store.migrate import upgrade
from dormant.testing import FakeClock, FakeRuntime


@dataclass
class Rig:
    engine: Engine
    clock: FakeClock
    runtime: FakeRuntime
    store: SqlStore
    url: str
    #: More engines on the same store (replicas); their operations are drained at the end too,
    #: before the store closes (an operation still running then would leak its connection).
    others: list[Engine] = field(default_factory=list)

    async def settle(self) -> None:
        """Run everything due now and wait for the operations it started."""
        for _ in range(10):
            await self.engine.drain()
            if not await self.engine.tick() and not self.engine._tasks:
                return
        await self.engine.drain()

    async def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        await self.settle()

    def new_engine(self, instance: str = "test-2") -> Engine:
        engine = make_engine(self.store, self.runtime, self.clock, instance)
        self.others.append(engine)
        return engine


def make_engine(
    store: SqlStore,
    runtime: FakeRuntime,
    clock: FakeClock,
    instance: str = "test-1",
    ports: range = range(30000, 30050),
) -> Engine:
    return Engine(
        store,
        {"process": runtime},
        default_catalog(),
        clock,
        PortAllocator(ports, store.used_ports),
        EngineSettings(instance_id=instance, backoff=Backoff(base=0.001, cap=0.005, attempts=4)),
    )


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite database migrated to head once per test run; tests get a copy of the file (the
    migrations take ~0.3 s, a copy under a millisecond). Alembic's engine is disposed when
    ``upgrade`` returns, so the write-ahead log is checkpointed into the file."""
    path = tmp_path_factory.mktemp("migrated") / "dormant.db"
    upgrade(f"sqlite+aiosqlite:///{path}")
    assert not path.with_name("dormant.db-wal").exists()
    return path


def migrated_copy(template: Path, directory: Path, name: str = "dormant.db") -> str:
    """The URL of a fresh copy of the migrated ``template`` in ``directory``."""
    target = directory / name
    shutil.copyfile(template, target)
    return f"sqlite+aiosqlite:///{target}"


@pytest.fixture
async def rig(tmp_path: Path, migrated_sqlite: Path) -> AsyncIterator[Rig]:
    url = migrated_copy(migrated_sqlite, tmp_path)
    store = SqlStore(url)
    clock = FakeClock()
    runtime = FakeRuntime()
    engine = make_engine(store, runtime, clock)
    await engine.heartbeat()
    rig = Rig(engine, clock, runtime, store, url)
    try:
        yield rig
    finally:
        for each in (engine, *rig.others):
            await each.drain()
        await store.close()
