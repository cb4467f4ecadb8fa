"""A client for backends: the REST API (httpx) and the real-time gateway (python-socketio).

::

    from dormant.client import AsyncClient

    async with AsyncClient("http://127.0.0.1:8080", api_key) as dormant:
        session = await dormant.create_session("alice", policy={"sleep_after": "30m"})
        work = await dormant.ensure_session("alice", "notebook", wake=True)  # get or create
        mine = await dormant.list_sessions(user_id="alice", labels={"team": "ml"})
        await dormant.activity(session["id"], "build")
        token = await dormant.token(session["id"], name="Alice")     # for the browser
        await dormant.broadcast(session["id"], "build", {"status": "ok"})

        live = dormant.realtime(session["id"], name="ci-bot")          # a socket of our own
        live.on("session", print)
        await live.connect()
        await live.activity("command")
        await live.close()

:class:`Client` is the same API, synchronous (for scripts and threaded web frameworks).
Errors are :class:`ApiError` with the server's ``status``, ``code`` and ``message``.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote, urlsplit, urlunsplit

import httpx
import socketio  # type: ignore[import-untyped]

from dormant.errors import DormantError, InvalidInput

JSON = dict[str, Any]
Handler = Callable[[Any], Any]


class ApiError(DormantError):
    """The server answered with an error (``{"error": {"code", "message"}}``)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class RealtimeError(DormantError):
    """The gateway refused the connection (``code`` says why) or it could not be reached."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
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


class Client:
    """Synchronous REST client."""

    def __init__(
        self, url: str, api_key: str, *, timeout: float = 30.0, http: httpx.Client | None = None
    ) -> None:
        self.url = base_url(url)
        self._http = http or httpx.Client(
            base_url=self.url, headers={"X-API-Key": api_key}, timeout=timeout
        )

    def _send(self, call: _Call) -> Any:
        return _check(
            self._http.request(
                call.method, call.path, json=call.json, params=call.params, headers=call.headers
            )
        )

    def create_session(
        self,
        user_id: str,
        *,
        template: str | None = None,
        policy: JSON | None = None,
        labels: dict[str, str] | None = None,
        env: dict[str, str] | None = None,
        idempotency_key: str | None = None,
        wait: float | None = None,
    ) -> JSON:
        """A new session. With ``idempotency_key``, retries of this call (within 24 h) answer
        the session the first one made, even if its answer was lost; ``wait`` (seconds)
        answers once it runs or failed."""
        result: JSON = self._send(
            _Api.create_session(user_id, template, policy, labels, env, idempotency_key, wait)
        )
        return result

    def ensure_session(
        self,
        user_id: str,
        name: str = "default",
        *,
        template: str | None = None,
        policy: JSON | None = None,
        labels: dict[str, str] | None = None,
        env: dict[str, str] | None = None,
        wake: bool = False,
        wait: float | None = None,
    ) -> JSON:
        """The user's live session of this name (and template), created if there is none;
        ``wake`` wakes it if it sleeps; ``wait`` (seconds) answers once it runs."""
        call = _Api.ensure_session(user_id, name, template, policy, labels, env, wake, wait)
        result: JSON = self._send(call)
        return result

    def list_sessions(
        self,
        *,
        user_id: str | None = None,
        state: str | None = None,
        level: str | None = None,
        name: str | None = None,
        template: str | None = None,
        labels: dict[str, str] | None = None,
        page_size: int = 500,
    ) -> list[JSON]:
        """Every session matching the filters (``labels``: all must match), page after page."""
        filters = _filters(user_id, state, level, name, template, labels, page_size)
        items: list[JSON] = []
        cursor: str | None = None
        while True:
            page: JSON = self._send(_Api.list_sessions(filters, cursor))
            items += page["items"]
            cursor = page.get("next_cursor")
            if not cursor:
                return items

    def stats(self) -> JSON:
        """Counts by state and level, transitions by reason, orphans removed."""
        result: JSON = self._send(_Call("GET", "/v1/stats"))
        return result

    def get_session(self, session_id: str) -> JSON:
        result: JSON = self._send(_Api.session(session_id))
        return result

    def activity(self, session_id: str, kind: str, at: datetime | None = None) -> JSON:
        body = {"kind": kind, **({"at": at.isoformat()} if at else {})}
        result: JSON = self._send(_Api.session(session_id, "activity", body))
        return result

    def sleep(self, session_id: str, wait: float | None = None) -> JSON:
        """Accepted; with ``wait`` (seconds) the answer's ``outcome`` says where it ended."""
        result: JSON = self._send(_Api.session(session_id, "sleep", wait=wait))
        return result

    def wake(self, session_id: str, wait: float | None = None) -> JSON:
        """Accepted; with ``wait`` (seconds) the answer's ``outcome`` says where it ended."""
        result: JSON = self._send(_Api.session(session_id, "wake", wait=wait))
        return result

    def keepalive(self, session_id: str, until: datetime) -> JSON:
        result: JSON = self._send(_Api.session(session_id, "keepalive", {"until": _until(until)}))
        return result

    def busy(self, session_id: str, until: datetime) -> JSON:
        result: JSON = self._send(_Api.session(session_id, "busy", {"until": _until(until)}))
        return result

    def delete(self, session_id: str, wait: float | None = None) -> JSON:
        result: JSON = self._send(_Api.delete(session_id, wait))
        return result

    def logout(self, user_id: str) -> list[str]:
        """Delete every live session of ``user_id`` now; the ids deleted."""
        result: JSON = self._send(_Api.logout(user_id))
        return list(result["deleted"])

    def token(self, session_id: str, name: str | None = None, ttl: float | None = None) -> Token:
        body = _drop_none({"name": name, "ttl": ttl})
        return _token(self._send(_Api.session(session_id, "tokens", body)))

    def broadcast(self, session_id: str, type: str, data: Any = None) -> int:
        result: JSON = self._send(
            _Api.session(session_id, "broadcast", {"type": type, "data": data})
        )
        return int(result["delivered"])

    def events(self, session_id: str) -> list[JSON]:
        """The timeline (also of a deleted session, until it is purged)."""
        result: JSON = self._send(_Api.read(session_id, "events"))
        return list(result["items"])

    def session_policy(self, session_id: str) -> JSON:
        """``{session_id, policy, values}``: the resolved policy values in effect."""
        result: JSON = self._send(_Api.read(session_id, "policy"))
        return result

    def link(self, session_id: str, ttl: float | None = None) -> JSON:
        """``{url, expires_at, session_id}``: a one-time link through dormant's proxy."""
        body = _drop_none({"ttl": ttl})
        result: JSON = self._send(_Api.session(session_id, "links", body))
        return result

    def templates(self) -> list[JSON]:
        """The templates this key may create sessions from."""
        result: JSON = self._send(_Call("GET", "/v1/templates"))
        return list(result["items"])

    def policies(self) -> list[JSON]:
        """The policies, resolved (durations in seconds)."""
        result: JSON = self._send(_Call("GET", "/v1/policies"))
        return list(result["items"])

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncClient:
    """Asynchronous REST client, and the factory of :class:`Realtime` connections."""

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        timeout: float = 30.0,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.url = base_url(url)
        self._http = http or httpx.AsyncClient(
            base_url=self.url, headers={"X-API-Key": api_key}, timeout=timeout
        )

    async def _send(self, call: _Call) -> Any:
        response = await self._http.request(
            call.method, call.path, json=call.json, params=call.params, headers=call.headers
        )
        return _check(response)

    async def create_session(
        self,
        user_id: str,
        *,
        template: str | None = None,
        policy: JSON | None = None,
        labels: dict[str, str] | None = None,
        env: dict[str, str] | None = None,
        idempotency_key: str | None = None,
        wait: float | None = None,
    ) -> JSON:
        """A new session. With ``idempotency_key``, retries of this call (within 24 h) answer
        the session the first one made, even if its answer was lost; ``wait`` (seconds)
        answers once it runs or failed."""
        result: JSON = await self._send(
            _Api.create_session(user_id, template, policy, labels, env, idempotency_key, wait)
        )
        return result

    async def ensure_session(
        self,
        user_id: str,
        name: str = "default",
        *,
        template: str | None = None,
        policy: JSON | None = None,
        labels: dict[str, str] | None = None,
        env: dict[str, str] | None = None,
        wake: bool = False,
        wait: float | None = None,
    ) -> JSON:
        """The user's live session of this name (and template), created if there is none;
        ``wake`` wakes it if it sleeps; ``wait`` (seconds) answers once it runs."""
        call = _Api.ensure_session(user_id, name, template, policy, labels, env, wake, wait)
        result: JSON = await self._send(call)
        return result

    async def list_sessions(
        self,
        *,
        user_id: str | None = None,
        state: str | None = None,
        level: str | None = None,
        name: str | None = None,
        template: str | None = None,
        labels: dict[str, str] | None = None,
        page_size: int = 500,
    ) -> list[JSON]:
        """Every session matching the filters (``labels``: all must match), page after page."""
        filters = _filters(user_id, state, level, name, template, labels, page_size)
        items: list[JSON] = []
        cursor: str | None = None
        while True:
            page: JSON = await self._send(_Api.list_sessions(filters, cursor))
            items += page["items"]
            cursor = page.get("next_cursor")
            if not cursor:
                return items

    async def stats(self) -> JSON:
        """Counts by state and level, transitions by reason, orphans removed."""
        result: JSON = await self._send(_Call("GET", "/v1/stats"))
        return result

    async def get_session(self, session_id: str) -> JSON:
        result: JSON = await self._send(_Api.session(session_id))
        return result

    async def activity(self, session_id: str, kind: str, at: datetime | None = None) -> JSON:
        body = {"kind": kind, **({"at": at.isoformat()} if at else {})}
        result: JSON = await self._send(_Api.session(session_id, "activity", body))
        return result

    async def sleep(self, session_id: str, wait: float | None = None) -> JSON:
        """Accepted; with ``wait`` (seconds) the answer's ``outcome`` says where it ended."""
        result: JSON = await self._send(_Api.session(session_id, "sleep", wait=wait))
        return result

    async def wake(self, session_id: str, wait: float | None = None) -> JSON:
        """Accepted; with ``wait`` (seconds) the answer's ``outcome`` says where it ended."""
        result: JSON = await self._send(_Api.session(session_id, "wake", wait=wait))
        return result

    async def keepalive(self, session_id: str, until: datetime) -> JSON:
        body = {"until": _until(until)}
        result: JSON = await self._send(_Api.session(session_id, "keepalive", body))
        return result

    async def busy(self, session_id: str, until: datetime) -> JSON:
        body = {"until": _until(until)}
        result: JSON = await self._send(_Api.session(session_id, "busy", body))
        return result

    async def delete(self, session_id: str, wait: float | None = None) -> JSON:
        result: JSON = await self._send(_Api.delete(session_id, wait))
        return result

    async def logout(self, user_id: str) -> list[str]:
        """Delete every live session of ``user_id`` now; the ids deleted."""
        result: JSON = await self._send(_Api.logout(user_id))
        return list(result["deleted"])

    async def token(
        self, session_id: str, name: str | None = None, ttl: float | None = None
    ) -> Token:
        body = _drop_none({"name": name, "ttl": ttl})
        return _token(await self._send(_Api.session(session_id, "tokens", body)))

    async def broadcast(self, session_id: str, type: str, data: Any = None) -> int:
        result: JSON = await self._send(
            _Api.session(session_id, "broadcast", {"type": type, "data": data})
        )
        return int(result["delivered"])

    async def events(self, session_id: str) -> list[JSON]:
        """The timeline (also of a deleted session, until it is purged)."""
        result: JSON = await self._send(_Api.read(session_id, "events"))
        return list(result["items"])

    async def session_policy(self, session_id: str) -> JSON:
        """``{session_id, policy, values}``: the resolved policy values in effect."""
        result: JSON = await self._send(_Api.read(session_id, "policy"))
        return result

    async def link(self, session_id: str, ttl: float | None = None) -> JSON:
        """``{url, expires_at, session_id}``: a one-time link through dormant's proxy."""
        body = _drop_none({"ttl": ttl})
        result: JSON = await self._send(_Api.session(session_id, "links", body))
        return result

    async def templates(self) -> list[JSON]:
        """The templates this key may create sessions from."""
        result: JSON = await self._send(_Call("GET", "/v1/templates"))
        return list(result["items"])

    async def policies(self) -> list[JSON]:
        """The policies, resolved (durations in seconds)."""
        result: JSON = await self._send(_Call("GET", "/v1/policies"))
        return list(result["items"])

    def realtime(
        self, session_id: str, name: str | None = None, *, reconnect: bool = True
    ) -> Realtime:
        """A real-time connection to ``session_id`` that mints a fresh token on every connect."""

        async def token() -> str:
            return (await self.token(session_id, name=name)).token

        return Realtime(self.url, token, reconnect=reconnect)

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


