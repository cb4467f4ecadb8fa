"""What clients send: ``activity`` (validated, rate-limited, applied through the engine),
events the gateway does not know, and messages it refuses. Nothing a client sends can raise
out of a handler: bad input gets an ``error {code, message}`` event and the connection stays."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dormant.errors import InvalidInput, NotFound
from dormant.gateway.protocol import ProtocolError, error, parse_activity
from dormant.policy import Category

if TYPE_CHECKING:
    from dormant.gateway.server import Gateway

_NOTICE_EVERY = 1.0  # seconds between two rate-limit notices to one connection
# Acks for accepted activity (shared: python-socketio only reads them).
_COUNTED: dict[str, Any] = {"ok": True, "counted": True}
_NOT_COUNTED: dict[str, Any] = {"ok": True, "counted": False}


class ClientEvents:
    """The Socket.IO handlers of client events (``pong`` is :mod:`dormant.gateway.heartbeats`')."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def on_activity(self, sid: str, *args: Any) -> dict[str, Any]:
        gateway = self.gateway
        conn = gateway.conns.get(sid)
        if conn is None or not conn.registered:
            return {"ok": False, "error": error("not_connected", "not attached to a session")}
        now = gateway.clock.monotonic()
        if not conn.bucket.take(now):
            conn.dropped += 1
            gateway.stats.activity_dropped += 1
            problem = error(
                "rate_limited",
                f"more than {gateway.settings.activity_rate:g} activity events per second; "
                "excess events are dropped",
                dropped=conn.dropped,
            )
            if now - conn.last_notice >= _NOTICE_EVERY:
                conn.last_notice = now
                await gateway.emit_local("error", problem, to=sid)
            return {"ok": False, "error": problem}
        try:
            kind = parse_activity(args)
        except ProtocolError as exc:
            return await self.reject(sid, exc)
        if kind.category is Category.KEEPALIVE:
            return _NOT_COUNTED
        try:
            gateway.engine.record_activity(conn.session_id, kind, source="gateway")
        except NotFound:
            await self.reject(sid, ProtocolError("session_not_found", "session is gone"))
            gateway.spawn(gateway.members.close(sid))
            return {"ok": False, "error": error("session_not_found", "session is gone")}
        except InvalidInput as exc:
            return await self.reject(sid, ProtocolError("invalid_activity", str(exc)))
        gateway.stats.activity_applied += 1
        return _COUNTED if kind.category is Category.MEANINGFUL else _NOT_COUNTED

    async def on_unknown(self, event: Any, sid: str, *args: Any) -> dict[str, Any]:
        name = str(event)[:40]
        return await self.reject(
            sid,
            ProtocolError("unknown_event", f"unknown event {name!r}; send activity or pong"),
        )

    async def reject(self, sid: str, exc: ProtocolError) -> dict[str, Any]:
        """Tell the client what was wrong with its event (``error``, and in the ack)."""
        gateway = self.gateway
        gateway.stats.invalid_events += 1
        await gateway.emit_local("error", exc.payload(), to=sid)
        return {"ok": False, "error": exc.payload()}

    async def refuse_message(self, eio_sid: str, code: str, message: str) -> None:
        gateway = self.gateway
        gateway.stats.invalid_events += 1
        sid = gateway.sio.manager.sid_from_eio_sid(eio_sid, "/")
        if sid is not None:
            await gateway.emit_local("error", error(code, message), to=sid)
