"""The calls of the REST API as data, and what their answers mean (shared by the sync and
async clients)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import httpx

from dormant.errors import DormantError, InvalidInput

JSON = dict[str, Any]


class ApiError(DormantError):
    """The server answered with an error (``{"error": {"code", "message"}}``)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Token:
    token: str
    expires_at: datetime
    session_id: str


@dataclass(frozen=True, slots=True)
class _Call:
    method: str
    path: str
    json: Any = None
    params: dict[str, Any] | None = None
    headers: dict[str, str] | None = None


#: What a wrong address gets told (a bare 404 said nothing about what was wrong).
URL_HINT = (
    "DORMANT_URL (or --url) must be dormant serve's address, like http://127.0.0.1:8080 "
    "(a trailing / or /v1 is fine)"
)


def base_url(url: str) -> str:
    """dormant's address as people write it: ``http://host:8080``, ``…/`` or ``…/v1`` (what
    the API's paths start with) all mean the server; a path before ``/v1`` (a reverse proxy's
    prefix) is kept. Anything that is not an http(s) address is refused with what is wanted."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise InvalidInput(f"{url!r} is not an address dormant can use: {URL_HINT}")
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[: -len("/v1")].rstrip("/")
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def _until(value: datetime) -> str:
    if value.tzinfo is None:
        raise ValueError("until must be timezone-aware")
    return value.isoformat()


def _drop_none(body: JSON) -> JSON:
    return {k: v for k, v in body.items() if v is not None}


class _Api:
    """The calls, as data; the sync and async clients differ only in how they send them."""

    @staticmethod
    def create_session(
        user_id: str,
        template: str | None,
        policy: JSON | None,
        labels: dict[str, str] | None,
        env: dict[str, str] | None,
        idempotency_key: str | None = None,
        wait: float | None = None,
    ) -> _Call:
        body = _drop_none(
            {"user_id": user_id, "template": template, "policy": policy, "labels": labels}
        )
        if env is not None:
            body["env"] = env
        headers = None if idempotency_key is None else {"Idempotency-Key": idempotency_key}
        return _Call("POST", "/v1/sessions", body, params=_waiting(wait), headers=headers)

    @staticmethod
    def ensure_session(
        user_id: str,
        name: str,
        template: str | None,
        policy: JSON | None,
        labels: dict[str, str] | None,
        env: dict[str, str] | None,
        wake: bool,
        wait: float | None,
    ) -> _Call:
        body = _drop_none({"template": template, "policy": policy, "labels": labels, "env": env})
        params = _drop_none({"wake": "true" if wake else None, "wait": wait})
        path = f"/v1/users/{quote(user_id, safe='')}/sessions/{quote(name, safe='')}"
        return _Call("PUT", path, body, params=params or None)

    @staticmethod
    def list_sessions(filters: dict[str, Any], cursor: str | None) -> _Call:
        params = {**filters, **({"cursor": cursor} if cursor else {})}
        return _Call("GET", "/v1/sessions", params=params)

    @staticmethod
    def session(
        session_id: str, action: str = "", body: Any = None, wait: float | None = None
    ) -> _Call:
        path = f"/v1/sessions/{quote(session_id, safe='')}" + (f"/{action}" if action else "")
        return _Call("POST" if action else "GET", path, body, params=_waiting(wait))

    @staticmethod
    def read(session_id: str, what: str) -> _Call:
        """``GET /v1/sessions/{id}/{what}`` (``events``, ``policy``)."""
        return _Call("GET", f"/v1/sessions/{quote(session_id, safe='')}/{what}")

    @staticmethod
    def delete(session_id: str, wait: float | None) -> _Call:
        path = f"/v1/sessions/{quote(session_id, safe='')}"
        return _Call("DELETE", path, params=_waiting(wait))

    @staticmethod
    def logout(user_id: str) -> _Call:
        return _Call("POST", f"/v1/users/{quote(user_id, safe='')}/logout")


def _waiting(wait: float | None) -> dict[str, Any] | None:
    """``?wait=N``: the answer waits up to N seconds for the operation's outcome."""
    return None if wait is None else {"wait": wait}


def _check(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        raise _refusal(response)
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        raise ApiError(
            response.status_code,
            "not_dormant",
            f"the answer to {response.request.url} is not JSON: {URL_HINT}",
        ) from None


def _refusal(response: httpx.Response) -> ApiError:
    """The server's ``{"error"}``; a 404 that can only come from the wrong address (another
    server, a path too many) says what address is wanted."""
    status, path = response.status_code, response.request.url.path
    try:
        err = response.json()["error"]
        code, message = str(err["code"]), str(err["message"])
    except (ValueError, KeyError, TypeError):
        if status == 404:
            return ApiError(404, "not_found", f"nothing answers {path}: {URL_HINT}")
        return ApiError(status, "http_error", response.text[:500])
    if status == 404 and message == "Not Found":  # dormant, but no such route
        message = f"no such API call ({path}): {URL_HINT}"
    elif status == 404 and "/v1/sessions/" not in path and "/v1/users/" not in path:
        # only a call on one session or user answers 404 from dormant's API: this is another
        # server (dormant's session proxy, say) at that address
        message = f"{message} ({path}): {URL_HINT}"
    return ApiError(status, code, message)


def _filters(
    user_id: str | None,
    state: str | None,
    level: str | None,
    name: str | None,
    template: str | None,
    labels: dict[str, str] | None,
    page_size: int,
) -> dict[str, Any]:
    """The query of ``GET /v1/sessions``: ``labels`` as repeated ``label=KEY=VALUE``."""
    query: dict[str, Any] = _drop_none(
        {"user_id": user_id, "state": state, "level": level, "name": name, "template": template}
    )
    if labels:
        query["label"] = [f"{key}={value}" for key, value in labels.items()]
    query["limit"] = page_size
    return query


def _token(data: JSON) -> Token:
    return Token(data["token"], datetime.fromisoformat(data["expires_at"]), data["session_id"])
