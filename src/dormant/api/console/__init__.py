"""The operator's console at ``/ui``: sign-in, the live sessions table, a session's page, the
overview. Its pages are static shells whose scripts call the REST API (``/v1``) and the
console's own JSON and stream (``/ui/api``) with the console's cookie.

:func:`build_console` assembles it: the cookie sign-in (``app.state.console``), the live
mirror of sessions, the pages, and the routers of the other console parts when they are in
the package (``overview.overview_router()``, ``usage.usage_router()``).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from fastapi import APIRouter, FastAPI

from dormant.api.console.live import RereadAfterChange, live_router
from dormant.api.console.mirror import SessionMirror
from dormant.api.console.pages import pages_router, render_page, security_headers
from dormant.api.console.signin import COOKIE, CSRF_HEADER, CookieAuth, signin_router
from dormant.engine import Engine

log = logging.getLogger("dormant.console")

#: The console's other parts: module -> the function that makes its router.
PARTS = {"overview": "overview_router", "usage": "usage_router"}

__all__ = [
    "COOKIE",
    "CSRF_HEADER",
    "Console",
    "CookieAuth",
    "SessionMirror",
    "build_console",
    "install_console",
    "render_page",
    "security_headers",
]


@dataclass
class Console:
    auth: CookieAuth
    mirror: SessionMirror
    routers: list[APIRouter] = field(default_factory=list)

    def start(self) -> None:
        """Once the engine has loaded: read the sessions now, not at the first page."""
        self.mirror.preload()

    async def close(self) -> None:
        await self.mirror.close()


def part_routers() -> list[APIRouter]:
    """The routers of the console's other parts present in the package."""
    found = []
    for module, maker in PARTS.items():
        try:
            part = importlib.import_module(f"dormant.api.console.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"dormant.api.console.{module}":
                raise  # the part is there but something it imports is not: say so
            continue
        found.append(getattr(part, maker)())
    return found


def build_console(
    engine: Engine,
    secret: str,
    *,
    session_ttl: float,
    session_url: Callable[[str], str] | None = None,
    frame_src: str | None = None,
    refresh: float = 5.0,
) -> Console:
    auth = CookieAuth(secret, engine.api_key, session_ttl)
    mirror = SessionMirror(engine, refresh=refresh)
    # The parts first: a page route of theirs (/ui/overview) wins over the shell here.
    routers = [
        *part_routers(),
        signin_router(auth),
        live_router(engine, mirror, session_url),
        pages_router(frame_src),
    ]
    return Console(auth, mirror, routers)


def install_console(app: FastAPI, console: Console) -> None:
    """Mount the console on the API app: its routes, and its cookie as a way to sign
    requests (``app.state.console``); the mirror follows the engine from now on."""
    for router in console.routers:
        app.include_router(router)
    app.add_middleware(RereadAfterChange, mirror=console.mirror)
    app.state.console = console.auth
    app.state.console_parts = console
    console.mirror.attach()
