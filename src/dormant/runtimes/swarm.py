"""The ``swarm`` runtime: each session is a Docker Swarm service with (at most) one task.

Running is 1 replica, sleeping 0 replicas (the task's container is stopped and removed by Swarm;
the session's volumes keep its files), deleted is the service removed. The session's labels are
on the service and, through its ContainerSpec, on its task's containers, except
``dormant.managed=true``: a task's container is Swarm's to make and remove, and the docker
runtime on the same engine must not list it as one of its own (nor remove it as an orphan).
The service body is the docker runtime's container body in Swarm's words
(:mod:`dormant.runtimes.swarm_spec`); what a service cannot do (a network mode, ``shm_size``,
no-new-privileges on API 1.41) is refused when the template loads.

**Endpoint.** The session's host port is published in host mode (``PublishMode: host``: the
ingress routing mesh is not used) on the node that runs the task, and the endpoint is that
node's address (``Status.Addr``, ``probe_host`` when it is unspecified) and port. Host mode binds
the port on every interface of that node: keep session ports behind the node's firewall. A
service's published port can be changed by a service update, which happens at every wake anyway
(0 -> 1 replica), so the port is bound at ``start`` (``ports_follow_start`` is true): dormant
releases a sleeping session's port and gives it a free one at wake. With a template's
``network`` (an overlay network, made attachable when dormant makes it) nothing is published and
the endpoint is the task's address on that network: dormant (its proxy) must be attached to it.

**Volumes.** Named volumes are made, with dormant's labels, through the manager's engine (the
node dormant talks to), and a service that mounts them is pinned to that node
(``node.id==…``, kept in the state as ``"node"``), so that a user's ``retain = "user"`` volume is
found again by that user's next session. With ``DORMANT_SWARM_VOLUME_DRIVER`` (a volume driver
every node has, e.g. a cluster-wide one) the mounts name that driver and no node is pinned.

**Status.** A service is RUNNING when it wants a replica and a task of it runs; a service that
wants one whose task is not running (it failed and waits for Swarm's restart, or it is pending
with no node that can take it) is STOPPED, like an exited container: dormant's health and
reconcile repair it (a ``start`` forces a new task). Swarm restarts a task that fails
(``on-failure``: with ``none``, Engine 20.10 gives a service scaled to 0 and straight back to 1
no task at all); one that fails while starting is reported with its output and scaled to 0.

Task containers are reached through the manager node's own engine (readiness output, ``exec``
probes, stats), which is where every task runs on a single node and where every pinned one
runs; an unpinned task on another node answers no stats and no exec.

Errors are translated at the boundary inherited from the docker runtime (one Engine API client,
its error translation, image check, volume handling and readiness probe); a name conflict and an
out-of-sequence update are recognised here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any, ClassVar

import aiodocker
import aiohttp
from aiodocker.exceptions import DockerError

from dormant.errors import DormantError, RuntimeFailure, RuntimeUnavailable, TemporaryError
from dormant.runtimes.base import (
    DEPLOYMENT_LABEL,
    MANAGED_LABEL,
    RETAIN_SESSION,
    SESSION_LABEL,
    ContainerInfo,
    ContainerSpec,
    Endpoint,
)
from dormant.runtimes.docker import ContainerMissing, translate
from dormant.runtimes.stats import ContainerStats
from dormant.runtimes.swarm_api import (
    SERVICE_LABEL,
    SwarmApi,
    container_id,
    published_port,
    replica_count,
    service_info,
    target_port,
    task_state,
    wanted_running,
)
from dormant.runtimes.swarm_spec import published, service_spec, validate_service


class SwarmRuntime(SwarmApi):
    """Sessions as services on the Swarm whose manager's Engine API is at ``host``
    (``DORMANT_SWARM_HOST``, then ``DOCKER_HOST``, then the usual socket). ``scope`` confines
    it to services and volumes carrying those labels, as for the docker runtime."""

    name: ClassVar[str] = "swarm"
    ports_follow_start: ClassVar[bool] = True

    # contract ---------------------------------------------------------------------------------

    @classmethod
    def validate(cls, spec: ContainerSpec) -> None:
        validate_service(spec)

    async def check(self, spec: ContainerSpec) -> None:
        service_spec(spec, labels=dict(spec.labels), node=None, volume_driver=self.volume_driver)
        assert spec.image is not None
        await self._ensure_image(spec.image)

    async def create(self, spec: ContainerSpec) -> dict[str, Any]:
        self._crash_point("after-intent")
        labels = {**spec.labels, **self.scope}
        validate_service(spec)
        assert spec.image is not None
        await self._ensure_image(spec.image)
        state: dict[str, Any] = {
            "host_port": spec.port,
            "container_port": spec.container_port,
            "start_timeout": spec.start_timeout,
            "stop_timeout": spec.stop_timeout,
        }
        node = None
        if spec.network is not None:
            await self._ensure_overlay(spec.network)
            state["network"] = spec.network
        if spec.volumes:
            await self._ensure_volumes(spec)
            if self.volume_driver is None:
                node = state["node"] = await self._node_id()
            session_volumes = [v.name for v in spec.volumes if v.retain == RETAIN_SESSION]
            if session_volumes:
                state["session_volumes"] = session_volumes
        body = service_spec(spec, labels=labels, node=node, volume_driver=self.volume_driver)
        for _ in range(3):
            existing = await self._service(spec.name)
            if existing is not None:
                return {**state, **self._adopt(spec, existing)}

            async def make(d: aiodocker.Docker) -> Any:
                try:
                    return await d._query_json(
                        "services/create", method="POST", data=json.dumps(body)
                    )
                except DockerError as exc:
                    if exc.status == 409:  # made meanwhile: look again
                        return None
                    raise

            made = await self._call(f"create {spec.name}", make)
            if made is None:
                continue
            self._known.add(spec.name)
            self._crash_point("after-create")
            return {**state, "service_id": made["ID"], "made": True}
        raise TemporaryError(f"create {spec.name}: the name stays taken; will retry")

    def _adopt(self, spec: ContainerSpec, service: dict[str, Any]) -> dict[str, Any]:
        labels = (service.get("Spec") or {}).get("Labels") or {}
        if labels.get(SESSION_LABEL) == spec.session_id:
            self._known.add(spec.name)
            return {"service_id": service["ID"], "adopted": True}
        if labels.get(MANAGED_LABEL) != "true":
            raise RuntimeFailure(
                f"a service named {spec.name} exists and is not managed by dormant; "
                "remove or rename it"
            )
        raise RuntimeFailure(
            f"a service named {spec.name} exists for session {labels.get(SESSION_LABEL)!r} "
            f"(deployment {labels.get(DEPLOYMENT_LABEL) or 'unknown'}); not touching it"
        )

    async def start(self, name: str, state: dict[str, Any]) -> dict[str, Any]:
        port: int | None = None
        earlier: set[str] = set()  # tasks from before an update: not the one to wait for

        async def wake(spec: dict[str, Any]) -> dict[str, Any] | None:
            nonlocal port, earlier
            current = published_port(spec)
            port = state.get("port") or current
            tasks = await self._tasks(service=[name])
            running = [t for t in tasks if task_state(t) == "running" and wanted_running(t)]
            replicas = replica_count(spec)
            earlier = {str(t["ID"]) for t in tasks if t not in running}
            if replicas == 1 and running and (port is None or port == current):
                return None  # serving already: nothing to change
            earlier = {str(t["ID"]) for t in tasks}
            spec["Mode"] = {"Replicated": {"Replicas": 1}}
            if port is not None and port != current and "Networks" not in spec["TaskTemplate"]:
                target = target_port(spec) or state.get("container_port")
                spec["EndpointSpec"] = {"Mode": "vip", "Ports": [published(target, int(port))]}
            elif replicas == 1:  # wanted, not running (exited, failed): a new task
                template = spec["TaskTemplate"]
                template["ForceUpdate"] = int(template.get("ForceUpdate") or 0) + 1
            return spec

        service = await self._change(name, wake)
        if service is None:
            raise RuntimeFailure(f"{name} does not exist (create it first)")
        self._known.add(name)
        self._crash_point("after-start")
        timeout = float(state.get("start_timeout", 30.0))
        task, endpoint = await self._wait_task(name, state, port, timeout, earlier)
        self._crash_point("before-state-update")
        return {
            **state,
            "service_id": service["ID"],
            "host_port": port,
            "task": task["ID"],
            "endpoint": endpoint.as_dict(),
        }

    async def _wait_task(
        self,
        name: str,
        state: dict[str, Any],
        port: int | None,
        timeout: float,
        earlier: set[str],
    ) -> tuple[dict[str, Any], Endpoint]:
        """Until a task of the service runs (on ``port``) and its endpoint accepts a
        connection; fail fast when the task fails."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        delay = 0.01
        last = "no task yet"
        while True:
            # every task (a failed one's desired state is soon "shutdown", with a new one
            # coming up after Swarm's restart delay: its failure is the answer)
            for task in await self._tasks(service=[name]):
                if task["ID"] in earlier:
                    continue
                status = task.get("Status") or {}
                if task_state(task) in ("failed", "rejected", "complete", "shutdown"):
                    output = await self._task_log(task)
                    with contextlib.suppress(DormantError):
                        await self.stop(name, {"stop_timeout": 1})  # no restarts by Swarm
                    raise RuntimeFailure(
                        f"the task of {name} ended while starting ({task_state(task)}: "
                        f"{status.get('Err') or status.get('Message')}); last output: {output}"
                    )
                if not wanted_running(task):
                    continue
                last = f"task {task_state(task)}: {status.get('Err') or status.get('Message')}"
                endpoint = await self._task_endpoint(task, state)
                if endpoint is None or (port is not None and endpoint.port != port):
                    continue
                if await self._probe(endpoint.host, endpoint.port):
                    return task, endpoint
            if loop.time() > deadline:
                with contextlib.suppress(DormantError):
                    await self.stop(name, {"stop_timeout": 1})
                raise RuntimeFailure(f"{name} did not serve within {timeout:g}s ({last})")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)

    async def stop(self, name: str, state: dict[str, Any]) -> dict[str, Any]:
        async def sleep(spec: dict[str, Any]) -> dict[str, Any] | None:
            if replica_count(spec) == 0:
                return None
            spec["Mode"] = {"Replicated": {"Replicas": 0}}
            return spec

        if await self._change(name, sleep) is not None:
            timeout = float(state.get("stop_timeout") or 10) + self.api_timeout
            await self._wait_no_task(name, timeout)
        self._crash_point("after-stop")
        return state

    async def remove(self, name: str, state: dict[str, Any]) -> None:
        self._known.discard(name)

        async def delete(d: aiodocker.Docker) -> None:
            async with d._query(f"services/{name}", method="DELETE") as response:
                try:
                    await response.read()
                finally:
                    response.close()

        if await self._service(name) is not None:
            with contextlib.suppress(ContainerMissing):
                await self._call(f"remove {name}", delete)
        # Its task containers go after the service; wait for them, so that its port and its
        # volumes are free when this returns.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(state.get("stop_timeout") or 10) + self.api_timeout
        delay = 0.02
        while await self._task_containers(name):
            if loop.time() > deadline:
                raise TemporaryError(f"remove {name}: its containers remain; will retry")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)
        self._crash_point("after-remove")
        volumes = state.get("session_volumes")
        if isinstance(volumes, list) and volumes:
            await self._remove_session_volumes([str(v) for v in volumes])

    async def inspect(self, name: str) -> ContainerInfo | None:
        service = await self._service(name)
        if service is None:
            return None
        running = await self._running_task(name) if replica_count(service["Spec"]) else None
        return service_info(service, running)

    async def list_managed(self) -> list[ContainerInfo]:
        params = {"filters": json.dumps({"label": self._label_filter()})}
        services: list[dict[str, Any]] = await self._call(
            "list services", lambda d: d._query_json("services", params=params)
        )
        tasks = await self._tasks(**{"desired-state": ["running"]})
        running = {t.get("ServiceID"): t for t in tasks if task_state(t) == "running"}
        infos = []
        for service in services:
            labels = (service.get("Spec") or {}).get("Labels") or {}
            if any(labels.get(k) != v for k, v in self.scope.items()):
                continue
            if labels.get(MANAGED_LABEL) != "true":
                continue
            info = service_info(
                service, running.get(service["ID"]) if replica_count(service["Spec"]) else None
            )
            self._known.add(info.name)
            infos.append(info)
        return infos

    async def stats(self, name: str, state: dict[str, Any]) -> ContainerStats | None:
        """The running task's container's stats, read through the manager node's engine."""
        with contextlib.suppress(ContainerMissing):
            task = await self._running_task(name)
            container = container_id(task) if task is not None else None
            if container:
                return await super().stats(container, state)
        return None

    async def exec(self, name: str, command: list[str], timeout: float) -> tuple[int, str]:
        task = await self._running_task(name)
        container = container_id(task) if task is not None else None
        if not container:
            raise RuntimeFailure(f"{name} has no running task to run a command in")
        return await super().exec(container, command, timeout)

    async def watch(self, notify: Callable[[str], None]) -> None:
        """Service events (the engine cannot filter them by label: those of the services this
        process knows as dormant's are passed on) and the events of the task containers,
        which carry the session's labels (but ``dormant.managed``)"""
        filters = {"type": ["service", "container"]}
        params = {"filters": json.dumps(filters)}
        wanted = dict(self.scope)
        docker = self._client()
        try:
            async with docker._query("events", params=params, timeout=None) as response:
                self.watching.set()
                try:
                    async for line in response.content:
                        if description := self._describe(line, wanted):
                            notify(description)
                finally:
                    self.watching.clear()
                    response.close()
        except DockerError as exc:
            raise translate(exc, "events") from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise RuntimeUnavailable(f"events: container engine unreachable: {exc}") from exc
        raise RuntimeUnavailable("events: the engine closed the event stream")

    def _describe(self, line: bytes, wanted: dict[str, str]) -> str | None:
        try:
            event = json.loads(line)
        except ValueError:
            return None
        if not isinstance(event, dict):
            return None
        attrs = (event.get("Actor") or {}).get("Attributes") or {}
        action = event.get("Action") or event.get("status")
        if event.get("Type") == "service":
            name = str(attrs.get("name", ""))
            return f"service {action} {name}" if name in self._known else None
        if SESSION_LABEL not in attrs or any(attrs.get(k) != v for k, v in wanted.items()):
            return None  # not a task container of dormant's (they carry the session label)
        return f"task {action} {attrs.get(SERVICE_LABEL) or attrs.get('name', '')}"
