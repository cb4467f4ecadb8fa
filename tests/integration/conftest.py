"""Integration fixtures. The docker runtime's tests use a real Podman (``podman.py``); whatever
they do, their containers are removed, and after the session none of this run's containers
labelled ``dormant.managed=true`` may remain (on CI: none at all)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from . import podman


@pytest.fixture(scope="session")
def docker_host() -> str:
    return podman.podman_host()


@pytest.fixture(scope="session", autouse=True)
def no_leaked_containers() -> Iterator[None]:
    yield
    if not podman.was_used():
        return
    left = podman.purge_run()
    assert not left, f"tests left containers labelled dormant.managed=true: {left}"
    if os.environ.get("CI"):
        stray = podman.container_names(podman.managed_containers(all_runs=True))
        podman.remove_containers(stray)
        assert not stray, f"containers labelled dormant.managed=true remain: {sorted(stray)}"


@pytest.fixture
def containers(docker_host: str) -> Iterator[None]:
    """Removes this run's containers after the test, also on failure, and checks it worked."""
    try:
        yield
    finally:
        podman.purge_run()
        assert podman.managed_containers() == []
