"""Every error leaves as JSON ``{"error": {"code", "message"}}``, never as a traceback."""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

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


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(DormantError)
    async def _dormant(_: Request, exc: DormantError) -> JSONResponse:
        response = error_response(exc.status, exc.code, str(exc))
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            response.headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
        return response

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        code, message, details = _describe_validation(exc)
        return error_response(422, code, message, details=details)

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        codes = {
            404: "not_found",
            405: "method_not_allowed",
            401: "unauthorized",
            413: "payload_too_large",
        }
        return error_response(
            exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail)
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return error_response(500, "internal_error", "internal error; see the server log")
