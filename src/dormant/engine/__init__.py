"""Lifecycle engine: events -> transitions -> operations, with durable deadlines."""

from dormant.engine.endpoints import endpoint_of
from dormant.engine.lifecycle import Engine, EngineSettings
from dormant.engine.notify import EngineEvent
from dormant.engine.ports import PortAllocator, parse_port_range
from dormant.engine.templates import Catalog, Template, default_catalog

__all__ = [
    "Catalog",
    "Engine",
    "EngineEvent",
    "EngineSettings",
    "PortAllocator",
    "Template",
    "default_catalog",
    "endpoint_of",
    "parse_port_range",
]
