"""Fakes shipped with dormant, for its own tests and for users testing code built on it.

- :class:`FakeClock` travels in time (``advance``) and wakes ``sleep``-ers when it gets there.
- :class:`FakeRuntime` keeps containers in memory and obeys the Runtime contract; failures are
  provoked with :meth:`FakeRuntime.fail` (temporary or permanent, a number of times).
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from dormant.errors import DormantError, RuntimeFailure, RuntimeUnavailable, TemporaryError
from dormant.runtimes import (
    ContainerInfo,
    ContainerSpec,
    ContainerStats,
    ContainerStatus,
    Endpoint,
    Runtime,
    VolumeInfo,
)
from dormant.runtimes.base import RETAIN_SESSION, describe_owner, owner_mismatch


class FakeClock:
    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
        self._mono = 0.0
        self._sleepers: list[tuple[datetime, asyncio.Future[None]]] = []

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self._now + timedelta(seconds=seconds), future))
        await future

    def advance(self, seconds: float | timedelta) -> datetime:
        delta = seconds if isinstance(seconds, timedelta) else timedelta(seconds=seconds)
        if delta < timedelta(0):
            raise ValueError("time only moves forward")
        self._now += delta
        self._mono += delta.total_seconds()
        waiting = []
        for at, future in self._sleepers:
            if at <= self._now:
                if not future.done():
                    future.set_result(None)
            else:
                waiting.append((at, future))
        self._sleepers = waiting
        return self._now


@dataclass
class _Container:
    spec: ContainerSpec
    status: ContainerStatus = ContainerStatus.STOPPED
    starts: int = 0
    #: The host port of the last start (``state["port"]``, else the spec's).
    port: int | None = None


@dataclass
class _Failure:
    error: DormantError
    times: int


@dataclass
class FakeRuntime(Runtime):
    """An in-memory runtime. ``calls`` records ``(method, name)`` in order.

    It serves nothing: the endpoint ``start`` reports is ``127.0.0.1`` and the host port it was
    given (``state["port"]``, else the spec's), or ``NAME.fake.invalid`` and the container port
    for a session without a host port. Like the process runtime, it takes its port at start."""

    name: ClassVar[str] = "fake"
    ports_follow_start: ClassVar[bool] = True
    containers: dict[str, _Container] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    #: Volumes by name (made on demand by ``create``, with their labels).
    volumes: dict[str, VolumeInfo] = field(default_factory=dict)
    _failures: dict[str, deque[_Failure]] = field(default_factory=dict)
    #: What :meth:`stats` answers for a running container: CPU %, memory bytes, memory limit.
    usage: tuple[float, int, int | None] = (12.5, 64 * 1024**2, 256 * 1024**2)
    #: Where :meth:`stats` reads its ``at`` (a :class:`FakeClock`); none: a fixed time.
    clock: FakeClock | None = None

    def fail(self, method: str, error: DormantError | None = None, times: int = 1) -> None:
        """Make the next ``times`` calls of ``method`` raise ``error`` (default: unavailable)."""
        err = error or RuntimeUnavailable("fake engine unavailable")
        self._failures.setdefault(method, deque()).append(_Failure(err, times))

    def _check(self, method: str, name: str) -> None:
        self.calls.append((method, name))
        queue = self._failures.get(method)
        if queue:
            failure = queue[0]
            failure.times -= 1
            if failure.times <= 0:
                queue.popleft()
            raise failure.error

    async def create(self, spec: ContainerSpec) -> dict[str, Any]:
        self._check("create", spec.name)
        existing = self.containers.get(spec.name)
        if existing is not None and existing.spec.session_id != spec.session_id:
            raise RuntimeFailure(f"{spec.name} belongs to another session")
        for volume in spec.volumes:
            have = self.volumes.get(volume.name)
            if have is None:
                self.volumes[volume.name] = VolumeInfo(volume.name, dict(volume.labels))
            elif differ := owner_mismatch(volume, have.labels):
                raise RuntimeFailure(
                    f"volume {volume.name} exists and {describe_owner(have.labels)} ({differ})"
                )
        state: dict[str, Any] = {"fake": True}
        session_volumes = [v.name for v in spec.volumes if v.retain == RETAIN_SESSION]
        if session_volumes:
            state["session_volumes"] = session_volumes
        if existing is None:
            self.containers[spec.name] = _Container(spec)
            state["made"] = True
        return state

    async def start(self, name: str, state: dict[str, Any]) -> dict[str, Any]:
        self._check("start", name)
        container = self.containers.get(name)
        if container is None:
            raise RuntimeFailure(f"{name} does not exist")
        container.status = ContainerStatus.RUNNING
        container.starts += 1
        port = state.get("port", container.spec.port)
        container.port = port
        endpoint = (
            Endpoint("127.0.0.1", int(port))
            if port is not None
            else Endpoint(f"{name}.fake.invalid", container.spec.container_port or 8000)
        )
        return {**state, "starts": container.starts, "endpoint": endpoint.as_dict()}

    async def stop(self, name: str, state: dict[str, Any]) -> dict[str, Any]:
        self._check("stop", name)
        container = self.containers.get(name)
        if container is not None:
            container.status = ContainerStatus.STOPPED
        return state

    async def remove(self, name: str, state: dict[str, Any]) -> None:
        self._check("remove", name)
        self.containers.pop(name, None)
        for volume in state.get("session_volumes") or []:
            self.volumes.pop(str(volume), None)

    async def list_volumes(self) -> list[VolumeInfo]:
        self._check("list_volumes", "")
        return list(self.volumes.values())

    async def remove_volume(self, name: str) -> bool:
        self._check("remove_volume", name)
        if any(v.name == name for c in self.containers.values() for v in c.spec.volumes):
            return False  # a container mounts it
        self.volumes.pop(name, None)
        return True

    async def stats(self, name: str, state: dict[str, Any]) -> ContainerStats | None:
        self._check("stats", name)
        container = self.containers.get(name)
        if container is None or container.status is not ContainerStatus.RUNNING:
            return None
        at = self.clock.now() if self.clock is not None else FakeClock().now()
        cpu, memory, limit = self.usage
        return ContainerStats(cpu, memory, limit, at)

    async def inspect(self, name: str) -> ContainerInfo | None:
        container = self.containers.get(name)
        if container is None:
            return None
        return ContainerInfo(name, dict(container.spec.labels), container.status)

    async def list_managed(self) -> list[ContainerInfo]:
        return [
            ContainerInfo(name, dict(c.spec.labels), c.status)
            for name, c in self.containers.items()
            if c.spec.labels.get("dormant.managed") == "true"
        ]

    def running(self) -> set[str]:
        return {n for n, c in self.containers.items() if c.status is ContainerStatus.RUNNING}


class FlakyStore:
    """Wraps a real store; :meth:`fail` makes the next calls of a method raise a
    :class:`dormant.errors.TemporaryError` (a busy or unreachable database)."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self._failures: dict[str, int] = {}

    def fail(self, method: str, times: int = 1) -> None:
        self._failures[method] = self._failures.get(method, 0) + times

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._store, name)
        if not callable(target) or not asyncio.iscoroutinefunction(target):
            return target

        async def call(*args: Any, **kwargs: Any) -> Any:
            if self._failures.get(name, 0) > 0:
                self._failures[name] -= 1
                raise TemporaryError(f"store unavailable (provoked failure of {name})")
            return await target(*args, **kwargs)

        return call
