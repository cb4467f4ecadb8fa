"""A real-time connection to the gateway (python-socketio)."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import socketio  # type: ignore[import-untyped]

from dormant.errors import DormantError

JSON = dict[str, Any]
Handler = Callable[[Any], Any]


class RealtimeError(DormantError):
    """The gateway refused the connection (``code`` says why) or it could not be reached."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


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
