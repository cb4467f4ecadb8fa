"""The Swarm manager's Engine API as the swarm runtime uses it: services read and updated
(again when Swarm moved their version on), tasks and the nodes they run on, the task's endpoint,
overlay networks and volumes (with the operator's volume driver), on the docker runtime's one
client and error translation (:class:`~dormant.runtimes.docker.DockerRuntime`)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import aiodocker
from aiodocker.exceptions import DockerError

from dormant.errors import RuntimeFailure, TemporaryError
from dormant.runtimes.base import ContainerInfo, ContainerStatus, Endpoint
from dormant.runtimes.docker import DEFAULT_HOST, ContainerMissing, DockerRuntime, _parse_time

log = logging.getLogger("dormant.runtimes.swarm")

#: Task states whose container may exist and run (a new or pending task has none yet).
_LIVE = frozenset({"assigned", "accepted", "preparing", "ready", "starting", "running"})
SERVICE_LABEL = "com.docker.swarm.service.name"


class SwarmApi(DockerRuntime):
    """The plumbing of :class:`~dormant.runtimes.swarm.SwarmRuntime` (see there)."""

    def __init__(
        self,
        host: str | None = None,
        scope: dict[str, str] | None = None,
        *,
        volume_driver: str | None = None,
        api_timeout: float = 30.0,
        probe_host: str = "127.0.0.1",
    ) -> None:
        super().__init__(
            host
            or os.environ.get("DORMANT_SWARM_HOST")
            or os.environ.get("DOCKER_HOST")
            or DEFAULT_HOST,
            api_timeout=api_timeout,
            probe_host=probe_host,
            scope=scope,
        )
        self.volume_driver = volume_driver
        self._node: str | None = None
        self._addresses: dict[str, str] = {}
        #: Names of dormant's services seen by this process: their events are followed.
        self._known: set[str] = set()

    # plumbing ---------------------------------------------------------------------------------

    async def _api(self, what: str, path: str, **kw: Any) -> Any:
        """One Engine API call; ``None`` for a 404 (the object does not exist)."""
        try:
            return await self._call(what, lambda d: d._query_json(path, **kw))
        except ContainerMissing:
            return None

    async def _service(self, name: str) -> dict[str, Any] | None:
        found: dict[str, Any] | None = await self._api(
            f"inspect service {name}", f"services/{name}"
        )
        if found is not None and (found.get("Spec") or {}).get("Name") != name:
            return None  # matched an id or a prefix of one: not the service of that name
        return found

    async def _tasks(self, **filters: list[str]) -> list[dict[str, Any]]:
        params = {"filters": json.dumps(filters)}
        rows: list[dict[str, Any]] = await self._call(
            "list tasks", lambda d: d._query_json("tasks", params=params)
        )
        return rows

    async def _running_task(self, name: str) -> dict[str, Any] | None:
        tasks = await self._tasks(service=[name], **{"desired-state": ["running"]})
        return next((t for t in tasks if task_state(t) == "running"), None)

    async def _node_id(self) -> str:
        """The manager node dormant talks to (where its volumes are made)."""
        if self._node is None:
            info = await self._call("info", lambda d: d._query_json("info"))
            node = ((info or {}).get("Swarm") or {}).get("NodeID")
            if not node:
                raise RuntimeFailure(f"the engine at {self.host} is not part of a Swarm")
            self._node = str(node)
        return self._node

    async def _node_address(self, node: str) -> str:
        if node not in self._addresses:
            info = await self._api(f"inspect node {node}", f"nodes/{node}") or {}
            address = str((info.get("Status") or {}).get("Addr") or "")
            self._addresses[node] = address if address not in ("", "0.0.0.0") else self.probe_host
        return self._addresses[node]

    async def _change(
        self, name: str, change: Callable[[dict[str, Any]], Awaitable[dict[str, Any] | None]]
    ) -> dict[str, Any] | None:
        """Read the service, let ``change`` edit (a copy of) its spec (``None``: nothing to
        change) and update it; again when Swarm itself updated it meanwhile (its update status
        moves the version on). The service as read, ``None`` if it does not exist."""
        for _ in range(8):
            service = await self._service(name)
            if service is None:
                return None
            wanted = await change(json.loads(json.dumps(service["Spec"])))
            if wanted is None or await self._update(service, wanted):
                return service
        raise TemporaryError(f"update {name}: it keeps changing; will retry")

    async def _update(self, service: dict[str, Any], spec: dict[str, Any]) -> bool:
        """Update the service to ``spec``; False when its version moved on meanwhile."""
        version = (service.get("Version") or {}).get("Index")
        path = f"services/{service['ID']}/update"

        async def update(d: aiodocker.Docker) -> bool:
            try:
                await d._query_json(
                    path, method="POST", params={"version": str(version)}, data=json.dumps(spec)
                )
            except DockerError as exc:
                if "out of sequence" in str(exc.message):
                    return False
                raise
            return True

        return await self._call(f"update {spec['Name']}", update)

    async def _ensure_overlay(self, network: str) -> None:
        """Make ``network`` an attachable overlay network (without dormant's labels: shared,
        never removed by dormant) unless it exists."""
        if network in self._networks:
            return
        if await self._api(f"network {network}", f"networks/{network}") is None:
            body = json.dumps({"Name": network, "Driver": "overlay", "Attachable": True})
            try:
                await self._api(
                    f"create network {network}", "networks/create", method="POST", data=body
                )
                log.info("overlay network %s created", network)
            except RuntimeFailure:
                if await self._api(f"network {network}", f"networks/{network}") is None:
                    raise
        self._networks.add(network)

    async def _task_endpoint(self, task: dict[str, Any], state: dict[str, Any]) -> Endpoint | None:
        if task_state(task) != "running":
            return None
        network = state.get("network")
        if network is not None:
            port = state.get("container_port")
            for attached in task.get("NetworksAttachments") or []:
                if (attached.get("Network") or {}).get("Spec", {}).get("Name") != network:
                    continue
                for address in attached.get("Addresses") or []:
                    if port is not None:
                        return Endpoint(str(address).split("/")[0], int(port))
            return None
        for bound in ((task.get("Status") or {}).get("PortStatus") or {}).get("Ports") or []:
            if bound.get("PublishedPort"):
                node = str(task.get("NodeID") or "")
                return Endpoint(await self._node_address(node), int(bound["PublishedPort"]))
        return None

    async def _task_log(self, task: dict[str, Any]) -> str:
        container = container_id(task)
        return await self._log_tail(container) if container else "(no container)"

    async def _wait_no_task(self, name: str, timeout: float) -> None:
        """Until no task of the service runs (or is on its way to)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        delay = 0.02
        while True:
            tasks = await self._tasks(service=[name])
            if not any(task_state(t) in _LIVE for t in tasks):
                return
            if loop.time() > deadline:
                raise TemporaryError(f"stop {name}: its task still runs; will retry")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)

    async def _task_containers(self, name: str) -> list[dict[str, Any]]:
        params = {"all": "1", "filters": json.dumps({"label": [f"{SERVICE_LABEL}={name}"]})}
        rows: list[dict[str, Any]] = await self._call(
            f"containers of {name}", lambda d: d._query_json("containers/json", params=params)
        )
        return rows


