"""The DockerRuntime on Debian's Docker Engine 20.10 (``scripts/docker-up.sh``; scoped to this
test run with ``testrun=RUN_ID``): the Podman kit's specs and labels, on the other engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from dormant.runtimes.docker import DockerRuntime

from ..engines import DOCKER, RUN_ID, RUN_LABEL
from . import Kit
from .docker_podman import DockerPodmanKit


class DockerEngineKit(DockerPodmanKit):
    kind = "docker-engine"

    @classmethod
    async def open(cls, request: pytest.FixtureRequest, tmp_path: Path) -> Kit:
        host = DOCKER.host()
        request.getfixturevalue("containers")  # purges this run's containers after the test
        kit = cls(DockerRuntime(host, scope={RUN_LABEL: RUN_ID}))
        kit.host = host
        return kit
