"""Podman, the engine most of dormant's docker tests run on: the names tests import from here
(``podman_host``, ``podman(...)``, ``purge_run``, ``PrivateService``, ...) are
:data:`engines.PODMAN`'s. The engine abstraction itself, and Docker Engine beside Podman, are in
``engines.py``.

If Podman cannot be started the tests that need it fail (``pytest.fail``); they never skip.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .engines import (
    CONTAINER_PORT,
    IMAGE,
    PODMAN,
    REPO,
    RUN_ID,
    RUN_LABEL,
    PrivatePodmanService,
    container_names,
    free_port,
    http_get,
    wait_for,
)

__all__ = [
    "CONTAINER_PORT",
    "IMAGE",
    "REPO",
    "RUN_ID",
    "RUN_LABEL",
    "PrivateService",
    "container_names",
    "free_port",
    "http_get",
    "managed_containers",
    "podman",
    "podman_host",
    "private_service",
    "purge_run",
    "remove_containers",
    "volumes",
    "wait_for",
    "was_used",
]

#: A second ``podman system service`` on a private socket (same storage).
PrivateService = PrivatePodmanService


def podman_host() -> str:
    """``DORMANT_DOCKER_HOST`` of a running Podman service (started once per test process)."""
    return PODMAN.host()


def was_used() -> bool:
    return PODMAN.started


def podman(
    *args: str, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return PODMAN.cli(*args, check=check, timeout=timeout)


def managed_containers(all_runs: bool = False) -> list[dict[str, Any]]:
    return PODMAN.managed_containers(all_runs)


def remove_containers(names: set[str] | list[str]) -> None:
    PODMAN.remove_containers(names)


def purge_run() -> list[str]:
    return PODMAN.purge_run()


def volumes() -> set[str]:
    return PODMAN.volumes()


@contextlib.contextmanager
def private_service(directory: Path) -> Iterator[PrivatePodmanService]:
    service = PrivatePodmanService(directory)
    try:
        service.start()
        yield service
    finally:
        service.kill()
