"""The ProcessRuntime on real local processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from dormant.runtimes import Runtime
from dormant.runtimes.process import ProcessRuntime

from . import Kit


class ProcessKit(Kit):
    kind = "process"

    root: Path | None = None

    @classmethod
    async def open(cls, request: pytest.FixtureRequest, tmp_path: Path) -> Kit:
        kit = cls(ProcessRuntime(tmp_path / "processes"))
        kit.root = tmp_path / "processes"
        return kit

    def reopen(self) -> Runtime:
        assert self.root is not None
        return ProcessRuntime(self.root)
