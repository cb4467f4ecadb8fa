"""Engine.IO sockets, authenticated or not: each counts against ``max_connections`` from its
handshake on (beyond it the handshake is refused with ``server_full``), one without an accepted
Socket.IO connect is closed after ``handshake_timeout``, and its malformed packets are counted
and logged once. Also how a socket is hung up on, with or without a ``connect_error`` first."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from typing import TYPE_CHECKING

from socketio import packet as sio_packet  # type: ignore[import-untyped]

from dormant.gateway.protocol import error

if TYPE_CHECKING:
    from dormant.gateway.server import Gateway

log = logging.getLogger("dormant.gateway")

#: A refused socket is closed once its client fetched the refusal, or after this (seconds).
REFUSAL_DELIVERY = 2.0


class Sockets:
    """The Engine.IO sockets open in this process, and the ones still owing a connect."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        #: Engine.IO sockets open now (eio sid -> when admitted, monotonic).
        self.open: dict[str, float] = {}
        #: Those without an accepted connection -> when they are closed (in deadline order).
        self.pending: dict[str, float] = {}
        #: Sockets that logged a malformed packet already (one line per connection).
        self.noted: set[str] = set()
        self._refusals_logged_at = -math.inf
        self._refusals_unlogged = 0

    def admit(self, eio_sid: str) -> tuple[str, str] | None:
        """An Engine.IO handshake: admitted (None) while the sockets open, authenticated or
        not, are under ``max_connections``; otherwise the refusal (code, message)."""
        settings, stats = self.gateway.settings, self.gateway.stats
        if len(self.open) >= settings.max_connections:
            code = "server_full"
            message = (
                f"this server holds {settings.max_connections} connections (its limit); "
                "try again later"
            )
            stats.refused[code] = stats.refused.get(code, 0) + 1
            self._log_refused_handshake(code)
            return code, message
        now = self.gateway.clock.monotonic()
        self.open[eio_sid] = now
        self.pending[eio_sid] = now + settings.handshake_timeout
        self.count()
        return None

    def _log_refused_handshake(self, code: str) -> None:
        """A flood of refused handshakes logs a line every few seconds, not one each."""
        now = self.gateway.clock.monotonic()
        if now - self._refusals_logged_at < 5.0:
            self._refusals_unlogged += 1
            return
        more = self._refusals_unlogged
        log.info("handshake refused: %s%s", code, f" ({more} more before)" if more else "")
        self._refusals_logged_at = now
        self._refusals_unlogged = 0

    def forget(self, eio_sid: str) -> None:
        self.open.pop(eio_sid, None)
        self.pending.pop(eio_sid, None)
        self.noted.discard(eio_sid)
        self.count()

    def count(self) -> None:
        self.gateway.stats.sockets = len(self.open)
        self.gateway.stats.unauthenticated = len(self.pending)

    def await_connect(self, eio_sid: str | None) -> None:
        """The socket has no accepted connection (again): it must make one in time."""
        if eio_sid is not None and eio_sid in self.open:
            self.pending.pop(eio_sid, None)
            timeout = self.gateway.settings.handshake_timeout
            self.pending[eio_sid] = self.gateway.clock.monotonic() + timeout
            self.count()

    def accepted(self, eio_sid: str | None) -> None:
        """The socket's connect was accepted: it owes none any more."""
        if eio_sid is not None and self.pending.pop(eio_sid, None) is not None:
            self.count()

    def authenticated(self, eio_sid: str) -> bool:
        sid = self.gateway.sio.manager.sid_from_eio_sid(eio_sid, "/")
        conn = self.gateway.conns.get(sid) if sid is not None else None
        return conn is not None and conn.registered

    def note_malformed(self, eio_sid: str | None, what: str, logged: bool = False) -> bool:
        """Count a dropped packet; log only the first of each connection. Returns True (the
        connection has logged) for callers that keep their own flag."""
        self.gateway.stats.malformed_packets += 1
        if logged or (eio_sid is not None and eio_sid in self.noted):
            return True
        if eio_sid is not None and eio_sid in self.open:
            self.noted.add(eio_sid)
        log.info(
            "dropping malformed packets from connection %s (first: %s); the rest are counted",
            eio_sid or "?",
            what,
        )
        return True

    async def refuse_connect(self, eio_sid: str, code: str, message: str) -> None:
        """Answer a Socket.IO CONNECT with ``connect_error {message, data: {code, message}}``,
        then close the socket."""
        refused = self.gateway.stats.refused
        refused[code] = refused.get(code, 0) + 1
        log.info("connection refused: %s: %s", code, message)
        await self.connect_error(eio_sid, code, message)
        self.hang_up_after_delivery(eio_sid)

    async def connect_error(self, eio_sid: str, code: str, message: str) -> None:
        sio = self.gateway.sio
        packet = sio.packet_class(
            sio_packet.CONNECT_ERROR,
            data={"message": message, "data": error(code, message)},
            namespace="/",
        )
        await sio._send_packet(eio_sid, packet)

    async def expire_handshakes(self, now: float) -> None:
        while self.pending:
            eio_sid, deadline = next(iter(self.pending.items()))
            if deadline > now:
                return
            del self.pending[eio_sid]
            stats = self.gateway.stats
            stats.handshake_timeouts += 1
            stats.refused["handshake_timeout"] = stats.refused.get("handshake_timeout", 0) + 1
            timeout = self.gateway.settings.handshake_timeout
            await self.hang_up(
                eio_sid,
                "handshake_timeout",
                f"no connect with a valid token within {timeout:g}s",
            )
        self.count()

    def hang_up_after_delivery(self, eio_sid: str | None) -> None:
        if eio_sid is not None:
            self.gateway.spawn(self._hang_up_delivered(eio_sid))

    async def _hang_up_delivered(self, eio_sid: str) -> None:
        """Close a socket once what is queued for it (a connect_error) was handed to its
        transport, or after ``REFUSAL_DELIVERY`` seconds if its client does not fetch it."""
        await asyncio.sleep(0)
        sock = self.gateway.sio.eio.sockets.get(eio_sid)
        if sock is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(sock.queue.join(), REFUSAL_DELIVERY)
        if self.authenticated(eio_sid):
            return  # it connected meanwhile (a CONNECT sent right after the refused one)
        await self.hang_up(eio_sid)

    async def hang_up(self, eio_sid: str, code: str | None = None, message: str = "") -> None:
        """Close an Engine.IO socket now, whether or not its client listens: a connect_error
        saying why (given a ``code``), the CLOSE packet, and the end of its transport (a
        WebSocket is closed, a waiting poll answered)."""
        eio = self.gateway.sio.eio
        sock = eio.sockets.get(eio_sid)
        if sock is None or sock.closed:
            eio.sockets.pop(eio_sid, None)
            self.forget(eio_sid)
            return
        try:
            sock.last_ping = None  # no ping task for a socket that is going (Engine.IO's own)
            if code is not None:
                await self.connect_error(eio_sid, code, message)
            await sock.close(wait=False, abort=False)
            sock.queue.put_nowait(None)
        except Exception:
            log.exception("closing socket %s failed", eio_sid)
        finally:
            eio.sockets.pop(eio_sid, None)
            self.forget(eio_sid)
