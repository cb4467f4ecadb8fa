from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dormant.engine import Engine, EngineSettings, PortAllocator, default_catalog
from dormant.engine.retry import Backoff
from dormant.store import SqlStore
from dormant.store.migrate import upgrade_async
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


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'dormant.db'}"
    await upgrade_async(url)
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
