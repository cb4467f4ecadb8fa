"""The SwarmRuntime on the project's single-node Swarm (Docker Engine, ``scripts/docker-up.sh``),
scoped to this test run with ``testrun=RUN_ID``; this run's services and volumes are removed
after each test."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dormant.runtimes import Runtime
from dormant.runtimes.swarm import SwarmRuntime

from ..engines import CONTAINER_PORT, IMAGE, RUN_ID, RUN_LABEL
from ..swarm_support import purge_swarm, run_services, swarm_host
from . import Kit


class SwarmKit(Kit):
    kind = "swarm"
    enforces_memory_limit = True

    host: str = ""

    @classmethod
    async def open(cls, request: pytest.FixtureRequest, tmp_path: Path) -> Kit:
        host = swarm_host()
        kit = cls(SwarmRuntime(host, scope={RUN_LABEL: RUN_ID}))
        kit.host = host
        return kit

    def reopen(self) -> Runtime:
        return SwarmRuntime(self.host, scope={RUN_LABEL: RUN_ID})

    def extra_labels(self) -> dict[str, str]:
        return {RUN_LABEL: RUN_ID}

    def spec_extras(self) -> dict[str, Any]:
        return {"image": IMAGE, "container_port": CONTAINER_PORT}

    async def teardown(self) -> None:
        purge_swarm()
        assert run_services() == {}
