"""The ``Runtime`` contract: how dormant asks a backend to run a session's container.

A backend subclasses :class:`Runtime` and is registered under the ``dormant.runtimes`` entry point
group (``process`` and, later, ``docker`` ship with dormant).

Contract (every backend, every method):

- **Names are given, never invented.** dormant picks a deterministic container name and the
  labels (``dormant.managed=true``, ``dormant.session``, ``dormant.user``, ``dormant.tenant``,
  ``dormant.template``, ``dormant.instance``, ``dormant.deployment``, ``dormant.created``) and
  writes them to its intent log
  *before* calling ``create``, so that after a crash the reconciler can find what was made.
- **Idempotent.** ``create`` of a name that exists for the same session adopts it; ``stop`` and
  ``remove`` of something that does not exist succeed; ``start`` of a running container succeeds.
- **Ready means serving.** ``start`` returns only once the container's port accepts connections
  (or raises). A container that exits while starting raises :class:`RuntimeFailure` whose message
  carries the tail of its output.
- **Errors are translated.** Raise :class:`dormant.errors.TemporaryError` (or
  :class:`RuntimeUnavailable`) for conditions worth retrying and :class:`RuntimeFailure` for
  the rest, with ``raise ... from exc``. Never let a backend library's exception escape.
- **State survives restarts.** ``create`` and ``start`` return a small JSON-able ``state`` dict
  (like JupyterHub's ``Spawner.get_state``); dormant stores it with the session and passes it back
  to every later call (``load_state``), also after dormant itself restarted.
- ``list_managed`` returns every container this backend runs for dormant, whether or not dormant
  still remembers it, with its labels: it is how orphans are found. It lists other deployments'
  containers too (the reconciler ignores them by their ``dormant.deployment`` label and reports
  how many), and raises rather than return a partial list: unknown is not absent.
- ``check`` refuses a spec that cannot work (``InvalidInput``) before any session is made;
  ``watch`` streams change events, used only to wake the reconciler early.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar

MANAGED_LABEL = "dormant.managed"
SESSION_LABEL = "dormant.session"
INSTANCE_LABEL = "dormant.instance"
#: The deployment that owns a container (its id is kept in that deployment's database). A dormant
#: lists, reconciles and removes only containers carrying its own.
DEPLOYMENT_LABEL = "dormant.deployment"
CREATED_LABEL = "dormant.created"


class ContainerStatus(StrEnum):
    RUNNING = "running"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class Resources:
    cpus: float | None = None
    memory: str | None = None
    pids_limit: int | None = None


@dataclass(frozen=True, slots=True)
class ContainerSpec:
    name: str
    session_id: str
    labels: dict[str, str]
    port: int | None
    command: list[str] | None = None
    image: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    container_port: int | None = None
    resources: Resources = field(default_factory=Resources)
    start_timeout: float = 30.0
    stop_timeout: float = 5.0
    # Isolation (container backends; the process runtime ignores them).
    read_only: bool = False
    tmpfs: dict[str, str] = field(default_factory=dict)
    cap_drop: tuple[str, ...] = ()
    no_new_privileges: bool = False
    network_mode: str | None = None
    #: Run as this host user (name or uid); the process runtime only.
    user: str | None = None


@dataclass(frozen=True, slots=True)
class ContainerInfo:
    name: str
    labels: dict[str, str]
    status: ContainerStatus
    created_at: datetime | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def session_id(self) -> str | None:
        return self.labels.get(SESSION_LABEL)


class Runtime(abc.ABC):
    """Base class of every backend; the module docstring is the contract."""

    name: ClassVar[str]

    @abc.abstractmethod
    async def create(self, spec: ContainerSpec) -> dict[str, Any]:
        """Make the container (not started). Returns the state to keep."""

    @abc.abstractmethod
    async def start(self, name: str, state: dict[str, Any]) -> dict[str, Any]:
        """Start it and wait until it serves. Returns the updated state."""

    @abc.abstractmethod
    async def stop(self, name: str, state: dict[str, Any]) -> dict[str, Any]:
        """Stop it, keeping its filesystem. Not found is success."""

    @abc.abstractmethod
    async def remove(self, name: str, state: dict[str, Any]) -> None:
        """Remove it and its data (stopping it first if needed). Not found is success."""

    @abc.abstractmethod
    async def inspect(self, name: str) -> ContainerInfo | None:
        """What the backend knows about one container, or ``None`` if it does not exist."""

    @abc.abstractmethod
    async def list_managed(self) -> list[ContainerInfo]:
        """Every container labelled ``dormant.managed=true`` that this backend can see."""

    async def ping(self) -> None:
        """Raise :class:`dormant.errors.RuntimeUnavailable` if the backend cannot be reached."""

    async def check(self, spec: ContainerSpec) -> None:
        """Raise :class:`dormant.errors.InvalidInput` if ``spec`` cannot work on this backend
        (an invalid value, an unknown image), before anything is made. Default: accepts all."""

    async def watch(self, notify: Callable[[str], None]) -> None:
        """Follow the backend's change events for managed containers, calling ``notify`` with a
        short description of each, until cancelled; raise :class:`RuntimeUnavailable` when the
        stream breaks. Events only wake the reconciler early (it stays level-triggered).
        Default: the backend has no events; wait forever."""
        await asyncio.Event().wait()

    async def close(self) -> None:
        """Release connections; containers keep running."""
