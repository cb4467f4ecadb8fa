"""What the console's overview and usage routers need of the running server, found where
``dormant serve`` puts it (``app.state.services``: its engine, reconciler and settings). Typed
here as protocols: the api layer does not import the server or its settings."""

from __future__ import annotations

from typing import Protocol, cast

from fastapi import Request

from dormant.engine import Engine
from dormant.errors import TemporaryError


class Reconciling(Protocol):
    orphans_removed: int


class Pricing(Protocol):
    price_per_container_hour: float
    currency: str


class Services(Protocol):
    engine: Engine
    reconciler: Reconciling
    settings: Pricing


def services(request: Request) -> Services:
    found = getattr(request.app.state, "services", None)
    if found is None:  # an app built without dormant serve's wiring
        raise TemporaryError("the console's data is not available on this server")
    return cast(Services, found)
