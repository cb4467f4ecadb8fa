"""The accounting runtime: a backend that runs nothing and books everything.

It obeys the :class:`~dormant.runtimes.base.Runtime` contract (idempotent, names given, state
returned) so that the real engine can drive it, and keeps, per container, when it was running
(by the simulation's clock) and how often it was started: the first start is the creation, every
later one is a cold wake.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from dormant.clock import Clock
from dormant.engine.ports import PortAllocator
from dormant.errors import RuntimeFailure
from dormant.runtimes import ContainerInfo, ContainerSpec, ContainerStatus, Runtime


@dataclass
class Ledger:
    """One container's books. Times are seconds since the epoch."""

    name: str
    labels: dict[str, str]
    created: float
    starts: list[float] = field(default_factory=list)
    runs: list[tuple[float, float]] = field(default_factory=list)
    running_since: float | None = None
    removed: float | None = None

    def close(self, at: float) -> None:
        if self.running_since is not None:
            self.runs.append((self.running_since, max(at, self.running_since)))
            self.running_since = None


class AccountingRuntime(Runtime):
    name: ClassVar[str] = "sim"

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.ledgers: dict[str, Ledger] = {}  # every container ever made, removed ones too
        self._live: dict[str, Ledger] = {}

    def _now(self) -> float:
        return self.clock.now().timestamp()

    async def create(self, spec: ContainerSpec) -> dict[str, Any]:
        live = self._live.get(spec.name)
        if live is not None:
            if live.labels.get("dormant.session") != spec.labels.get("dormant.session"):
                raise RuntimeFailure(f"{spec.name} belongs to another session")
            return {}
        ledger = Ledger(spec.name, dict(spec.labels), self._now())
        self.ledgers[spec.name] = self._live[spec.name] = ledger
        return {}

    async def start(self, name: str, state: dict[str, Any]) -> dict[str, Any]:
        ledger = self._live.get(name)
        if ledger is None:
            raise RuntimeFailure(f"{name} does not exist")
        if ledger.running_since is None:
            now = self._now()
            ledger.starts.append(now)
            ledger.running_since = now
        return state

    async def stop(self, name: str, state: dict[str, Any]) -> dict[str, Any]:
        ledger = self._live.get(name)
        if ledger is not None:
            ledger.close(self._now())
        return state

    async def remove(self, name: str, state: dict[str, Any]) -> None:
        ledger = self._live.pop(name, None)
        if ledger is not None:
            now = self._now()
            ledger.close(now)
            ledger.removed = now

    async def inspect(self, name: str) -> ContainerInfo | None:
        ledger = self._live.get(name)
        if ledger is None:
            return None
        status = ContainerStatus.RUNNING if ledger.running_since else ContainerStatus.STOPPED
        return ContainerInfo(name, dict(ledger.labels), status)

    async def list_managed(self) -> list[ContainerInfo]:
        return [info for name in list(self._live) if (info := await self.inspect(name))]

    def close_books(self, at: float) -> None:
        """End of the simulation: whatever still runs stops being counted at ``at``."""
        for ledger in self._live.values():
            ledger.close(at)


class SimPorts(PortAllocator):
    """Ports for sessions whose containers listen nowhere: unique numbers, no sockets bound."""

    def __init__(self) -> None:
        super().__init__(range(1024, 65536), self._nothing)
        self._counter = 0

    @staticmethod
    async def _nothing() -> set[int]:
        return set()

    async def allocate(self) -> int:
        self._counter += 1
        return 100_000 + self._counter

    def settle(self, port: int) -> None:
        return None
