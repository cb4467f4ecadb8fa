"""Backends that run sessions' containers, behind one contract (:mod:`dormant.runtimes.base`)."""

from __future__ import annotations

from importlib import import_module
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


#: The backends that ship with dormant (also found when it runs from a source tree without its
#: installed metadata, whose entry points would name them).
BUILTIN = {
    "process": "dormant.runtimes.process:ProcessRuntime",
    "docker": "dormant.runtimes.docker:DockerRuntime",
    "swarm": "dormant.runtimes.swarm:SwarmRuntime",
    "kubernetes": "dormant.runtimes.kubernetes:KubernetesRuntime",
}


def runtime_class(name: str) -> type[Runtime]:
    """The backend registered under ``name`` in the ``dormant.runtimes`` entry point group."""
    found = next((ep for ep in entry_points(group="dormant.runtimes") if ep.name == name), None)
    if found is not None:
        cls = found.load()
    elif name in BUILTIN:
        module, _, attr = BUILTIN[name].partition(":")
        cls = getattr(import_module(module), attr)
    else:
        raise InvalidInput(f"unknown runtime {name!r}")
    if not (isinstance(cls, type) and issubclass(cls, Runtime)):
        raise InvalidInput(f"entry point {name!r} is not a dormant Runtime")
    return cls
