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

Errors are translated at the boundary (``docker_errors``): connection failures and timeouts
become :class:`RuntimeUnavailable`; engine answers that a retry can fix (a removal in progress, a
host port still held, 502-504) become :class:`TemporaryError`; the rest :class:`RuntimeFailure`.
Docker Engine and Podman answer the same situations with different statuses and words; where
they differ, the code says which does what (and the README lists it).

The runtime is built in layers, one concept a module: ``docker_spec`` (templates checked, the
create body), ``docker_base`` (the client, its API version, one call, image and network),
``docker_volumes``, ``docker_ready`` (endpoint and readiness) and this module (the lifecycle,
stats, listing and events). Every public name stays importable from here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Callable
from typing import Any, ClassVar

import aiodocker
import aiohttp
from aiodocker.exceptions import DockerError

from dormant.clock import SystemClock
from dormant.errors import (
    DormantError,
    RuntimeFailure,
    RuntimeUnavailable,
    TemporaryError,
)
from dormant.runtimes.base import (
    DEPLOYMENT_LABEL,
    MANAGED_LABEL,
    RETAIN_SESSION,
    SESSION_LABEL,
    ContainerInfo,
    ContainerSpec,
    ContainerStatus,
    Endpoint,
)
from dormant.runtimes.docker_base import (
    API_VERSION,
    CRASH_POINTS,
    DEFAULT_HOST,
    LOG_TAIL_LINES,
    STATS_INTERVAL,
    DockerBase,
    _parse_time,
    _status,
)
from dormant.runtimes.docker_errors import (
    ContainerMissing,
    ImageMissing,
    NameConflict,
    refuses_api_version,
    translate,
)
from dormant.runtimes.docker_ready import DockerReadiness, _endpoint, _published_port
from dormant.runtimes.docker_spec import (
    MAX_CPUS,
    MAX_MEMORY,
    MAX_PIDS,
    MAX_SHM,
    MAX_TIMEOUT,
    MIN_MEMORY,
    MIN_SHM,
    check_path,
    container_config,
    parse_memory,
    parse_shm_size,
    validate_mounts,
    validate_spec,
)
from dormant.runtimes.stats import (
    ContainerStats,
    cpu_percent_between,
    cpu_total,
    docker_cpu_percent,
    docker_memory,
)

__all__ = [
    "API_VERSION",
    "CRASH_POINTS",
    "DEFAULT_HOST",
    "LOG_TAIL_LINES",
    "MAX_CPUS",
    "MAX_MEMORY",
    "MAX_PIDS",
    "MAX_SHM",
    "MAX_TIMEOUT",
    "MIN_MEMORY",
    "MIN_SHM",
    "STATS_INTERVAL",
    "ContainerMissing",
    "DockerBase",
    "DockerRuntime",
    "ImageMissing",
    "NameConflict",
    "_parse_time",
    "_status",
    "check_path",
    "container_config",
    "parse_memory",
    "parse_shm_size",
    "refuses_api_version",
    "translate",
    "validate_mounts",
    "validate_spec",
]

log = logging.getLogger("dormant.runtimes.docker")


class DockerRuntime(DockerReadiness):
    """Containers on a Docker Engine API at ``host`` (``unix://``, ``tcp://`` or ``http://``).

    ``host`` defaults to ``DORMANT_DOCKER_HOST``, then ``DOCKER_HOST``, then the usual socket.
    ``scope`` (labels, ``DORMANT_DOCKER_SCOPE``) confines this dormant to the containers that
    carry them: it puts them on every container it makes and lists, watches and reconciles
    only those, so that several dormant deployments (or test runs) can share one engine.
    """

    name: ClassVar[str] = "docker"
    #: Published ports are fixed when the container is made.
    ports_follow_start: ClassVar[bool] = False

    @classmethod
    def validate(cls, spec: ContainerSpec) -> None:
        validate_spec(spec)

    async def check(self, spec: ContainerSpec) -> None:
        container_config(spec)
        assert spec.image is not None
        await self._ensure_image(spec.image)

    async def create(self, spec: ContainerSpec) -> dict[str, Any]:
        self._crash_point("after-intent")
        config = container_config(spec)
        config["Labels"].update(self.scope)
        assert spec.image is not None
        await self._ensure_image(spec.image)
        if spec.network is not None:
            config["HostConfig"]["NetworkMode"] = await self._ensure_network(spec.network)
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
        """One stats read (``stream=false``). Docker Engine answers it after about a second,
        with ``precpu_stats`` filled from its own earlier sample (20.10 waits as long with
        ``one-shot``, which only drops that sample: not used); Podman answers at once and
        leaves it empty, and then a second read ``STATS_INTERVAL`` later gives the CPU used in
        between, over the wall time between their stamps."""
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
            if refuses_api_version(exc):  # the next watch speaks one the engine serves
                with contextlib.suppress(DormantError):
                    await self._negotiate("events", exc)
            raise translate(exc, "events") from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise RuntimeUnavailable(f"events: container engine unreachable: {exc}") from exc
        raise RuntimeUnavailable("events: the engine closed the event stream")
