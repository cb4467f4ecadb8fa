"""The FastAPI application: routes, errors, body limit, health."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import dormant
from dormant.api.auth import RateLimiter
from dormant.api.errors import error_response, install_error_handlers
from dormant.api.routes import build_router
from dormant.engine import Engine
from dormant.reconciler import Reconciler


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413 before anyone parses them."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        too_big = error_response(
            413, "payload_too_large", f"request body larger than {self.limit} bytes"
        )
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await too_big(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    # FastAPI re-raises HTTPException from body parsing (anything else it
                    # turns into a 400), and the error handler renders it as JSON.
                    raise HTTPException(413, f"request body larger than {self.limit} bytes")
            return message

        await self.app(scope, limited, send)


def create_api(
    engine: Engine,
    reconciler: Reconciler,
    *,
    rate_limit: float = 200.0,
    rate_burst: int = 400,
    max_body_bytes: int = 64 * 1024,
    ready: Callable[[], Awaitable[dict[str, Any]]] | None = None,
    lifespan: Any = None,
) -> FastAPI:
    app = FastAPI(
        title="dormant",
        version=dormant.__version__,
        description="Per-user containers that run only while people use them.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(build_router(engine, reconciler, RateLimiter(rate_limit, rate_burst)))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Any:
        checks = await ready() if ready is not None else {}
        failing = {k: v for k, v in checks.items() if v != "ok"}
        if failing:
            return error_response(503, "not_ready", "not ready", checks=checks)
        return {"status": "ready", "checks": checks}

    app.add_middleware(BodyLimit, limit=max_body_bytes)
    return app
