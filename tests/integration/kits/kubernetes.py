"""The KubernetesRuntime on kmock's emulator of the API, with a fake kubelet
(``tests/integration/kubelet.py``) that runs each pod as a small HTTP server on its own
loopback address. A pod serves at its own address: no host ports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dormant.runtimes import ContainerSpec, Endpoint, Runtime
from dormant.runtimes.kubernetes import KubernetesRuntime
from dormant.runtimes.kubernetes_pods import endpoint_of

from ..kubelet import Cluster
from ..podman import IMAGE, free_port
from . import Kit


class KubernetesKit(Kit):
    kind = "kubernetes"
    host_ports = False
    measures_stats = False  # metrics-server is not emulated: stats answers None

    cluster: Cluster
    container_port: int = 0

    @classmethod
    async def open(cls, request: pytest.FixtureRequest, tmp_path: Path) -> Kit:
        cluster = await Cluster().start()
        kit = cls(KubernetesRuntime(cluster.namespace, url=cluster.url))
        kit.cluster = cluster
        # One port for every pod (each has its own address); free, so that nothing else on
        # this machine listening on all addresses stands in the way.
        kit.container_port = free_port()
        return kit

    def reopen(self) -> Runtime:
        return KubernetesRuntime(self.cluster.namespace, url=self.cluster.url)

    def spec_extras(self) -> dict[str, Any]:
        return {"image": IMAGE, "container_port": self.container_port}

    async def endpoint_of(self, spec: ContainerSpec) -> Endpoint | None:
        pod = await self.cluster.pod(spec.name)
        return None if pod is None else endpoint_of(pod)

    async def teardown(self) -> None:
        left = await self.cluster.close()
        assert left == [], f"kubernetes: pods still served after the test: {left}"
