"""The ``docker`` runtime: each session is a container on a Docker Engine API (Docker or Podman).

Sleep stops the container (its filesystem stays), wake starts it again, delete removes it with
its anonymous volumes. The host port dormant allocated is published on 127.0.0.1 only; it is
bound when the container is made (the Engine API cannot change a stopped container's port
bindings), so a session keeps it while it sleeps (``ports_follow_start`` is false).

With a template's ``network`` no host port is used at all: the container joins that network
(made on demand, as a plain bridge network without dormant's labels, and never removed: it is
shared), and its endpoint is its address on that network and the template's port, which is also
where readiness is probed. dormant must be able to reach that address (on the engine's host, or
itself a container on that network).

Why aiodocker (and not the ``docker`` SDK in a thread): dormant is asyncio throughout; aiodocker
speaks the Engine API natively on the event loop, so a hundred concurrent operations cost no
threads, cancellation and timeouts work, and the label-filtered event stream is an ordinary async
read. The SDK would need a thread per blocking call (and one parked per event stream).

Errors are translated here, at the boundary: connection failures and timeouts become
:class:`RuntimeUnavailable`; engine answers that a retry can fix (a removal in progress, 502-504)
become :class:`TemporaryError`; the rest :class:`RuntimeFailure`. A name conflict is recognised by
its message, because engines disagree on the status (Docker answers 409, Podman 500).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import re
import signal
import socket
import struct
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar

import aiodocker
import aiohttp
from aiodocker.exceptions import DockerError

from dormant.clock import SystemClock
from dormant.errors import (
    DormantError,
    InvalidInput,
    RuntimeFailure,
    RuntimeUnavailable,
    TemporaryError,
)
from dormant.runtimes.base import (
    DEPLOYMENT_LABEL,
    MANAGED_LABEL,
    RETAIN_RULES,
    RETAIN_SESSION,
    SESSION_LABEL,
    ContainerInfo,
    ContainerSpec,
    ContainerStatus,
    Endpoint,
    Runtime,
    VolumeInfo,
    VolumeMount,
    describe_owner,
    owner_mismatch,
)
from dormant.runtimes.stats import (
    ContainerStats,
    cpu_percent_between,
    cpu_total,
    docker_cpu_percent,
    docker_memory,
)

log = logging.getLogger("dormant.runtimes.docker")

T = TypeVar("T")

DEFAULT_HOST = "unix:///var/run/docker.sock"
#: Seconds between the two stats reads when the engine gives no earlier CPU sample (Podman).
STATS_INTERVAL = 0.5
#: Lines of a container's output quoted in the error of a failed start.
LOG_TAIL_LINES = 30
_LOG_TAIL_CHARS = 2000

# Limits checked before the engine is asked (it accepts e.g. a negative memory limit).
MIN_MEMORY = 6 * 1024**2  # Docker refuses less than 6 MiB
MAX_MEMORY = 256 * 1024**3
MAX_CPUS = 256.0
MAX_PIDS = 1_000_000
MAX_TIMEOUT = 3600.0
_MEMORY = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_CAPABILITY = re.compile(r"^(ALL|(CAP_)?[A-Z][A-Z0-9_]{1,40})$")
_NETWORK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_TMPFS_OPTIONS = re.compile(r"^[A-Za-z0-9=,._-]{0,200}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,200}$")
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./-]{0,62}$")
_VOLUME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")
#: A container user: a name or uid, optionally ``:group`` (name or gid).
_USER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,63})?$")
_PATH_CHARS = re.compile(r"^/[^\x00-\x1f\x7f,:]{0,1023}$")
MIN_SHM = 1024**2
MAX_SHM = 64 * 1024**3

#: Crash points for chaos tests. A test arms one by creating the file named after it in
#: ``DORMANT_TEST_CRASH_DIR``; the next time dormant gets there it removes the file and SIGKILLs
#: itself: after the intent row is written and before the engine is asked (``after-intent``),
#: after the container is made (``after-create``), after the engine started it
#: (``after-start``), when it serves and the session's state is about to be written
#: (``before-state-update``), after a stop (``after-stop``) and after a removal
#: (``after-remove``), each before dormant records the result.
CRASH_POINTS = (
    "after-intent",
    "after-create",
    "after-start",
    "before-state-update",
    "after-stop",
    "after-remove",
)

# Engine messages (lower-cased) by meaning. Docker and Podman word these differently.
_CONFLICT_MARKS = ("already in use", "is already in use by", "name is already in use")
_TEMPORARY_MARKS = (
    "removal of container",
    "already in progress",
    "is being removed",
    "try again",
    "temporarily",
    "timed out",
    "timeout",
    "connection reset",
    "resource temporarily unavailable",
    "address already in use",  # often a connection's TIME_WAIT on the port: it passes
)
_IMAGE_MISSING_MARKS = ("no such image", "image not known", "failed to find image")


class ContainerMissing(RuntimeFailure):
    """The engine knows no container of that name (404)."""


class NameConflict(RuntimeFailure):
    """A container of that name exists already (Docker 409, Podman 500)."""


class ImageMissing(InvalidInput):
    """The template's image is not present on the engine (and dormant never pulls)."""


