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
- **Start reports the endpoint.** The state ``start`` returns holds
  ``"endpoint": {"host": str, "port": int}`` (:meth:`Endpoint.as_dict`): where dormant reaches the
  serving session (a host port on 127.0.0.1, a container's address on a network, a pod IP). It
  is meaningful while the session runs; nothing in dormant assumes ``127.0.0.1:{host port}``.
- **Host ports.** dormant gives the host port it allocated (``ContainerSpec.port``, ``None``
  when the template needs none) to ``create``, and the session's current one to ``start`` as
  ``state["port"]``. A backend whose :attr:`Runtime.ports_follow_start` is true binds the port
  at ``start``: dormant releases the port while the session sleeps or has failed, allocates a
  free one at wake, and the backend must serve on ``state["port"]`` (a container still running
  on another port is restarted on it). A backend that binds the port at ``create`` (the docker
  runtime publishes it then; the Engine API cannot change a stopped container's bindings)
  leaves it false, and the session keeps its port until it is deleted. A backend whose
  sessions serve on an address of their own (a pod IP) sets :attr:`Runtime.host_ports` false
  and is never given one.
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
- **Create says whether it made something.** The state ``create`` returns holds ``"made":
  True`` when it made a new container (not when it adopted one, or found it there); dormant
  does not keep that key, it only tells the timeline that a wake had to re-create a container.
- **Volumes.** ``ContainerSpec.volumes`` are named volumes (dormant picks the names and the
  labels: ``dormant.managed``, ``dormant.deployment``, ``dormant.tenant``, ``dormant.user``,
  ``dormant.template``, ``dormant.retain`` and, for ``retain="session"``, ``dormant.session``).
  ``create`` makes the missing ones with those labels before the container, and refuses one
  that exists with another owner. ``remove`` removes the container's ``retain="session"``
  volumes too (their names are in the state ``create`` returned, ``"session_volumes"``), never
  a ``retain="user"`` one: those are removed by :meth:`Runtime.remove_volume`, which dormant's
  retention job calls. ``list_volumes`` lists every volume labelled ``dormant.managed=true``
  and raises rather than return a partial list. A backend without volumes keeps the defaults.
- **Stats are a reading, not a promise.** ``stats(name, state)`` answers the running
  container's CPU and memory now (:class:`~dormant.runtimes.stats.ContainerStats`: CPU in
  percent of one core over a short interval it measures itself, memory in bytes, the memory
  limit or ``None`` when unlimited, when it was read), and ``None`` when the container is not
  running or does not exist: it is never an error to ask. It may take up to about a second
  (two samples), changes nothing, and raises only the translated errors (an unreachable
  engine). A backend that cannot measure keeps the default, which answers ``None``.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar

from dormant.errors import RuntimeFailure
from dormant.runtimes.stats import ContainerStats

MANAGED_LABEL = "dormant.managed"
SESSION_LABEL = "dormant.session"
INSTANCE_LABEL = "dormant.instance"
#: The deployment that owns a container (its id is kept in that deployment's database). A dormant
#: lists, reconciles and removes only containers carrying its own.
DEPLOYMENT_LABEL = "dormant.deployment"
CREATED_LABEL = "dormant.created"
USER_LABEL = "dormant.user"
TENANT_LABEL = "dormant.tenant"
TEMPLATE_LABEL = "dormant.template"
#: How long a volume lives: ``session`` (removed with the session's container) or ``user``
#: (kept across that user's sessions until the retention after the last one ended).
RETAIN_LABEL = "dormant.retain"
RETAIN_SESSION = "session"
RETAIN_USER = "user"
RETAIN_RULES = (RETAIN_SESSION, RETAIN_USER)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where dormant reaches a serving session: ``host`` (a name or an IP address) and ``port``."""

    host: str
    port: int

    def as_dict(self) -> dict[str, Any]:
        return {"host": self.host, "port": self.port}

    @classmethod
    def from_state(cls, state: Mapping[str, Any] | None) -> Endpoint | None:
        """The ``"endpoint"`` a runtime's ``start`` put in its state, or ``None`` (absent or
        malformed: a state written before runtimes reported endpoints)."""
        raw = (state or {}).get("endpoint")
        if not isinstance(raw, Mapping):
            return None
        host, port = raw.get("host"), raw.get("port")
        if not isinstance(host, str) or not host or isinstance(port, bool):
            return None
        if not isinstance(port, int) or not 1 <= port <= 65535:
            return None
        return cls(host, port)


class ContainerStatus(StrEnum):
    RUNNING = "running"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class Resources:
    cpus: float | None = None
    memory: str | None = None
    pids_limit: int | None = None


@dataclass(frozen=True, slots=True)
class VolumeMount:
    """A named volume of a session: ``name`` (already safe for the backend: dormant renders and
    sanitises it), where it is mounted (``target``; the process runtime's home directory has
    ``""``), its ``retain`` rule and the labels it is made with (owner, deployment, rule)."""

    name: str
    target: str
    retain: str
    labels: dict[str, str] = field(default_factory=dict)
    read_only: bool = False


def owner_mismatch(volume: VolumeMount, labels: Mapping[str, str]) -> list[str]:
    """The owner labels of an existing volume that differ from what ``volume`` wants (a
    backend refuses to use it then: another deployment's, another user's, a hand-made one)."""
    keys = [MANAGED_LABEL, DEPLOYMENT_LABEL, TENANT_LABEL, USER_LABEL, RETAIN_LABEL]
    if volume.retain == RETAIN_SESSION:
        keys.append(SESSION_LABEL)
    return [k for k in keys if labels.get(k) != volume.labels.get(k)]


def describe_owner(labels: Mapping[str, str]) -> str:
    if labels.get(MANAGED_LABEL) != "true":
        return "is not managed by dormant"
    return (
        f"belongs to {labels.get(TENANT_LABEL)}/{labels.get(USER_LABEL)} (deployment "
        f"{labels.get(DEPLOYMENT_LABEL) or 'unknown'}, retain {labels.get(RETAIN_LABEL)})"
    )


@dataclass(frozen=True, slots=True)
class BindMount:
    """A host path (from the operator's allow-list, checked at load) mounted into a container;
    read-only unless the template says otherwise."""

    source: str
    target: str
    read_only: bool = True


@dataclass(frozen=True, slots=True)
class VolumeInfo:
    """A volume (or the process runtime's per-user directory) that a backend keeps for dormant."""

    name: str
    labels: dict[str, str]
    created_at: datetime | None = None

    @property
    def retain(self) -> str | None:
        return self.labels.get(RETAIN_LABEL)


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
    #: A network the container joins (container runtimes): then no host port is published
    #: (``port`` is ``None``) and the endpoint is the container's address on that network.
    network: str | None = None
    #: Run as this user: a host user (name or uid) for the process runtime, the container's
    #: ``User`` (``name``, ``uid`` or ``uid:gid``) for the docker runtime.
    user: str | None = None
    #: Named volumes (made on demand) and allowed host paths mounted into the container; the
    #: process runtime takes a volume as the session's home directory (``{home}``, ``HOME``).
    volumes: tuple[VolumeMount, ...] = ()
    binds: tuple[BindMount, ...] = ()
    #: Container runtimes: the working directory and the size of ``/dev/shm`` (``"64m"``).
    workdir: str | None = None
    shm_size: str | None = None

    def container_env(self) -> dict[str, str]:
        """A container backend's environment for the session: the template's, then ``PORT``,
        ``DORMANT_SESSION`` and ``DORMANT_CONTAINER``, which the template cannot override."""
        assert self.container_port is not None
        return {
            **self.env,
            "PORT": str(self.container_port),
            "DORMANT_SESSION": self.session_id,
            "DORMANT_CONTAINER": self.name,
        }

    def container_command(self) -> list[str] | None:
        """``command`` with ``{port}``, ``{session}`` and ``{workdir}`` filled in (container
        backends), or None for the image's own."""
        if not self.command:
            return None
        values = {
            "port": str(self.container_port),
            "session": self.session_id,
            "workdir": self.workdir or "/",
        }
        return [part.format(**values) for part in self.command]


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
    #: Whether the host port is bound at ``start`` (from ``state["port"]``), so that dormant may
    #: release it while the session sleeps and hand it a new one at wake (see the contract).
    #: False: the port is bound at ``create`` and stays the session's until it is deleted.
    ports_follow_start: ClassVar[bool] = False
    #: Whether a session serves on a host port from dormant's range. False: it serves on an
    #: address of its own (a Kubernetes pod), so holding a host port for it would waste one.
    host_ports: ClassVar[bool] = True

    @abc.abstractmethod
    async def create(self, spec: ContainerSpec) -> dict[str, Any]:
        """Make the container (not started). Returns the state to keep."""

    @abc.abstractmethod
    async def start(self, name: str, state: dict[str, Any]) -> dict[str, Any]:
        """Start it and wait until it serves. ``state`` is the kept state plus ``"port"``: the
        session's host port now (``None`` if it has none). Returns the updated state, with
        ``"endpoint"``."""

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

    async def list_volumes(self) -> list[VolumeInfo]:
        """Every volume labelled ``dormant.managed=true`` this backend keeps (all deployments';
        the caller filters). Raise rather than return a partial list. Default: none."""
        return []

    async def remove_volume(self, name: str) -> bool:
        """Remove a volume and its data; ``False`` if it is in use (left alone), ``True`` when
        it is gone (not found is success). Default: nothing to remove."""
        return True

    async def stats(self, name: str, state: dict[str, Any]) -> ContainerStats | None:
        """The running container's CPU and memory now (see the contract), ``None`` when it is
        not running. ``state`` is the kept state. Default: this backend cannot tell (``None``)."""
        return None

    async def ping(self) -> None:
        """Raise :class:`dormant.errors.RuntimeUnavailable` if the backend cannot be reached."""

    @classmethod
    def validate(cls, spec: ContainerSpec) -> None:
        """Raise :class:`dormant.errors.InvalidInput` if ``spec`` can never work on this backend
        (a malformed value, a feature it does not have), without contacting it: templates are
        checked this way when the configuration loads. Default: accepts all."""

    async def check(self, spec: ContainerSpec) -> None:
        """Raise :class:`dormant.errors.InvalidInput` if ``spec`` cannot work on this backend
        (an invalid value, an unknown image), before anything is made. Default: accepts all."""

    async def exec(self, name: str, command: list[str], timeout: float) -> tuple[int, str]:
        """Run ``command`` in the running container: ``(exit status, output)``, for ``exec``
        health probes. Default: this backend cannot (:class:`RuntimeFailure`)."""
        raise RuntimeFailure(f"the {self.name} runtime cannot run commands in a session")

    async def watch(self, notify: Callable[[str], None]) -> None:
        """Follow the backend's change events for managed containers, calling ``notify`` with a
        short description of each, until cancelled; raise :class:`RuntimeUnavailable` when the
        stream breaks. Events only wake the reconciler early (it stays level-triggered).
        Default: the backend has no events; wait forever."""
        await asyncio.Event().wait()

    async def close(self) -> None:
        """Release connections; containers keep running."""
