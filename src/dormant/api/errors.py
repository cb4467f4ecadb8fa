"""Every error leaves as JSON ``{"error": {"code", "message"}}``, never as a traceback."""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import Match

from dormant.errors import DormantError

log = logging.getLogger("dormant.api")


class ApiError(DormantError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def error_response(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message, **extra}
    return JSONResponse({"error": body}, status_code=status)


def _describe_validation(exc: RequestValidationError) -> tuple[str, str, list[dict[str, Any]]]:
    details = []
    code = "invalid_request"
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        kind = str(err.get("type", ""))
        if kind == "json_invalid":
            code = "malformed_json"
        elif kind == "extra_forbidden" and code == "invalid_request":
            code = "unknown_field"
        details.append({"field": ".".join(loc) or "body", "problem": str(err.get("msg", ""))})
    if code == "malformed_json":
        message = "the request body is not valid JSON"
    else:
        message = "; ".join(f"{d['field']}: {d['problem']}" for d in details) or "invalid request"
    return code, message, details


#: ``Retry-After`` (seconds) of a 503 whose error does not say when to come back.
RETRY_AFTER = {"capacity_exhausted": 10, "queue_timeout": 30}
DEFAULT_RETRY_AFTER = 5

#: Status -> code of the HTTP errors raised by the framework or by the middleware.
HTTP_CODES = {
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "payload_too_large",
    429: "rate_limited",
    503: "temporarily_unavailable",
}


def _unparsable(exc: HTTPException) -> str | None:
    """Why FastAPI could not parse a JSON body it turned into a bare 400, if that is what
    happened: not UTF-8, nested too deeply, or otherwise not JSON."""
    cause = exc.__cause__
    if exc.status_code != 400 or cause is None:
        return None
    if isinstance(cause, UnicodeError):
        return "the request body is not valid JSON: it is not UTF-8 text"
    if isinstance(cause, RecursionError):
        return "the request body is not valid JSON: it is nested too deeply"
    if isinstance(cause, ValueError):
        return "the request body is not valid JSON"
    return None


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route answers on this path (Starlette names only the first route's)."""
    routes = request.app.router.routes
    return [
        method
        for method in _METHODS
        if any(r.matches({**request.scope, "method": method})[0] is Match.FULL for r in routes)
    ]


def key_id_of(request: Request) -> str | None:
    """The id part of the request's API key (``dk_<id>_<secret>``), to name it in logs: the
    public half only, never the key; ``None`` without a key or for one of another shape."""
    key = request.headers.get("x-api-key", "")
    prefix, _, rest = key.partition("_")
    key_id, sep, _ = rest.partition("_")
    if prefix != "dk" or not sep or not key_id.isalnum() or len(key_id) > 32:
        return None
    return key_id


def log_refusal(request: Request, status: int, code: str, message: str) -> None:
    """A refused request, at WARNING: its status and code, method and path, and the key id
    it came with (the path only: query strings may carry what a client should not log)."""
    key_id = key_id_of(request)
    log.warning(
        "refused %d %s %s %s key=%s: %s",
        status,
        code,
        request.method,
        request.url.path[:200],
        key_id or "-",
        message[:300],
        extra={"status": status, "code": code, "path": request.url.path, "key_id": key_id},
    )


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(DormantError)
    async def _dormant(request: Request, exc: DormantError) -> JSONResponse:
        log_refusal(request, exc.status, exc.code, str(exc))
        response = error_response(exc.status, exc.code, str(exc))
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is None and exc.status == 503:
            retry_after = RETRY_AFTER.get(exc.code, DEFAULT_RETRY_AFTER)
        if retry_after is not None:
            response.headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
        return response

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        code, message, details = _describe_validation(exc)
        return error_response(422, code, message, details=details)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        unparsable = _unparsable(exc)
        if unparsable is not None:
            return error_response(
                422,
                "malformed_json",
                unparsable,
                details=[{"field": "body", "problem": unparsable}],
            )
        response = error_response(
            exc.status_code, HTTP_CODES.get(exc.status_code, "http_error"), str(exc.detail)
        )
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        if exc.status_code == 405:
            response.headers["Allow"] = ", ".join(_allowed_methods(request))
        return response

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return error_response(500, "internal_error", "internal error; see the server log")