def task_state(task: dict[str, Any]) -> str:
    return str((task.get("Status") or {}).get("State") or "")


def wanted_running(task: dict[str, Any]) -> bool:
    return task.get("DesiredState") == "running"


def container_id(task: dict[str, Any]) -> str | None:
    found = ((task.get("Status") or {}).get("ContainerStatus") or {}).get("ContainerID")
    return str(found) if found else None


def replica_count(spec: dict[str, Any]) -> int:
    return int(((spec.get("Mode") or {}).get("Replicated") or {}).get("Replicas") or 0)


def published_port(spec: dict[str, Any]) -> int | None:
    for port in (spec.get("EndpointSpec") or {}).get("Ports") or []:
        if port.get("PublishedPort"):
            return int(port["PublishedPort"])
    return None


def target_port(spec: dict[str, Any]) -> int | None:
    for port in (spec.get("EndpointSpec") or {}).get("Ports") or []:
        return int(port["TargetPort"])
    return None


def service_info(service: dict[str, Any], running: dict[str, Any] | None) -> ContainerInfo:
    spec = service.get("Spec") or {}
    return ContainerInfo(
        name=str(spec.get("Name")),
        labels=dict(spec.get("Labels") or {}),
        status=ContainerStatus.RUNNING if running is not None else ContainerStatus.STOPPED,
        created_at=_parse_time(service.get("CreatedAt")),
        detail={
            "id": service.get("ID"),
            "port": published_port(spec),
            "replicas": replica_count(spec),
            "task": None if running is None else running.get("ID"),
            "node": None if running is None else running.get("NodeID"),
        },
    )
