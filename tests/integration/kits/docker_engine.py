"""The DockerRuntime on Debian's Docker Engine 20.10 (``scripts/docker-up.sh``; scoped to this
test run with ``testrun=RUN_ID``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dormant.runtimes import Runtime
from dormant.runtimes.docker import DockerRuntime

from ..engines import CONTAINER_PORT, DOCKER, IMAGE, RUN_ID, RUN_LABEL
from . import Kit


class DockerEngineKit(Kit):
    kind = "docker-engine"
    enforces_memory_limit = True

    host: str = ""

    @classmethod
    async def open(cls, request: pytest.FixtureRequest, tmp_path: Path) -> Kit:
        host = DOCKER.host()
        request.getfixturevalue("containers")  # purges this run's containers after the test
        kit = cls(DockerRuntime(host, scope={RUN_LABEL: RUN_ID}))
        kit.host = host
        return kit

    def reopen(self) -> Runtime:
        return DockerRuntime(self.host, scope={RUN_LABEL: RUN_ID})

    def extra_labels(self) -> dict[str, str]:
        return {RUN_LABEL: RUN_ID}

    def spec_extras(self) -> dict[str, Any]:
        return {"image": IMAGE, "container_port": CONTAINER_PORT}