def parse_memory(value: str | int) -> int:
    """``"512m"``, ``"2g"``, ``"1.5GiB"`` or a number of bytes -> bytes, within Docker's bounds."""
    if isinstance(value, bool):
        raise InvalidInput(f"memory must be a size like 512m, not {value!r}")
    if isinstance(value, int):
        size = float(value)
    else:
        match = _MEMORY.match(str(value).strip())
        if not match:
            raise InvalidInput(f"memory must look like 512m or 2g, got {value!r}")
        size = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if not MIN_MEMORY <= size <= MAX_MEMORY:
        raise InvalidInput(f"memory must be between 6m and 256g, got {value!r}")
    return int(size)


def parse_shm_size(value: str | int) -> int:
    """``"64m"``, ``"1g"`` or bytes -> bytes, between 1m and 64g."""
    if isinstance(value, bool):
        raise InvalidInput(f"shm_size must be a size like 64m, not {value!r}")
    match = _MEMORY.match(str(value).strip())
    if not match:
        raise InvalidInput(f"shm_size must look like 64m or 1g, got {value!r}")
    size = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if not MIN_SHM <= size <= MAX_SHM:
        raise InvalidInput(f"shm_size must be between 1m and 64g, got {value!r}")
    return int(size)


def check_path(what: str, path: str, *, root_ok: bool = False) -> None:
    """An absolute path without ``..``, control characters, ``,`` or ``:`` (``InvalidInput``
    naming ``what`` otherwise)."""
    if (
        not isinstance(path, str)
        or not _PATH_CHARS.match(path)
        or ".." in path.split("/")
        or (path.rstrip("/") == "" and not root_ok)
    ):
        raise InvalidInput(
            f"{what} must be an absolute path{'' if root_ok else ' below /'} without '..', "
            f"',' or ':', got {path!r}"
        )


def validate_mounts(spec: ContainerSpec) -> None:
    """Volumes and binds: valid names and paths, a known retain rule, one mount per target."""
    targets: dict[str, str] = {path.rstrip("/"): "tmpfs" for path in spec.tmpfs}
    names: set[str] = set()
    for volume in spec.volumes:
        if not _VOLUME.match(volume.name):
            raise InvalidInput(f"volumes: {volume.name!r} is not a valid volume name")
        if volume.retain not in RETAIN_RULES:
            raise InvalidInput(f"volumes: {volume.name}: unknown retain rule {volume.retain!r}")
        if volume.name in names:
            raise InvalidInput(f"volumes: {volume.name} is mounted twice")
        names.add(volume.name)
        check_path(f"volumes: the target of {volume.name}", volume.target)
        _claim_target(targets, volume.target, f"volume {volume.name}")
    for bind in spec.binds:
        check_path("binds: a host path", bind.source)
        check_path(f"binds: the target of {bind.source}", bind.target)
        _claim_target(targets, bind.target, f"bind {bind.source}")


def _claim_target(targets: dict[str, str], target: str, what: str) -> None:
    key = target.rstrip("/")
    if key in targets:
        raise InvalidInput(f"{what} and {targets[key]} are both mounted at {target}")
    targets[key] = what


def validate_spec(spec: ContainerSpec) -> None:
    """Refuse, with a message that names the setting, anything the engine should not be given."""
    if not _NAME.match(spec.name):
        raise InvalidInput(f"invalid container name {spec.name!r}")
    if not spec.image or len(spec.image) > 300 or any(c.isspace() for c in spec.image):
        raise InvalidInput(f"the docker runtime needs an image; got {spec.image!r}")
    if spec.network is not None:
        if not _NETWORK.match(spec.network) or spec.network in ("none", "host", "bridge"):
            raise InvalidInput(
                f"network {spec.network!r} is not the name of a user-defined network"
            )
        if spec.network_mode is not None:
            raise InvalidInput("network and network_mode exclude each other; set one")
        if spec.port is not None:
            raise InvalidInput("a session on a network has no host port")
    elif spec.port is None:
        raise InvalidInput("the docker runtime needs a host port for every session")
    elif not 1024 <= spec.port <= 65535:
        raise InvalidInput(f"host port {spec.port} is outside 1024-65535")
    if spec.container_port is None:
        raise InvalidInput("the docker runtime needs the template's port (inside the container)")
    if not 1 <= spec.container_port <= 65535:
        raise InvalidInput(f"container port {spec.container_port} is outside 1-65535")
    res = spec.resources
    if res.cpus is not None and (not math.isfinite(res.cpus) or not 0.01 <= res.cpus <= MAX_CPUS):
        raise InvalidInput(f"cpus must be between 0.01 and {MAX_CPUS:g}, got {res.cpus!r}")
    if res.memory is not None:
        parse_memory(res.memory)
    if res.pids_limit is not None and not 1 <= res.pids_limit <= MAX_PIDS:
        raise InvalidInput(f"pids_limit must be between 1 and {MAX_PIDS}, got {res.pids_limit}")
    for what, value in (("start_timeout", spec.start_timeout), ("stop_timeout", spec.stop_timeout)):
        if not math.isfinite(value) or not 0 <= value <= MAX_TIMEOUT:
            raise InvalidInput(f"{what} must be between 0 and {MAX_TIMEOUT:g}s, got {value!r}")
    for path, options in spec.tmpfs.items():
        if not path.startswith("/") or ".." in path.split("/") or path == "/":
            raise InvalidInput(f"tmpfs path must be an absolute path below /, got {path!r}")
        if not _TMPFS_OPTIONS.match(options):
            raise InvalidInput(f"tmpfs options for {path} look wrong: {options!r}")
    for cap in spec.cap_drop:
        if not _CAPABILITY.match(cap):
            raise InvalidInput(f"cap_drop: {cap!r} is not a capability name (e.g. ALL, NET_RAW)")
    if spec.network_mode is not None and (
        not _NETWORK.match(spec.network_mode) or spec.network_mode.startswith("container")
    ):
        raise InvalidInput(f"network_mode {spec.network_mode!r} is not a network name")
    for key in spec.env:
        if not _ENV_NAME.match(key):
            raise InvalidInput(f"environment variable name {key!r} is not valid")
    if spec.user is not None and not _USER.match(spec.user):
        raise InvalidInput(
            f"user {spec.user!r} must be a user name or uid, optionally :group (name or gid)"
        )
    if spec.workdir is not None:
        check_path("workdir", spec.workdir, root_ok=True)
    if spec.shm_size is not None:
        parse_shm_size(spec.shm_size)
    validate_mounts(spec)


