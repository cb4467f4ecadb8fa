"""What a session is in Swarm terms: the service body of a :class:`ContainerSpec`, and what a
Swarm service cannot do (refused at template load, see :func:`validate_service`).

The body is derived from the docker runtime's own container body (``container_config``: the
same environment, command, user, mounts and limits), so that a template means the same on both
runtimes; only what Swarm's API 1.41 words differently is translated here.
"""

from __future__ import annotations

import re
from typing import Any

from dormant.errors import InvalidInput
from dormant.runtimes.base import MANAGED_LABEL, ContainerSpec
from dormant.runtimes.docker import container_config, parse_memory, validate_spec

#: A Swarm service name is a DNS label (the engine refuses ``_`` and ``.``).
_SERVICE_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_TMPFS_SIZE = re.compile(r"^size=(.+)$")
_TMPFS_MODE = re.compile(r"^mode=([0-7]{3,4})$")
#: Networks a session's service cannot join: Swarm's own routing mesh and the local ones.
_RESERVED_NETWORKS = ("ingress", "docker_gwbridge")


def validate_service(spec: ContainerSpec) -> None:
    """The docker runtime's checks, and a refusal (naming the setting) of what a Swarm
    service cannot do on API 1.41: a network mode (services join networks instead), the size
    of ``/dev/shm`` and no-new-privileges (neither is in the service API before 1.46), tmpfs
    options other than ``size=`` and ``mode=``."""
    validate_spec(spec)
    if not _SERVICE_NAME.match(spec.name):
        raise InvalidInput(
            f"invalid service name {spec.name!r} (Swarm wants a DNS label: A-Z a-z 0-9 -, "
            "at most 63)"
        )
    if spec.network_mode is not None:
        raise InvalidInput(
            "network_mode: a Swarm service has no network mode; use network (an overlay "
            "network) or neither (a host-mode published port)"
        )
    if spec.network in _RESERVED_NETWORKS:
        raise InvalidInput(f"network {spec.network!r} is Swarm's own; name an overlay network")
    if spec.shm_size is not None:
        raise InvalidInput("shm_size: Swarm services cannot size /dev/shm (Engine API 1.41)")
    if spec.no_new_privileges:
        raise InvalidInput(
            "no_new_privileges: Swarm services cannot set it before Engine API 1.46 (Docker "
            "27); the swarm runtime speaks 1.41"
        )
    for path, options in spec.tmpfs.items():
        tmpfs_options(path, options)


def tmpfs_options(path: str, options: str) -> dict[str, int]:
    """A docker tmpfs option string (``"size=64m,mode=1777"``) as Swarm's ``TmpfsOptions``."""
    found: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in options.split(","))):
        if part == "rw":
            continue  # the default
        if size := _TMPFS_SIZE.match(part):
            found["SizeBytes"] = parse_memory(size.group(1))
        elif mode := _TMPFS_MODE.match(part):
            found["Mode"] = int(mode.group(1), 8)
        else:
            raise InvalidInput(
                f"tmpfs {path}: Swarm tmpfs mounts take only size= and mode=, not {part!r}"
            )
    return found


def service_spec(
    spec: ContainerSpec,
    *,
    labels: dict[str, str],
    node: str | None,
    volume_driver: str | None,
) -> dict[str, Any]:
    """The body of ``POST /services/create`` for ``spec``: 0 replicas (made asleep), the
    session's labels on the service and (but ``dormant.managed``) on its task containers, its
    host port published in host mode (or its network joined), pinned to ``node`` when it
    mounts local volumes."""
    validate_service(spec)
    config = container_config(spec)
    host = config["HostConfig"]
    mounts: list[dict[str, Any]] = []
    for mount in host.get("Mounts") or []:
        if mount["Type"] == "volume":
            volume = next(v for v in spec.volumes if v.name == mount["Source"])
            options: dict[str, Any] = {"Labels": {**volume.labels, **labels}}
            if volume_driver is not None:
                options["DriverConfig"] = {"Name": volume_driver}
            mount = {**mount, "VolumeOptions": options}
        mounts.append(mount)
    for path, raw in (host.get("Tmpfs") or {}).items():
        mounts.append({"Type": "tmpfs", "Target": path, "TmpfsOptions": tmpfs_options(path, raw)})
    container: dict[str, Any] = {
        "Image": spec.image,
        # The session's labels but dormant.managed: a task's container is Swarm's, not one
        # the docker runtime on the same engine should list (and remove as an orphan).
        "Labels": {k: v for k, v in labels.items() if k != MANAGED_LABEL},
        "Env": config["Env"],
        "ReadOnly": bool(host.get("ReadonlyRootfs")),
        "StopGracePeriod": int(spec.stop_timeout * 1e9),
        "Mounts": mounts,
    }
    for key, value in (
        ("Args", config.get("Cmd")),  # like the container's Cmd: the image's entrypoint stays
        ("User", config.get("User")),
        ("Dir", config.get("WorkingDir")),
        ("CapabilityDrop", host.get("CapDrop")),
    ):
        if value:
            container[key] = value
    limits: dict[str, int] = {}
    reservations: dict[str, int] = {}
    if "NanoCpus" in host:
        # A limit only: reserving CPU would cap the sessions a node takes at its cores divided
        # by the template's cpus, idle or not, which is what dormant exists to avoid.
        limits["NanoCPUs"] = host["NanoCpus"]
    if "Memory" in host:
        limits["MemoryBytes"] = reservations["MemoryBytes"] = host["Memory"]
    if "PidsLimit" in host:
        limits["Pids"] = host["PidsLimit"]
    task: dict[str, Any] = {
        "ContainerSpec": container,
        "Resources": {"Limits": limits, "Reservations": reservations},
        # Not "none": on Engine 20.10 a service with that policy scaled to 0 and straight back
        # to 1 gets no task at all (its slot counts as done). A task that fails is restarted by
        # Swarm; one that fails while starting is reported and the service scaled to 0.
        "RestartPolicy": {"Condition": "on-failure"},
    }
    if node is not None and spec.volumes and volume_driver is None:
        task["Placement"] = {"Constraints": [f"node.id=={node}"]}
    endpoint: dict[str, Any] = {"Mode": "vip", "Ports": []}
    if spec.network is not None:
        task["Networks"] = [{"Target": spec.network}]
        endpoint = {"Mode": "dnsrr"}  # no virtual IP: the task's own address is the endpoint
    elif spec.port is not None:
        endpoint["Ports"] = [published(spec.container_port, spec.port)]
    return {
        "Name": spec.name,
        "Labels": dict(labels),
        "TaskTemplate": task,
        "Mode": {"Replicated": {"Replicas": 0}},
        "EndpointSpec": endpoint,
    }


def published(container_port: int | None, port: int) -> dict[str, Any]:
    """A host-mode published port (the ingress routing mesh is not used)."""
    return {
        "Protocol": "tcp",
        "TargetPort": container_port,
        "PublishedPort": port,
        "PublishMode": "host",
    }
