"""The single-node Swarm the swarm runtime is tested on: the project's Docker Engine
(``scripts/docker-up.sh``, ``DORMANT_DOCKER_ENGINE_HOST``), which is also a Swarm manager.

Every service and volume a test run makes carries ``testrun=<RUN_ID>`` (the runtime's scope);
:func:`purge_swarm` removes this run's services, waits for their task containers to go, and
removes this run's volumes. If the engine cannot be started the tests fail; they never skip.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from .engines import DOCKER, RUN_ID, RUN_LABEL, api_get, wait_for

TASK_LABEL = "com.docker.swarm.task.id"
SERVICE_LABEL = "com.docker.swarm.service.name"


def swarm_host() -> str:
    """The Swarm manager's Engine API (Docker Engine started by the project's script)."""
    host = DOCKER.host()
    info = api_get(host, "/info")
    if (info.get("Swarm") or {}).get("LocalNodeState") != "active":
        pytest.fail(f"the Docker Engine at {host} is not an active Swarm node (docker-up.sh)")
    return host


def run_services() -> dict[str, dict[str, Any]]:
    """This run's services by name, as the engine lists them."""
    rows = api_get(swarm_host(), "/services", filters={"label": [f"{RUN_LABEL}={RUN_ID}"]})
    return {str(r["Spec"]["Name"]): r for r in rows}


def service(name: str) -> dict[str, Any]:
    """``docker service inspect NAME``."""
    return dict(json.loads(DOCKER.cli("service", "inspect", name).stdout)[0])


def replicas(name: str) -> int:
    return int(service(name)["Spec"]["Mode"]["Replicated"]["Replicas"])


def task_containers(name: str | None = None, *, running: bool = False) -> list[dict[str, Any]]:
    """Task containers of this run (of the service ``name``), as the engine lists them."""
    labels = [f"{RUN_LABEL}={RUN_ID}", TASK_LABEL]
    if name is not None:
        labels.append(f"{SERVICE_LABEL}={name}")
    rows: list[dict[str, Any]] = api_get(
        swarm_host(), "/containers/json", all="0" if running else "1", filters={"label": labels}
    )
    return rows


def run_volumes() -> set[str]:
    data = api_get(swarm_host(), "/volumes", filters={"label": [f"{RUN_LABEL}={RUN_ID}"]})
    return {str(v["Name"]) for v in data.get("Volumes") or []}


def purge_swarm() -> list[str]:
    """Remove this run's services, their task containers and this run's volumes; returns the
    services that were still there (a test that cleans up after itself leaves none)."""
    left = sorted(run_services())
    if left:
        DOCKER.cli("service", "rm", *left, check=False)
    wait_for(lambda: not task_containers(), timeout=60, what="task containers to go")
    volumes = run_volumes()
    if volumes:
        DOCKER.cli("volume", "rm", "-f", *sorted(volumes), check=False)
    return left


def swarm_cleanup() -> Iterator[str]:
    """The body of a fixture: the manager's host; afterwards nothing of this run remains."""
    host = swarm_host()
    try:
        yield host
    finally:
        purge_swarm()
        assert run_services() == {}
        assert run_volumes() == set()