def container_config(spec: ContainerSpec) -> dict[str, Any]:
    """The Engine API body of ``POST /containers/create`` for ``spec`` (validated first)."""
    validate_spec(spec)
    assert spec.container_port is not None
    inner = f"{spec.container_port}/tcp"
    values = {
        "port": str(spec.container_port),
        "session": spec.session_id,
        "workdir": spec.workdir or "/",
    }
    env = {
        **spec.env,
        "PORT": str(spec.container_port),
        "DORMANT_SESSION": spec.session_id,
        "DORMANT_CONTAINER": spec.name,
    }
    host: dict[str, Any] = {
        "RestartPolicy": {"Name": "no"},
        "ReadonlyRootfs": spec.read_only,
    }
    if spec.port is not None and spec.network_mode not in ("none", "host"):
        host["PortBindings"] = {inner: [{"HostIp": "127.0.0.1", "HostPort": str(spec.port)}]}
    res = spec.resources
    if res.cpus is not None:
        host["NanoCpus"] = int(res.cpus * 1e9)
    if res.memory is not None:
        host["Memory"] = parse_memory(res.memory)
        host["MemorySwap"] = host["Memory"]  # no swap beyond the limit
    if res.pids_limit is not None:
        host["PidsLimit"] = res.pids_limit
    if spec.tmpfs:
        host["Tmpfs"] = dict(spec.tmpfs)
    if spec.cap_drop:
        host["CapDrop"] = list(spec.cap_drop)
    if spec.no_new_privileges:
        host["SecurityOpt"] = ["no-new-privileges"]
    if spec.network_mode is not None:
        host["NetworkMode"] = spec.network_mode
    if spec.network is not None:
        host["NetworkMode"] = spec.network
    if spec.shm_size is not None:
        host["ShmSize"] = parse_shm_size(spec.shm_size)
    mounts = [
        {"Type": "volume", "Source": v.name, "Target": v.target, "ReadOnly": v.read_only}
        for v in spec.volumes
    ] + [
        {"Type": "bind", "Source": b.source, "Target": b.target, "ReadOnly": b.read_only}
        for b in spec.binds
    ]
    if mounts:
        host["Mounts"] = mounts
    config: dict[str, Any] = {
        "Image": spec.image,
        "Env": [f"{k}={v}" for k, v in env.items()],
        "Labels": dict(spec.labels),
        "ExposedPorts": {inner: {}},
        "StopTimeout": math.ceil(spec.stop_timeout),
        "HostConfig": host,
    }
    if spec.command:
        config["Cmd"] = [part.format(**values) for part in spec.command]
    if spec.user is not None:
        config["User"] = spec.user
    if spec.workdir is not None:
        config["WorkingDir"] = spec.workdir
    return config


def _message(exc: DockerError) -> str:
    text = exc.message if isinstance(exc.message, str) else json.dumps(exc.message)
    return text.strip()


def translate(exc: DockerError, what: str) -> DormantError:
    """An aiodocker error as the dormant error it means (the caller raises it ``from exc``)."""
    message = _message(exc)
    low = message.lower()
    detail = f"{what}: {message} (HTTP {exc.status})"
    if exc.status == 900:  # aiodocker: could not connect
        return RuntimeUnavailable(f"{what}: container engine unreachable: {message}")
    if any(mark in low for mark in _CONFLICT_MARKS):
        return NameConflict(detail)
    if exc.status == 404:
        if any(mark in low for mark in _IMAGE_MISSING_MARKS):
            return ImageMissing(f"{what}: image not found on the engine ({message})")
        return ContainerMissing(detail)
    if exc.status in (502, 503, 504) or any(mark in low for mark in _TEMPORARY_MARKS):
        return TemporaryError(detail)
    return RuntimeFailure(detail)


