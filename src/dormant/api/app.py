"""The FastAPI application: routes, errors, body limit, health."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import dormant
from dormant.api.auth import FailedAuthLimiter, RateLimiter, attempts_from
from dormant.api.docs import install_docs
from dormant.api.errors import error_response, install_error_handlers
from dormant.api.routes import build_router
from dormant.api.schemas import ErrorOut
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


class AuthAttempts:
    """Counts the API key failures of each request against its client's address (see
    :class:`dormant.api.auth.FailedAuthLimiter`)."""

    def __init__(self, app: ASGIApp, limiter: FailedAuthLimiter) -> None:
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        with attempts_from(self.limiter, str(client[0]) if client else "unknown"):
            await self.app(scope, receive, send)


# --- the OpenAPI document: the real error shape and the statuses really answered ---------------

#: Paths only an admin key may call (403 otherwise).
ADMIN_ONLY = frozenset({"/v1/instances"})

_ERRORS = {
    "401": "`unauthorized`: the X-API-Key header is missing, or the key is invalid or revoked.",
    "403": "`forbidden`: this needs an admin key.",
    "404": "`not_found`: no such session (or it belongs to another tenant).",
    "408": "`request_timeout`: the request body did not arrive in time.",
    "409": "`conflict`: the session's state does not allow this now (or, for a named session, "
    "the one of that name is being deleted).",
    "413": "`payload_too_large`: the request body is over the size limit.",
    "422": "`invalid_request`, `unknown_field`, `malformed_json`, `invalid` or "
    "`idempotency_key_reused`: the request is not acceptable; the message says why.",
    "429": "`rate_limited`: too many requests for this key, or too many failed keys from this "
    "address; see Retry-After.",
    "503": "`capacity_exhausted`, `temporarily_unavailable`, `runtime_unavailable` or "
    "`not_ready`: try again later; see Retry-After.",
}
_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before trying again.",
        "schema": {"type": "integer", "minimum": 1},
    }
}


def _error_statuses(path: str, method: str, operation: dict[str, Any]) -> list[str]:
    statuses = {"503"}
    if path.startswith("/v1/"):
        statuses |= {"401", "429"}
    has_body = "requestBody" in operation
    queries = [p for p in operation.get("parameters", []) if p.get("in") == "query"]
    if has_body or queries:
        statuses.add("422")
    if has_body:
        statuses |= {"408", "413"}
    if "{session_id}" in path:
        statuses.add("404")
        if method in ("post", "delete"):  # a state that forbids it, or a concurrent change
            statuses.add("409")
    if path.startswith("/v1/users/"):
        statuses.add("409")
    if path in ADMIN_ONLY:
        statuses.add("403")
    return sorted(statuses)


def document_errors(schema: dict[str, Any]) -> dict[str, Any]:
    """Rewrite FastAPI's OpenAPI document in place: the ``Error`` schema, and on each operation
    the error statuses it can answer, instead of FastAPI's ``detail`` 422."""
    models = ErrorOut.model_json_schema(ref_template="#/components/schemas/{model}")
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update(models.pop("$defs", {}))
    components["Error"] = {**models, "title": "Error"}
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    for path, item in schema.get("paths", {}).items():
        for method, operation in item.items():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            for status in _error_statuses(path, method, operation):
                response: dict[str, Any] = {
                    "description": _ERRORS[status],
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                    },
                }
                if status in ("429", "503"):
                    response["headers"] = _RETRY_AFTER
                responses[status] = response
    return schema


def create_api(
    engine: Engine,
    reconciler: Reconciler,
    *,
    rate_limit: float = 200.0,
    rate_burst: int = 400,
    max_body_bytes: int = 64 * 1024,
    auth_failure_limit: int = 20,
    auth_failure_window: float = 60.0,
    ready: Callable[[], Awaitable[dict[str, Any]]] | None = None,
    lifespan: Any = None,
    session_url: Callable[[str], str] | None = None,
) -> FastAPI:
    app = FastAPI(
        title="dormant",
        version=dormant.__version__,
        description="Per-user containers that run only while people use them.",
        lifespan=lifespan,
        # /docs and /redoc come from the package (install_docs), not from a CDN.
        docs_url=None,
        redoc_url=None,
    )
    install_error_handlers(app)
    install_docs(app)
    app.state.key_lookup = engine.api_key
    app.state.rate_limiter = RateLimiter(rate_limit, rate_burst)
    app.include_router(build_router(engine, reconciler, session_url=session_url))
    fastapi_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_errors(fastapi_openapi())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

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
    app.add_middleware(
        AuthAttempts, limiter=FailedAuthLimiter(auth_failure_limit, auth_failure_window)
    )
    return app
