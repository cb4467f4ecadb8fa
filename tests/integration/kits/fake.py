"""The FakeRuntime that unit tests rely on (``dormant.testing``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dormant.runtimes import ContainerSpec, Runtime
from dormant.testing import FakeRuntime

from . import Kit


class FakeKit(Kit):
    kind = "fake"
    serves_traffic = False

    @classmethod
    async def open(cls, request: pytest.FixtureRequest, tmp_path: Path) -> Kit:
        return cls(FakeRuntime())

    def reopen(self) -> Runtime:
        return self.runtime  # the fake's state lives in the object: a restart is itself

    async def serves(self, spec: ContainerSpec) -> bool:
        assert isinstance(self.runtime, FakeRuntime)
        return spec.name in self.runtime.running()