def _status(state: dict[str, Any] | str | None) -> ContainerStatus:
    value = state.get("Status") if isinstance(state, dict) else state
    return ContainerStatus.RUNNING if value == "running" else ContainerStatus.STOPPED


def _parse_time(value: object) -> datetime | None:
    if isinstance(value, int | float) and value > 0:
        return datetime.fromtimestamp(value, tz=UTC)
    if isinstance(value, str) and value and not value.startswith("0001-"):
        with contextlib.suppress(ValueError):
            # Engines give nanoseconds; Python takes microseconds.
            trimmed = re.sub(r"(\.\d{6})\d+", r"\1", value.replace("Z", "+00:00"))
            parsed = datetime.fromisoformat(trimmed)
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


class DockerRuntime(Runtime):
    """Containers on a Docker Engine API at ``host`` (``unix://``, ``tcp://`` or ``http://``).

    ``host`` defaults to ``DORMANT_DOCKER_HOST``, then ``DOCKER_HOST``, then the usual socket.
    ``scope`` (labels, ``DORMANT_DOCKER_SCOPE``) confines this dormant to the containers that
    carry them: it puts them on every container it makes and lists, watches and reconciles
    only those, so that several dormant deployments (or test runs) can share one engine.
    """

    name: ClassVar[str] = "docker"
    #: Published ports are fixed when the container is made.
    ports_follow_start: ClassVar[bool] = False

    def __init__(
        self,
        host: str | None = None,
        *,
        api_timeout: float = 30.0,
        ping_timeout: float = 2.0,
        probe_host: str = "127.0.0.1",
        image_cache_seconds: float = 30.0,
        scope: dict[str, str] | None = None,
    ) -> None:
        self.host = (
            host
            or os.environ.get("DORMANT_DOCKER_HOST")
            or os.environ.get("DOCKER_HOST")
            or DEFAULT_HOST
        )
        self.api_timeout = api_timeout
        self.ping_timeout = ping_timeout
        self.probe_host = probe_host
        self.image_cache_seconds = image_cache_seconds
        self.scope = dict(scope or {})
        for key, value in self.scope.items():
            if not _LABEL.match(key) or key.startswith("dormant.") or not value or "," in value:
                raise InvalidInput(f"docker scope label {key}={value!r} is not valid")
        self._docker: aiodocker.Docker | None = None
        self._images: dict[str, float] = {}
        #: Networks seen or made by this process (sessions on a network: see the module).
        self._networks: set[str] = set()
        self._crash_dir = os.environ.get("DORMANT_TEST_CRASH_DIR") or None
        #: Containers this process made or adopted, by name: their session id.
        self._made: dict[str, str] = {}
        #: Set while the event stream of :meth:`watch` is connected.
        self.watching = asyncio.Event()

    def _crash_point(self, point: str) -> None:
        if self._crash_dir is None:
            return
        try:
            os.unlink(os.path.join(self._crash_dir, point))  # atomic: fires once
        except FileNotFoundError:
            return
        log.warning("crash point %s reached: SIGKILL (DORMANT_TEST_CRASH_DIR)", point)
        os.kill(os.getpid(), signal.SIGKILL)

    # plumbing ---------------------------------------------------------------------------------

    def _client(self) -> aiodocker.Docker:
        if self._docker is None:
            try:
                # A fixed API version: no extra /version round trip, and Podman and Docker both
                # serve 1.41.
                self._docker = aiodocker.Docker(url=self.host, api_version="v1.41")
            except ValueError as exc:
                raise InvalidInput(f"DORMANT_DOCKER_HOST {self.host!r}: {exc}") from exc
        return self._docker

    async def _call(
        self,
        what: str,
        fn: Callable[[aiodocker.Docker], Awaitable[T]],
        timeout: float | None = None,
    ) -> T:
        """Run one Engine API call with a deadline; every failure leaves as a DormantError."""
        docker = self._client()
        limit = self.api_timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(limit):
                return await fn(docker)
        except DockerError as exc:
            raise translate(exc, what) from exc
        except TimeoutError as exc:
            raise RuntimeUnavailable(
                f"{what}: the container engine did not answer within {limit:g}s"
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise RuntimeUnavailable(f"{what}: container engine unreachable: {exc}") from exc
        except (ValueError, KeyError, TypeError) as exc:  # a malformed answer
            raise RuntimeFailure(f"{what}: unexpected answer from the engine: {exc!r}") from exc

    async def _inspect_raw(self, name: str) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = await self._call(
                f"inspect {name}", lambda d: d.containers.container(name).show()
            )
        except ContainerMissing:
            return None
        return data

    # contract -------------------------------------------------------------------------------

    async def ping(self) -> None:
        async def _ping(d: aiodocker.Docker) -> None:
            async with d._query("_ping", versioned_api=False) as response:
                try:
                    await response.read()
                finally:
                    response.close()  # aiodocker's _query leaves the response to its caller

        try:
            await self._call("ping", _ping, timeout=self.ping_timeout)
        except RuntimeUnavailable:
            raise
        except DormantError as exc:
            raise RuntimeUnavailable(str(exc)) from exc

    @classmethod
    def validate(cls, spec: ContainerSpec) -> None:
        validate_spec(spec)

    async def check(self, spec: ContainerSpec) -> None:
        container_config(spec)
        assert spec.image is not None
        await self._ensure_image(spec.image)

    async def _ensure_image(self, image: str) -> None:
        """InvalidInput if the engine lacks ``image`` (dormant never pulls). Found images are
        remembered for ``image_cache_seconds`` so that a burst of creates costs one look-up."""
        loop = asyncio.get_running_loop()
        seen = self._images.get(image)
        if seen is not None and loop.time() - seen < self.image_cache_seconds:
            return
        try:
            await self._call(f"image {image}", lambda d: d.images.inspect(image))
        except (ImageMissing, ContainerMissing) as exc:
            raise ImageMissing(
                f"image {image!r} is not on the container engine at {self.host}; "
                "pull or import it there first"
            ) from exc
        self._images[image] = loop.time()

    async def _ensure_network(self, network: str) -> None:
        """Make ``network`` (a plain bridge network, without dormant's labels: it is shared
        and never removed by dormant) unless it exists."""
        if network in self._networks:
            return
        try:
            await self._call(f"network {network}", lambda d: d.networks.get(network))
        except ContainerMissing:
            try:
                await self._call(
                    f"create network {network}",
                    lambda d: d.networks.create({"Name": network, "Driver": "bridge"}),
                )
                log.info("network %s created", network)
            except RuntimeFailure:
                # Made by someone else meanwhile? Then it is there now; else the error stands.
                try:
                    await self._call(f"network {network}", lambda d: d.networks.get(network))
                except ContainerMissing:
                    raise RuntimeFailure(f"network {network} cannot be made") from None
        self._networks.add(network)

    async def create(self, spec: ContainerSpec) -> dict[str, Any]:
        self._crash_point("after-intent")
        config = container_config(spec)
        config["Labels"].update(self.scope)
        assert spec.image is not None
        await self._ensure_image(spec.image)
        if spec.network is not None:
            await self._ensure_network(spec.network)
        state: dict[str, Any] = {
            "host_port": spec.port,
            # where readiness is probed: the published port; with the host's network the
            # container's own port; with no network nothing (running is all one can see)
            "probe_port": {"none": None, "host": spec.container_port}.get(
                spec.network_mode or "", spec.port
            ),
            "start_timeout": spec.start_timeout,
            "stop_timeout": spec.stop_timeout,
        }
        if spec.network is not None:
            # the address is known once it runs: start looks it up
            state = {**state, "network": spec.network, "container_port": spec.container_port}
            del state["probe_port"]
        if spec.volumes:
            await self._ensure_volumes(spec)
            session_volumes = [v.name for v in spec.volumes if v.retain == RETAIN_SESSION]
            if session_volumes:
                state["session_volumes"] = session_volumes
        if self._made.get(spec.name) == spec.session_id:
            # Made by this process (a wake): one look instead of a create that conflicts.
            existing = await self._inspect_raw(spec.name)
            labels = ((existing or {}).get("Config") or {}).get("Labels") or {}
            if existing is not None and labels.get(SESSION_LABEL) == spec.session_id:
                return {**state, "id": existing["Id"]}
            self._made.pop(spec.name, None)
        for _ in range(3):
            try:
                created = await self._call(
                    f"create {spec.name}",
                    lambda d: d.containers.create(config, name=spec.name),
                )
                self._made[spec.name] = spec.session_id
                self._crash_point("after-create")
                if spec.volumes:
                    await self._check_volumes_after_create(spec)
                return {**state, "id": created.id, "made": True}
            except NameConflict:
                existing = await self._inspect_raw(spec.name)
            except ImageMissing:
                self._images.pop(spec.image, None)
                raise
            if existing is None:
                continue  # removed meanwhile: create again
            labels = (existing.get("Config") or {}).get("Labels") or {}
            if labels.get(SESSION_LABEL) == spec.session_id:
                log.info("create %s: adopting the existing container", spec.name)
                self._made[spec.name] = spec.session_id
                return {**state, "id": existing["Id"], "adopted": True}
            if labels.get(MANAGED_LABEL) != "true":
                raise RuntimeFailure(
                    f"a container named {spec.name} exists and is not managed by dormant; "
                    "remove or rename it"
                )
            # Another session's (perhaps another deployment's): never removed here. If it is
            # this deployment's orphan, the reconciler removes it on a settled read.
            raise RuntimeFailure(
                f"a container named {spec.name} exists for session "
                f"{labels.get(SESSION_LABEL)!r} (deployment "
                f"{labels.get(DEPLOYMENT_LABEL) or 'unknown'}); not touching it"
            )
        raise TemporaryError(f"create {spec.name}: the name stays taken; will retry")

    # volumes ----------------------------------------------------------------------------------

    async def _inspect_volume(self, name: str) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = await self._call(
                f"inspect volume {name}", lambda d: d._query_json(f"volumes/{name}")
            )
        except ContainerMissing:
            return None
        return data

    async def _ensure_volumes(self, spec: ContainerSpec) -> None:
        """Make each of the spec's volumes that is missing, with its labels; refuse one that
        exists with another owner (another deployment's, a hand-made one, another user's)."""
        for volume in spec.volumes:
            info = await self._inspect_volume(volume.name) or await self._create_volume(volume)
            _check_owner(volume, info)

    async def _create_volume(self, volume: VolumeMount) -> dict[str, Any]:
        body = json.dumps({"Name": volume.name, "Labels": {**volume.labels, **self.scope}})
        try:
            info: dict[str, Any] = await self._call(
                f"create volume {volume.name}",
                lambda d: d._query_json("volumes/create", method="POST", data=body),
            )
        except RuntimeFailure:
            found = await self._inspect_volume(volume.name)  # made meanwhile?
            if found is None:
                raise
            return found
        log.info("volume %s created (retain=%s)", volume.name, volume.retain)
        return info

    async def _check_volumes_after_create(self, spec: ContainerSpec) -> None:
        """A volume removed (by retention) between its check and the container's creation is
        made again by the engine, without labels: then the container is removed and the
        create retried, so that no volume dormant uses lacks its labels."""
        for volume in spec.volumes:
            info = await self._inspect_volume(volume.name)
            labels = (info or {}).get("Labels") or {}
            if labels.get(MANAGED_LABEL) == "true":
                continue
            log.warning(
                "volume %s lost its labels while %s was made: again", volume.name, spec.name
            )
            await self.remove(spec.name, {})
            if info is not None and not labels:
                with contextlib.suppress(DormantError):
                    await self.remove_volume(volume.name)
            raise TemporaryError(f"create {spec.name}: volume {volume.name} changed; will retry")

    async def list_volumes(self) -> list[VolumeInfo]:
        params = {"filters": json.dumps({"label": self._label_filter()})}
        data: dict[str, Any] = await self._call(
            "list volumes", lambda d: d._query_json("volumes", params=params)
        )
        infos = []
        for row in data.get("Volumes") or []:
            labels = dict(row.get("Labels") or {})
            if labels.get(MANAGED_LABEL) != "true":
                continue
            if any(labels.get(k) != v for k, v in self.scope.items()):
                continue
            infos.append(VolumeInfo(str(row["Name"]), labels, _parse_time(row.get("CreatedAt"))))
        return infos

    async def remove_volume(self, name: str) -> bool:
        if not _VOLUME.match(name):
            raise InvalidInput(f"invalid volume name {name!r}")

        async def _delete(d: aiodocker.Docker) -> None:
            async with d._query(f"volumes/{name}", method="DELETE") as response:
                try:
                    await response.read()
                finally:
                    response.close()

        try:
            await self._call(f"remove volume {name}", _delete)
        except ContainerMissing:
            return True
        except RuntimeFailure as exc:
            text = str(exc).lower()
            if "in use" in text or "being used" in text or "(http 409)" in text:
                return False
            raise
        return True

    async def _remove_session_volumes(self, names: list[str]) -> None:
        for volume in names:
            if not await self.remove_volume(volume):
                log.warning("session volume %s is still in use; retention removes it", volume)

    async def start(self, name: str, state: dict[str, Any]) -> dict[str, Any]:
        try:
            await self._call(f"start {name}", lambda d: d.containers.container(name).start())
        except ContainerMissing as exc:
            raise RuntimeFailure(f"{name} does not exist (create it first)") from exc
        except RuntimeFailure as exc:
            # The engine could not run it (bad command, bad mount): say so with its output.
            raise RuntimeFailure(f"{exc}; last output: {await self._log_tail(name)}") from exc
        self._crash_point("after-start")
        endpoint: Endpoint | None
        if "probe_port" in state and "network" not in state:
            # known since create: no look-up on the way to serving
            port = state["probe_port"]
            endpoint = None if port is None else Endpoint(self.probe_host, int(port))
        else:  # on a network (its address is new at every start), or an older state
            info = await self._inspect_raw(name)
            if info is None:
                raise RuntimeFailure(f"{name} vanished while starting")
            endpoint = _endpoint(info, self.probe_host)
            state = {**state, "id": info["Id"]}
            if "network" not in state:
                state["probe_port"] = None if endpoint is None else endpoint.port
            elif endpoint is None:
                raise RuntimeFailure(
                    f"{name} has no address on network {state['network']} "
                    f"(last output: {await self._log_tail(name)})"
                )
        timeout = float(state.get("start_timeout", 30.0))
        await self._wait_ready(name, endpoint, timeout)
        self._crash_point("before-state-update")
        if endpoint is None:
            return {k: v for k, v in state.items() if k != "endpoint"}
        return {**state, "endpoint": endpoint.as_dict()}

    async def _wait_ready(self, name: str, endpoint: Endpoint | None, timeout: float) -> None:
        """Until the endpoint accepts a connection; fail fast if the container exits."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        next_inspect = loop.time()
        delay = 0.005
        port = None if endpoint is None else endpoint.port
        while True:
            if endpoint is not None and await self._probe(endpoint.host, endpoint.port):
                return
            now = loop.time()
            if now >= next_inspect or port is None:
                info = await self._inspect_raw(name)
                if info is None:
                    raise RuntimeFailure(f"{name} vanished while starting")
                state = info.get("State") or {}
                if state.get("Status") != "running":
                    raise RuntimeFailure(
                        f"container exited with code {state.get('ExitCode')} while starting"
                        f"{'; ' + state['Error'] if state.get('Error') else ''}; "
                        f"last output: {await self._log_tail(name)}"
                    )
                if port is None:
                    return  # nothing published (network_mode none): running is all we can see
                next_inspect = now + 0.25
            if now > deadline:
                tail = await self._log_tail(name)
                with contextlib.suppress(DormantError):
                    await self.stop(name, {"stop_timeout": 1})
                raise RuntimeFailure(
                    f"container did not answer on port {port} within {timeout:g}s; "
                    f"last output: {tail}"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)

    async def _probe(self, host: str, port: int) -> bool:
        try:
            async with asyncio.timeout(1.0):
                reader, writer = await asyncio.open_connection(host, port)
        except (OSError, TimeoutError):
            return False
        # Reset rather than close: no TIME_WAIT left on an ephemeral port that a session's
        # published port might need next.
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        try:
            # A userland proxy (Docker's docker-proxy) accepts for a backend that does not
            # listen yet and then hangs up at once: a connection closed right away is no answer.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.005):
                    if await reader.read(1) == b"":
                        return False
            return True
        except OSError:
            return False
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def exec(self, name: str, command: list[str], timeout: float) -> tuple[int, str]:
        async def run(docker: aiodocker.Docker) -> tuple[int, str]:
            container = docker.containers.container(name)
            process = await container.exec(cmd=command, stdout=True, stderr=True)
            chunks: list[bytes] = []
            async with process.start(detach=False) as stream:
                while (message := await stream.read_out()) is not None:
                    chunks.append(message.data)
            info = await process.inspect()
            output = b"".join(chunks).decode(errors="replace")
            return int(info.get("ExitCode") or 0), output

        return await self._call(f"exec in {name}", run, timeout=timeout)

    async def stats(self, name: str, state: dict[str, Any]) -> ContainerStats | None:
        """One stats read (``stream=false``). Docker fills ``precpu_stats`` from a read a
        second earlier; Podman leaves it empty, and then a second read ``STATS_INTERVAL``
        later gives the CPU used in between, over the wall time between their stamps."""
        info = await self._inspect_raw(name)
        if info is None or _status(info.get("State")) is not ContainerStatus.RUNNING:
            return None
        limit = int((info.get("HostConfig") or {}).get("Memory") or 0) or None
        loop = asyncio.get_running_loop()
        first, first_at = await self._stats_raw(name), loop.time()
        if first is None:
            return None
        cpu = docker_cpu_percent(first)
        last = first
        if cpu is None:
            await asyncio.sleep(STATS_INTERVAL)
            second, second_at = await self._stats_raw(name), loop.time()
            if second is None:
                return None
            start, end = _parse_time(first.get("read")), _parse_time(second.get("read"))
            wall = (end - start).total_seconds() if start and end else second_at - first_at
            cpu = cpu_percent_between(cpu_total(second) - cpu_total(first), wall)
            last = second
        at = _parse_time(last.get("read")) or SystemClock().now()
        return ContainerStats(cpu, docker_memory(last), limit, at)

    async def _stats_raw(self, name: str) -> dict[str, Any] | None:
        """The engine's stats document, ``None`` when the container is gone or stopped (an
        engine answers a stopped container's stats with an empty or zeroed document)."""

        async def read(d: aiodocker.Docker) -> Any:
            # Podman sends no Content-Type here, so aiodocker's JSON helper hands back text.
            async with d._query(f"containers/{name}/stats", params={"stream": "0"}) as response:
                try:
                    body = await response.read()
                finally:
                    response.close()
            return json.loads(body) if body.strip() else None

        try:
            data = await self._call(f"stats {name}", read)
        except ContainerMissing:
            return None
        if not isinstance(data, dict) or not cpu_total(data):
            return None
        return data

    async def _log_tail(self, name: str) -> str:
        try:
            lines = await self._call(
                f"logs {name}",
                lambda d: d.containers.container(name).log(
                    stdout=True, stderr=True, tail=LOG_TAIL_LINES
                ),
                timeout=5.0,
            )
        except DormantError as exc:
            return f"(logs unavailable: {exc})"
        text = "".join(lines).strip()[-_LOG_TAIL_CHARS:]
        return text or "(no output)"

    async def stop(self, name: str, state: dict[str, Any]) -> dict[str, Any]:
        timeout = state.get("stop_timeout")
        params: dict[str, Any] = {} if timeout is None else {"t": math.ceil(float(timeout))}
        wait = self.api_timeout + float(timeout if timeout is not None else 10)
        with contextlib.suppress(ContainerMissing):
            await self._call(
                f"stop {name}", lambda d: d.containers.container(name).stop(**params), wait
            )
        self._crash_point("after-stop")
        return state

    async def remove(self, name: str, state: dict[str, Any]) -> None:
        self._made.pop(name, None)
        with contextlib.suppress(ContainerMissing):
            await self._call(
                f"remove {name}",
                lambda d: d.containers.container(name).delete(force=True, v=True),
                self.api_timeout + 15,
            )
        # Verified: an engine may answer before the container is really gone.
        for delay in (0.0, 0.05, 0.1, 0.2, 0.4):
            await asyncio.sleep(delay)
            if await self._inspect_raw(name) is None:
                self._crash_point("after-remove")
                volumes = state.get("session_volumes")
                if isinstance(volumes, list) and volumes:
                    await self._remove_session_volumes([str(v) for v in volumes])
                return
        raise TemporaryError(f"remove {name}: the container still exists; will retry")

    async def inspect(self, name: str) -> ContainerInfo | None:
        info = await self._inspect_raw(name)
        if info is None:
            return None
        config = info.get("Config") or {}
        return ContainerInfo(
            name=str(info.get("Name", name)).lstrip("/") or name,
            labels=dict(config.get("Labels") or {}),
            status=_status(info.get("State")),
            created_at=_parse_time(info.get("Created")),
            detail={
                "id": info.get("Id"),
                "port": _published_port(info),
                "exit_code": (info.get("State") or {}).get("ExitCode"),
            },
        )

    async def list_managed(self) -> list[ContainerInfo]:
        params = {"all": "1", "filters": json.dumps({"label": self._label_filter()})}
        rows: list[dict[str, Any]] = await self._call(
            "list containers", lambda d: d._query_json("containers/json", params=params)
        )
        infos = []
        for row in rows:
            if any((row.get("Labels") or {}).get(k) != v for k, v in self.scope.items()):
                continue  # an engine that ORs label filters: keep to the scope anyway
            names = row.get("Names") or [row.get("Id", "")]
            infos.append(
                ContainerInfo(
                    name=str(names[0]).lstrip("/"),
                    labels=dict(row.get("Labels") or {}),
                    status=_status(row.get("State")),
                    created_at=_parse_time(row.get("Created")),
                    detail={"id": row.get("Id"), "state": row.get("State")},
                )
            )
        return infos

    async def watch(self, notify: Callable[[str], None]) -> None:
        """Follow the engine's events for dormant's containers; raise when the stream breaks."""
        params = {"filters": json.dumps({"type": ["container"], "label": self._label_filter()})}
        docker = self._client()
        try:
            async with docker._query("events", params=params, timeout=None) as response:
                self.watching.set()
                try:
                    async for line in response.content:
                        if not line.strip():
                            continue
                        try:
                            event = json.loads(line)
                        except ValueError:
                            continue
                        attrs = (event.get("Actor") or {}).get("Attributes") or {}
                        action = event.get("Action") or event.get("status")
                        notify(f"{action} {attrs.get('name', '')}")
                finally:
                    self.watching.clear()
                    response.close()  # also when cancelled: aiodocker leaves it to us
        except DockerError as exc:
            raise translate(exc, "events") from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise RuntimeUnavailable(f"events: container engine unreachable: {exc}") from exc
        raise RuntimeUnavailable("events: the engine closed the event stream")

    def _label_filter(self) -> list[str]:
        return [f"{MANAGED_LABEL}=true", *(f"{k}={v}" for k, v in self.scope.items())]

    async def close(self) -> None:
        docker, self._docker = self._docker, None
        if docker is not None:
            with contextlib.suppress(Exception):
                await docker.close()


def _check_owner(volume: VolumeMount, info: dict[str, Any]) -> None:
    """Refuse to use a volume whose labels say it belongs to someone else."""
    labels = info.get("Labels") or {}
    if differ := owner_mismatch(volume, labels):
        raise RuntimeFailure(
            f"volume {volume.name} exists and {describe_owner(labels)}; not using it "
            f"(labels that differ: {', '.join(differ)})"
        )


def _exposed_port(info: dict[str, Any]) -> int | None:
    for key in (info.get("Config") or {}).get("ExposedPorts") or {}:
        return int(str(key).split("/")[0])
    return None


def _endpoint(info: dict[str, Any], probe_host: str) -> Endpoint | None:
    """Where a running container serves (and readiness is probed): the published port on
    ``probe_host``; with the host's network the container's own port there; on a network
    without a published port the container's address on it; with no network nothing
    (running is all that can be seen)."""
    mode = (info.get("HostConfig") or {}).get("NetworkMode")
    if mode == "none":
        return None
    if mode == "host":
        port = _exposed_port(info)
        return None if port is None else Endpoint(probe_host, port)
    if (published := _published_port(info)) is not None:
        return Endpoint(probe_host, published)
    networks = (info.get("NetworkSettings") or {}).get("Networks") or {}
    port = _exposed_port(info)
    ordered = [networks[mode]] if mode in networks else []
    for net in [*ordered, *networks.values()]:
        address = (net or {}).get("IPAddress")
        if address and port is not None:
            return Endpoint(str(address), port)
    return None


def _published_port(info: dict[str, Any]) -> int | None:
    ports = (info.get("NetworkSettings") or {}).get("Ports") or {}
    bindings = (info.get("HostConfig") or {}).get("PortBindings") or {}
    for source in (ports, bindings):
        for binds in source.values():
            for bind in binds or []:
                if bind.get("HostPort"):
                    return int(bind["HostPort"])
    return None
