"""The real-time gateway: Socket.IO (python-socketio, ASGI) in the same app and port as the API.

Each connection authenticates with ``auth: {token}`` (a JWT from ``POST
/v1/sessions/{id}/tokens``), joins its session's room, and from then on:

- its ``activity`` events are validated, rate-limited and applied through the engine (coalesced);
- it gets ``session`` on connect and whenever state, level, quality or a warning changes,
  ``presence`` when people join or leave, ``sleep-warning`` before an inactivity sleep, and
  ``event`` for whatever a backend broadcasts;
- it is pinged every ``heartbeat_interval`` of its session's policy and dropped after
  ``missed_pongs`` unanswered pings (Engine.IO's own ping/pong stays on underneath).

The engine learns each session's live connections through ``connect``/``disconnect`` with the
live count, coalesced per session (a storm of joins is a few writes); the last one leaving
starts the grace period. Nothing a client sends can raise out of a handler:
bad input gets an ``error {code, message}`` event and the connection stays.

Before a client is authenticated it costs little and gets little: every Engine.IO socket counts
against ``max_connections`` from its handshake on (beyond it the handshake is refused with
``server_full``), a socket that has not completed a Socket.IO connect with a valid token within
``handshake_timeout`` is closed, and packets that do not parse (or that only a connected client
may send) are dropped and counted, logged once per connection. Tokens name the API key they were
minted with; a token whose key is revoked or unknown is refused, and connections whose key is
revoked (by this process or another, e.g. ``dormant keys revoke``) are closed within
``key_check_interval`` with ``error {code: "key_revoked"}``.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from collections.abc import Awaitable
from datetime import datetime
from typing import Any

import socketio  # type: ignore[import-untyped]

from dormant.clock import Clock
from dormant.engine import Engine
from dormant.errors import InvalidInput, NotFound
from dormant.gateway.admission import Admission
from dormant.gateway.guard import EngineGuard, GuardedServer
from dormant.gateway.heartbeat import worst
from dormant.gateway.keys import KeyChecks
from dormant.gateway.protocol import (
    ProtocolError,
    error,
    parse_activity,
    parse_pong,
)
from dormant.gateway.push import Pusher
from dormant.gateway.rooms import Connection, Membership, Room
from dormant.gateway.settings import GatewaySettings, GatewayStats
from dormant.gateway.sockets import Sockets
from dormant.gateway.sync import CountSync
from dormant.gateway.tokens import TokenIssuer
from dormant.policy import Category
from dormant.store.records import SessionRecord

__all__ = ["Gateway", "GatewaySettings", "GatewayStats", "SocketIORoute"]

log = logging.getLogger("dormant.gateway")


class _ClientMistakes(logging.Filter):
    """python-engineio logs a client's mistake (an unknown or closed session, a bad transport
    or origin) at ERROR, once per kind and process: it is the client's, so it goes out as INFO."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.ERROR and not record.exc_info:
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


#: python-engineio and python-socketio log through these (errors only, as JSON like the rest;
#: their own defaults add a plain-text handler and log a line per packet at INFO).
_engineio_log = logging.getLogger("dormant.gateway.engineio")
_engineio_log.setLevel(logging.ERROR)
_engineio_log.addFilter(_ClientMistakes())
_socketio_log = logging.getLogger("dormant.gateway.socketio")
_socketio_log.setLevel(logging.ERROR)

#: Messages above this size close the transport (Engine.IO's own limit); between
#: ``max_payload_bytes`` and this they are refused with an ``error`` event and dropped.
HARD_MESSAGE_LIMIT = 1_000_000
#: A refused socket is closed once its client fetched the refusal, or after this (seconds).
REFUSAL_DELIVERY = 2.0
_NOTICE_EVERY = 1.0  # seconds between two rate-limit notices to one connection
#: The store's connection pool is small (SQLAlchemy's default: 5 + 10 overflow); leave room
#: for the API and the engine.
STORE_CONCURRENCY = 8
# Acks for accepted activity (shared: python-socketio only reads them).
_COUNTED: dict[str, Any] = {"ok": True, "counted": True}
_NOT_COUNTED: dict[str, Any] = {"ok": True, "counted": False}


