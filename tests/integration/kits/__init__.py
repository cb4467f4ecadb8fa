"""Backends under the one Runtime contract suite (``test_runtime_contract.py``).

Each module of this package defines one :class:`Kit` subclass (found by :func:`kits`): how to
open its runtime (and a second one on the same backend: a restarted dormant), the specs that
work on it, and how a test sees a session serve. A new backend adds a module here and the whole
suite runs on it; nothing else changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import pkgutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest

from dormant.runtimes import ContainerInfo, ContainerSpec, Endpoint, Runtime

from ..podman import free_port, http_get

CUSTOM = {"dormant.user": "alice", "acme.team": "blue"}


@dataclass
class Kit:
    """One backend under test. Subclasses set ``kind`` and implement :meth:`open`."""

    kind: ClassVar[str]
    #: Whether a template's memory limit is enforced (``stats`` reports it as the limit).
    enforces_memory_limit: ClassVar[bool] = False
    #: Whether the session serves on the host port dormant gives (``spec.port`` on 127.0.0.1);
    #: false for backends whose endpoint is an address of their own (a pod's IP).
    host_ports: ClassVar[bool] = True
    #: Whether ``stats`` reads CPU and memory (a backend that cannot keeps the default: None).
    measures_stats: ClassVar[bool] = True
    #: Whether it serves anything at all (the fake only says it runs).
    serves_traffic: ClassVar[bool] = True

    runtime: Runtime
    made: list[str] = field(default_factory=list)

    @classmethod
    async def open(cls, request: pytest.FixtureRequest, tmp_path: Path) -> Kit:
        """The kit, ready to use (fixtures it needs are taken from ``request``)."""
        raise NotImplementedError

    def reopen(self) -> Runtime:
        """A second runtime on the same backend: what a restarted dormant would make."""
        raise NotImplementedError

    def spec_extras(self) -> dict[str, Any]:
        """Fields of :class:`ContainerSpec` this backend needs (image, container port, …)."""
        return {}

    def extra_labels(self) -> dict[str, str]:
        """Labels that scope this run's containers (cleanup touches only those)."""
        return {}

    def spec(self, session: str | None = None, *, name: str | None = None) -> ContainerSpec:
        session = session or f"c{uuid.uuid4().hex[:12]}"
        name = name or f"dormant-{session}"
        labels = {"dormant.managed": "true", "dormant.session": session, **CUSTOM}
        labels.update(self.extra_labels())
        if name not in self.made:
            self.made.append(name)
        return ContainerSpec(
            name=name,
            session_id=session,
            labels=labels,
            port=free_port() if self.host_ports else None,
            start_timeout=20,
            stop_timeout=2,
            **self.spec_extras(),
        )

    async def endpoint_of(self, spec: ContainerSpec) -> Endpoint | None:
        """Where ``spec``'s session serves now, as the backend itself would report it, or
        ``None``. Default: the host port dormant gave it."""
        return Endpoint("127.0.0.1", spec.port) if spec.port is not None else None

    async def serves(self, spec: ContainerSpec) -> bool:
        """An HTTP GET where the session serves answers."""
        endpoint = await self.endpoint_of(spec)
        if endpoint is None:
            return False
        return await asyncio.to_thread(http_get, endpoint.port, "/", endpoint.host) is not None

    async def accepts(self, endpoint: Endpoint) -> bool:
        """A TCP connection to ``endpoint`` is accepted."""
        try:
            async with asyncio.timeout(3):
                _, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    async def listed(self, name: str) -> ContainerInfo | None:
        return next((i for i in await self.runtime.list_managed() if i.name == name), None)

    async def close(self) -> None:
        """Remove what the test made (also on failure), close the runtime, check none is left."""
        try:
            for name in self.made:
                await self.runtime.remove(name, {})
            left = [i.name for i in await self.runtime.list_managed() if i.name in self.made]
        finally:
            await self.runtime.close()
            await self.teardown()
        assert left == [], f"{self.kind}: left behind {left}"

    async def teardown(self) -> None:
        """Stop what :meth:`open` started for this kit (a server, an emulator). Default: none."""


def kits() -> dict[str, type[Kit]]:
    """Every kit in this package, by kind."""
    found: dict[str, type[Kit]] = {}
    for module in pkgutil.iter_modules(__path__):
        loaded = importlib.import_module(f"{__name__}.{module.name}")
        for value in vars(loaded).values():
            if (
                isinstance(value, type)
                and issubclass(value, Kit)
                and value is not Kit
                and "kind" in vars(value)
            ):
                found[value.kind] = value
    return dict(sorted(found.items()))