TokenSource = str | Callable[[], str] | Callable[[], Awaitable[str]]


class Realtime:
    """One connection to the gateway. Answers the server's heartbeats; keeps the latest
    ``session`` and ``presence``; ``on(event, handler)`` for ``session``, ``sleep-warning``,
    ``presence``, ``event``, ``error``, ``disconnect``."""

    def __init__(
        self,
        url: str,
        token: TokenSource,
        *,
        reconnect: bool = True,
        transports: list[str] | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self._token = token
        self._transports = transports
        self.session: JSON | None = None
        self.presence: JSON | None = None
        self.errors: list[JSON] = []
        self._handlers: dict[str, list[Handler]] = {}
        self._refusal: JSON | None = None
        self.sio = socketio.AsyncClient(reconnection=reconnect)
        self.sio.on("ping", self._on_ping)
        self.sio.on("session", self._on_session)
        self.sio.on("presence", self._on_presence)
        self.sio.on("sleep-warning", self._relay("sleep-warning"))
        self.sio.on("event", self._relay("event"))
        self.sio.on("error", self._on_error)
        self.sio.on("connect_error", self._on_connect_error)
        self.sio.on("disconnect", self._on_disconnect)

    def on(self, event: str, handler: Handler) -> None:
        self._handlers.setdefault(event, []).append(handler)

    @property
    def connected(self) -> bool:
        return bool(self.sio.connected)

    async def connect(self, timeout: float = 10.0) -> None:
        self._refusal = None
        try:
            await self.sio.connect(
                self.url,
                auth=self._auth,
                transports=self._transports,
                wait_timeout=timeout,
            )
        except socketio.exceptions.ConnectionError as exc:
            refusal: JSON = self._refusal or {}
            data = refusal.get("data") if isinstance(refusal.get("data"), dict) else {}
            raise RealtimeError(
                str((data or {}).get("code", "connect_failed")),
                str(refusal.get("message", exc)),
            ) from exc

    async def activity(self, kind: str, detail: Any = None, timeout: float = 10.0) -> JSON:
        """Report activity; returns the gateway's answer (``{"ok": ...}``)."""
        body: JSON = {"kind": kind} if detail is None else {"kind": kind, "detail": detail}
        answer: JSON = await self.sio.call("activity", body, timeout=timeout)
        return answer

    async def close(self) -> None:
        await self.sio.disconnect()

    async def _auth(self) -> JSON:
        token = self._token
        if callable(token):
            value = token()
            token = await value if inspect.isawaitable(value) else value
        return {"token": token}

    async def _on_ping(self, data: Any = None) -> None:
        if isinstance(data, dict) and isinstance(data.get("ts"), int):
            await self.sio.emit("pong", {"ts": data["ts"]})

    async def _on_session(self, data: Any = None) -> None:
        self.session = data
        await self._fire("session", data)

    async def _on_presence(self, data: Any = None) -> None:
        self.presence = data
        await self._fire("presence", data)

    async def _on_error(self, data: Any = None) -> None:
        if isinstance(data, dict):
            self.errors.append(data)
        await self._fire("error", data)

    async def _on_connect_error(self, data: Any = None) -> None:
        self._refusal = data if isinstance(data, dict) else {"message": str(data)}
        await self._fire("connect_error", data)

    async def _on_disconnect(self, reason: Any = None) -> None:
        await self._fire("disconnect", reason)

    def _relay(self, event: str) -> Callable[[Any], Awaitable[None]]:
        async def relay(data: Any = None) -> None:
            await self._fire(event, data)

        return relay

    async def _fire(self, event: str, data: Any) -> None:
        for handler in list(self._handlers.get(event, ())):
            result = handler(data)
            if inspect.isawaitable(result):
                await result


__all__ = ["ApiError", "AsyncClient", "Client", "Realtime", "RealtimeError", "Token"]
