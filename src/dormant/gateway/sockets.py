"""Engine.IO sockets, authenticated or not: each counts against ``max_connections`` from its
handshake on (beyond it the handshake is refused with ``server_full``), one without an accepted
Socket.IO connect is closed after ``handshake_timeout``, and its malformed packets are counted
and logged once. Also how a socket is hung up on, with or without a ``connect_error`` first.

The handshake timeout counts the client's time, not the gateway's. In a reconnect storm (a
replica died and its browsers all come back here) the process is busy for seconds: every socket
waits its turn for each step of its handshake, and a client that sent its connect at once could
have it read ten seconds later. So the handshake clock stops while the gateway falls behind (the
ticker, due every ``tick``, comes late: the lateness is not counted), and a socket whose connect
arrived gets a timeout of its own for its admission, from its arrival, on that clock too:
admission's store work waits its turn (paced and coalesced, see
:mod:`dormant.gateway.admission`), and a client that left meanwhile costs none. However far
behind the gateway falls, a socket that has sent no connect is given at most
``HANDSHAKE_STRETCH`` times ``handshake_timeout``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from socketio import packet as sio_packet  # type: ignore[import-untyped]

from dormant.gateway.protocol import error

if TYPE_CHECKING:
    from dormant.gateway.server import Gateway

log = logging.getLogger("dormant.gateway")

#: A refused socket is closed once its client fetched the refusal, or after this (seconds).
REFUSAL_DELIVERY = 2.0
#: A wait for a connect never lasts longer than this many times ``handshake_timeout``, however
#: long the gateway was busy elsewhere.
HANDSHAKE_STRETCH = 3.0
#: Lateness of the ticker up to this (or two ticks, if more) still counts as listening.
STALL_GRACE = 0.25


class Deadline(NamedTuple):
    """When a socket that owes a connect is closed: once the handshake clock (which stops while
    the gateway is behind) passes ``handshake``, or the monotonic clock passes ``latest``."""

    handshake: float
    latest: float


class Sockets:
    """The Engine.IO sockets open in this process, and the ones still owing a connect."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        #: Engine.IO sockets open now (eio sid -> when admitted, monotonic).
        self.open: dict[str, float] = {}
        #: Those owing a connect -> when they are closed (in insertion order, which is the
        #: order of both deadlines, to within one late tick of the handshake clock).
        self.pending: dict[str, Deadline] = {}
        #: Those whose connect is being admitted -> when, on the handshake clock, admission
        #: must be done (in insertion order, likewise).
        self.admitting: dict[str, float] = {}
        #: Seconds the gateway was behind (its ticker late), not counted against handshakes.
        self.stalled = 0.0
        #: The event loop's clock: how late the ticker comes is the loop's lag, whatever
        #: clock the gateway's deadlines are on.
        self.loop_time: Callable[[], float] = lambda: asyncio.get_running_loop().time()
        self._looked_at: float | None = None
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
        self.pending[eio_sid] = self._deadline(now)
        self.count()
        return None

    def _deadline(self, now: float) -> Deadline:
        timeout = self.gateway.settings.handshake_timeout
        return Deadline(now - self.stalled + timeout, now + timeout * HANDSHAKE_STRETCH)

    def _handshake_clock(self, now: float) -> float:
        """``now`` less the time the gateway was behind."""
        return now - self.stalled

    def _note_stall(self) -> None:
        """Add how late the ticker came (past a grace) to the time not counted: while the
        gateway is behind, sockets wait for it, not it for them."""
        looked_at = self.loop_time()
        if self._looked_at is not None:
            grace = max(STALL_GRACE, 2 * self.gateway.settings.tick)
            self.stalled += max(0.0, looked_at - self._looked_at - grace)
        self._looked_at = looked_at

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
        self.admitting.pop(eio_sid, None)
        self.noted.discard(eio_sid)
        self.count()

    def count(self) -> None:
        self.gateway.stats.sockets = len(self.open)
        self.gateway.stats.unauthenticated = len(self.pending) + len(self.admitting)

    def await_connect(self, eio_sid: str | None) -> None:
        """The socket has no accepted connection (again): it must make one in time."""
        if eio_sid is not None and eio_sid in self.open:
            self.pending.pop(eio_sid, None)
            self.admitting.pop(eio_sid, None)
            self.pending[eio_sid] = self._deadline(self.gateway.clock.monotonic())
            self.count()

    def connect_arrived(self, eio_sid: str) -> None:
        """The socket's connect is here: the client did its part, what is left is the gateway's.
        Its admission gets ``handshake_timeout`` of its own, from now, on the handshake clock."""
        if eio_sid in self.open and eio_sid not in self.admitting:
            self.pending.pop(eio_sid, None)
            now = self.gateway.clock.monotonic()
            timeout = self.gateway.settings.handshake_timeout
            self.admitting[eio_sid] = self._handshake_clock(now) + timeout
            self.count()

    def connect_handled(self, eio_sid: str) -> None:
        """The connect was accepted, or refused (the socket is being closed), or went nowhere:
        a socket still open without a connection owes one again, from now."""
        if self.admitting.pop(eio_sid, None) is not None:
            if eio_sid in self.open and not self.authenticated(eio_sid):
                self.await_connect(eio_sid)
            self.count()

    def accepted(self, eio_sid: str | None) -> None:
        """The socket's connect was accepted: it owes none any more."""
        if eio_sid is None:
            return
        owed = self.pending.pop(eio_sid, None), self.admitting.pop(eio_sid, None)
        if owed != (None, None):
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
        """Close the sockets whose connect, or its admission, is overdue."""
        self._note_stall()
        clock = self._handshake_clock(now)
        timeout = self.gateway.settings.handshake_timeout
        while self.pending:
            eio_sid, deadline = next(iter(self.pending.items()))
            if deadline.handshake > clock and deadline.latest > now:
                break
            del self.pending[eio_sid]
            await self._expire(eio_sid, f"no connect with a valid token within {timeout:g}s")
        while self.admitting:
            eio_sid, due = next(iter(self.admitting.items()))
            if due > clock:
                break
            del self.admitting[eio_sid]
            await self._expire(
                eio_sid, f"the connect could not be completed within {timeout:g}s; retry"
            )
        self.count()

    async def _expire(self, eio_sid: str, message: str) -> None:
        stats = self.gateway.stats
        stats.handshake_timeouts += 1
        stats.refused["handshake_timeout"] = stats.refused.get("handshake_timeout", 0) + 1
        await self.hang_up(eio_sid, "handshake_timeout", message)

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