class SocketIORoute:
    """ASGI middleware: ``/socket.io/`` goes straight to the gateway, everything else to the
    app. Outside the app's own middleware, a WebSocket's every message skips the wrappers that
    HTTP requests need; polling bodies and every message are bounded and checked by the gateway
    (:class:`EngineGuard`, then the Socket.IO server's own guards)."""

    def __init__(self, app: Any, gateway_app: Any, path: str = "/socket.io/") -> None:
        self.app = app
        self.gateway_app = gateway_app
        self.path = path

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket") and scope["path"].startswith(self.path):
            await self.gateway_app(scope, receive, send)
        else:
            await self.app(scope, receive, send)


class Gateway:
    def __init__(
        self,
        engine: Engine,
        tokens: TokenIssuer,
        settings: GatewaySettings | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.engine = engine
        self.tokens = tokens
        self.settings = settings or GatewaySettings()
        self.clock = clock or engine.clock
        self.stats = GatewayStats()
        # What the parts share: connections and rooms, the store's slots, the tasks started.
        #: Every connection, joining or registered, by Socket.IO sid.
        self.conns: dict[str, Connection] = {}
        #: The rooms of sessions with connections here (or a count still to tell the engine).
        self.rooms: dict[str, Room] = {}
        #: Store operations the gateway may have in flight (connects, disconnects, refreshes).
        self.store_slots = asyncio.Semaphore(STORE_CONCURRENCY)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        # The parts, one concept each.
        self.sockets = Sockets(self)
        self.keys = KeyChecks(self)
        self.admission = Admission(self)
        self.members = Membership(self)
        self.counts = CountSync(self)
        self.pusher = Pusher(self)
        # The names EngineGuard and tests read these by.
        self._sockets = self.sockets.open
        self._pending = self.sockets.pending
        self._noted = self.sockets.noted
        self._rooms = self.rooms
        self._on_connect = self.admission.on_connect
        self._on_disconnect = self.members.on_disconnect
        self._push = self.pusher.push
        self.sio = GuardedServer(
            async_mode="asgi",
            cors_allowed_origins=self.settings.cors_origins,
            max_http_buffer_size=max(HARD_MESSAGE_LIMIT, self.settings.max_payload_bytes),
            async_handlers=False,
            logger=_socketio_log,
            engineio_logger=_engineio_log,
        )
        self.sio.gateway = self
        self.sio.on("connect", self.admission.on_connect)
        self.sio.on("disconnect", self.members.on_disconnect)
        self.sio.on("activity", self._on_activity)
        self.sio.on("pong", self._on_pong)
        self.sio.on("*", self._on_unknown)
        self.asgi_app = EngineGuard(socketio.ASGIApp(self.sio, socketio_path=None), self)
        engine.listeners.append(self.pusher.on_engine_event)

    # life of the gateway ----------------------------------------------------------------------

    async def start(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.create_task(self._run(), name="dormant-gateway")

    async def stop(self) -> None:
        """Stop the ticker and close every connection (each one's ``disconnect`` runs)."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
            self._loop_task = None
        for sid in list(self.conns):
            await self.members.close(sid)
        await self.drain()

    async def drain(self) -> None:
        """Wait for every task the gateway started (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def connection_count(self, session_id: str | None = None) -> int:
        if session_id is None:
            return len(self.conns)
        room = self.rooms.get(session_id)
        return len(room.members) if room is not None else 0

    def connection_quality(self, session_id: str) -> str | None:
        room = self.rooms.get(session_id)
        if room is None or not room.members:
            return None
        now = self.clock.monotonic()
        found = worst([c.heartbeat.quality(now) for c in room.members.values()])
        return found.value if found is not None else None

    def mint_token(
        self, record: SessionRecord, name: str | None, ttl: float | None, *, key_id: str
    ) -> tuple[str, datetime]:
        """A token for ``record``'s session, minted with (and only as good as) API key
        ``key_id``."""
        return self.tokens.mint(
            session_id=record.id,
            user_id=record.user_id,
            tenant=record.tenant,
            key_id=key_id,
            name=name,
            ttl=ttl,
        )

    async def broadcast(self, session_id: str, type_: str, data: Any) -> int:
        """Relay ``event {type, data}`` to the session's clients; returns how many got it."""
        room = self.rooms.get(session_id)
        self.stats.broadcasts += 1
        if room is None or not room.members:
            return 0
        await self.sio.emit("event", {"type": type_, "data": data}, room=room.name)
        return len(room.members)

    # what the guards (guard.py) ask of the gateway -------------------------------------------

    def admit_socket(self, eio_sid: str) -> tuple[str, str] | None:
        return self.sockets.admit(eio_sid)

    def forget_socket(self, eio_sid: str) -> None:
        self.sockets.forget(eio_sid)

    def authenticated(self, eio_sid: str) -> bool:
        return self.sockets.authenticated(eio_sid)

    def note_malformed(self, eio_sid: str | None, what: str, logged: bool = False) -> bool:
        return self.sockets.note_malformed(eio_sid, what, logged)

    async def refuse_connect(self, eio_sid: str, code: str, message: str) -> None:
        await self.sockets.refuse_connect(eio_sid, code, message)

    # connect and disconnect -------------------------------------------------------------------

    def _presence_soon(self, room: Room) -> None:
        room.presence_dirty = True

    # client events ----------------------------------------------------------------------------

    async def _on_activity(self, sid: str, *args: Any) -> dict[str, Any]:
        conn = self.conns.get(sid)
        if conn is None or not conn.registered:
            return {"ok": False, "error": error("not_connected", "not attached to a session")}
        now = self.clock.monotonic()
        if not conn.bucket.take(now):
            conn.dropped += 1
            self.stats.activity_dropped += 1
            problem = error(
                "rate_limited",
                f"more than {self.settings.activity_rate:g} activity events per second; "
                "excess events are dropped",
                dropped=conn.dropped,
            )
            if now - conn.last_notice >= _NOTICE_EVERY:
                conn.last_notice = now
                await self.sio.emit("error", problem, to=sid)
            return {"ok": False, "error": problem}
        try:
            kind = parse_activity(args)
        except ProtocolError as exc:
            return await self._client_error(sid, exc)
        if kind.category is Category.KEEPALIVE:
            return _NOT_COUNTED
        try:
            self.engine.record_activity(conn.session_id, kind, source="gateway")
        except NotFound:
            await self._client_error(sid, ProtocolError("session_not_found", "session is gone"))
            self.spawn(self.members.close(sid))
            return {"ok": False, "error": error("session_not_found", "session is gone")}
        except InvalidInput as exc:
            return await self._client_error(sid, ProtocolError("invalid_activity", str(exc)))
        self.stats.activity_applied += 1
        return _COUNTED if kind.category is Category.MEANINGFUL else _NOT_COUNTED

    async def _on_pong(self, sid: str, *args: Any) -> dict[str, Any] | None:
        conn = self.conns.get(sid)
        if conn is None or not conn.registered:
            return None
        try:
            ts = parse_pong(args)
        except ProtocolError as exc:
            return await self._client_error(sid, exc)
        now = self.clock.monotonic()
        if not conn.heartbeat.pong(ts, now):
            return await self._client_error(
                sid, ProtocolError("invalid_pong", "pong 'ts' matches no ping sent")
            )
        self._note_quality(conn, now)
        return None

    async def _on_unknown(self, event: Any, sid: str, *args: Any) -> dict[str, Any]:
        name = str(event)[:40]
        return await self._client_error(
            sid,
            ProtocolError("unknown_event", f"unknown event {name!r}; send activity or pong"),
        )

    async def _client_error(self, sid: str, exc: ProtocolError) -> dict[str, Any]:
        self.stats.invalid_events += 1
        await self.sio.emit("error", exc.payload(), to=sid)
        return {"ok": False, "error": exc.payload()}

    async def refuse_message(self, eio_sid: str, code: str, message: str) -> None:
        self.stats.invalid_events += 1
        sid = self.sio.manager.sid_from_eio_sid(eio_sid, "/")
        if sid is not None:
            await self.sio.emit("error", error(code, message), to=sid)

    def _note_quality(self, conn: Connection, now: float) -> None:
        quality = conn.heartbeat.quality(now)
        if quality is conn.quality:
            return
        conn.quality = quality
        room = self.rooms.get(conn.session_id)
        if room is not None:
            self._presence_soon(room)
            self.pusher.refresh(room)

    # the ticker: heartbeats, presence, level changes ------------------------------------------

    async def _run(self) -> None:
        while True:
            await self.clock.sleep(self.settings.tick)
            try:
                await self.tick()
            except Exception:
                log.exception("gateway tick failed")

    async def tick(self) -> None:
        now = self.clock.monotonic()
        await self.sockets.expire_handshakes(now)
        self.keys.tick(now)
        await self._heartbeats(now)
        for room in list(self.rooms.values()):
            if room.presence_dirty and room.presence_next <= now:
                room.presence_dirty = False
                # Joins and leaves are coalesced: a crowded room hears at most about once a
                # second (a list of 100 names to 100 people per join would be quadratic).
                spacing = min(1.0, len(room.members) / 100)
                room.presence_next = now + max(self.settings.tick, spacing)
                await self._presence(room)
            if room.level_check_at is not None and room.level_check_at <= now:
                room.level_check_at = None
                self.pusher.refresh(room)
            if not room.syncing and len(room.members) != room.synced:
                self.counts.sync(room)  # a count the engine did not take (store trouble): again

    async def _heartbeats(self, now: float) -> None:
        while self._heap and self._heap[0][0] <= now:
            _, _, sid = heapq.heappop(self._heap)
            conn = self.conns.get(sid)
            if conn is None or conn.closed or not conn.registered:
                continue
            beat = conn.heartbeat
            if beat.next_at > now:  # rescheduled since (should not happen; be safe)
                heapq.heappush(self._heap, (beat.next_at, next(self._seq), sid))
                continue
            if beat.expired():
                self.stats.heartbeat_drops += 1
                log.info(
                    "dropping %s of session %s: %d pings unanswered",
                    sid,
                    conn.session_id,
                    beat.missed,
                )
                await self.sio.emit(
                    "error",
                    error("heartbeat_timeout", f"{beat.missed} pings went unanswered"),
                    to=sid,
                )
                self.spawn(self.members.close(sid))
                continue
            ts = int(self.clock.now().timestamp() * 1000)
            while ts in beat.outstanding:
                ts += 1
            beat.sent(ts, now)
            await self.sio.emit("ping", {"ts": ts}, to=sid)
            self._note_quality(conn, now)
            heapq.heappush(self._heap, (beat.next_at, next(self._seq), sid))

    async def _presence(self, room: Room) -> None:
        if not room.members:
            return
        now = self.clock.monotonic()
        people = []
        for conn in itertools.islice(room.members.values(), self.settings.presence_limit):
            beat = conn.heartbeat
            people.append(
                {
                    "id": conn.sid,
                    "name": conn.name,
                    "user_id": conn.user_id,
                    "since": conn.joined_at,
                    "quality": beat.quality(now).value,
                    "rtt_ms": None if beat.rtt is None else round(beat.rtt * 1000),
                }
            )
        await self.sio.emit(
            "presence",
            {
                "participants": people,
                "occupancy": len(room.members),
                "truncated": len(room.members) > len(people),
            },
            room=room.name,
        )

    # plumbing ---------------------------------------------------------------------------------

    def spawn(self, coro: Awaitable[None]) -> None:
        async def guarded() -> None:
            try:
                await coro
            except Exception:
                log.exception("gateway task failed")

        task = asyncio.create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
