"""Backends that run sessions' containers, behind one contract (:mod:`dormant.runtimes.base`)."""

from __future__ import annotations

from importlib.metadata import entry_points

from dormant.errors import InvalidInput
from dormant.runtimes.base import (
    BindMount,
    ContainerInfo,
    ContainerSpec,
    ContainerStatus,
    Endpoint,
    Resources,
    Runtime,
    VolumeInfo,
    VolumeMount,
)
from dormant.runtimes.stats import ContainerStats

__all__ = [
    "BindMount",
    "ContainerInfo",
    "ContainerSpec",
    "ContainerStats",
    "ContainerStatus",
    "Endpoint",
    "Resources",
    "Runtime",
    "VolumeInfo",
    "VolumeMount",
    "runtime_class",
]


def runtime_class(name: str) -> type[Runtime]:
    """The backend registered under ``name`` in the ``dormant.runtimes`` entry point group."""
    for ep in entry_points(group="dormant.runtimes"):
        if ep.name == name:
            cls = ep.load()
            if not (isinstance(cls, type) and issubclass(cls, Runtime)):
                raise InvalidInput(f"entry point {name!r} is not a dormant Runtime")
            return cls
    if name == "process":  # also when dormant runs from a source tree without its metadata
        from dormant.runtimes.process import ProcessRuntime

        return ProcessRuntime
    raise InvalidInput(f"unknown runtime {name!r}")
