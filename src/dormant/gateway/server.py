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

This module wires the parts together; each lives in its own module:

- :mod:`~dormant.gateway.guard`: packets checked before python-engineio/-socketio parse them;
- :mod:`~dormant.gateway.sockets`: Engine.IO sockets, their limit, handshake timeout, hang-ups;
- :mod:`~dormant.gateway.admission`: the Socket.IO connect (token, API key, limits);
- :mod:`~dormant.gateway.keys`: API keys behind tokens, revocations of live connections;
- :mod:`~dormant.gateway.rooms`: connections, rooms, joining and leaving;
- :mod:`~dormant.gateway.sync`: the engine's count of a session's connections;
- :mod:`~dormant.gateway.push`: the ``session`` event and sleep warnings, from engine events;
- :mod:`~dormant.gateway.heartbeats`, :mod:`~dormant.gateway.presence`: pings, quality, who is
  here;
- :mod:`~dormant.gateway.client_events`: ``activity`` and whatever else clients send;
- :mod:`~dormant.gateway.replicas`: several replicas joined by Redis (``DORMANT_REDIS_URL``).

With several replicas, python-socketio's ``AsyncRedisManager`` joins their Socket.IO servers:
broadcasts go to a session's room through it and reach its clients on every replica; the
engine events of each replica are passed on to the others, and each tells its own clients
(``session``, ``sleep-warning``); presence counts the clients of every replica. What only this
replica's clients need (pings, errors, greetings) never leaves it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from datetime import datetime
from typing import Any

import socketio  # type: ignore[import-untyped]

from dormant.clock import Clock
from dormant.engine import Engine
from dormant.gateway.admission import Admission
from dormant.gateway.client_events import ClientEvents
from dormant.gateway.guard import EngineGuard, GuardedServer
from dormant.gateway.heartbeats import Heartbeats
from dormant.gateway.keys import KeyChecks
from dormant.gateway.presence import Presence
from dormant.gateway.push import Pusher
from dormant.gateway.replicas import Replicas
from dormant.gateway.rooms import Connection, Membership, Room, room_name
from dormant.gateway.settings import GatewaySettings, GatewayStats
from dormant.gateway.sockets import Sockets
from dormant.gateway.sync import CountSync
from dormant.gateway.tokens import TokenIssuer
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
#: The store's connection pool is small (SQLAlchemy's default: 5 + 10 overflow); leave room
#: for the API and the engine.
STORE_CONCURRENCY = 8


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
    """The Socket.IO server, its parts, and the state they share (settings, counters, the
    connections and rooms of this process, the store's slots, the tasks they start)."""

    def __init__(
        self,
        engine: Engine,
        tokens: TokenIssuer,
        settings: GatewaySettings | None = None,
        clock: Clock | None = None,
        replicas: Replicas | None = None,
    ) -> None:
        self.engine = engine
        self.tokens = tokens
        self.settings = settings or GatewaySettings()
        self.clock = clock or engine.clock
        self.stats = GatewayStats()
        #: The other replicas (None: this process is the whole gateway).
        self.replicas = replicas
        # What the parts share: connections and rooms, the store's slots, the tasks started.
        #: Every connection, joining or registered, by Socket.IO sid.
        self.conns: dict[str, Connection] = {}
        #: The rooms of sessions with connections here (or a count still to tell the engine).
        self.rooms: dict[str, Room] = {}
        #: Store operations the gateway may have in flight (connects, disconnects, refreshes).
        self.store_slots = asyncio.Semaphore(STORE_CONCURRENCY)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        # The parts, one concept each.
        self.sockets = Sockets(self)
        self.keys = KeyChecks(self)
        self.admission = Admission(self)
        self.members = Membership(self)
        self.counts = CountSync(self)
        self.pusher = Pusher(self)
        self.heartbeats = Heartbeats(self)
        self.presence = Presence(self)
        self.client_events = ClientEvents(self)
        # The names EngineGuard and tests read these by.
        self._sockets = self.sockets.open
        self._pending = self.sockets.pending
        self._noted = self.sockets.noted
        self._rooms = self.rooms
        self._on_connect = self.admission.on_connect
        self._on_disconnect = self.members.on_disconnect
        self._push = self.pusher.push
        self._on_activity = self.client_events.on_activity
        self._on_pong = self.heartbeats.on_pong
        self.sio = GuardedServer(
            async_mode="asgi",
            cors_allowed_origins=self.settings.cors_origins,
            max_http_buffer_size=max(HARD_MESSAGE_LIMIT, self.settings.max_payload_bytes),
            async_handlers=False,
            client_manager=replicas.manager if replicas is not None else None,
            logger=_socketio_log,
            engineio_logger=_engineio_log,
        )
        self.sio.gateway = self
        self.sio.on("connect", self.admission.on_connect)
        self.sio.on("disconnect", self.members.on_disconnect)
        self.sio.on("activity", self.client_events.on_activity)
        self.sio.on("pong", self.heartbeats.on_pong)
        self.sio.on("*", self.client_events.on_unknown)
        self.asgi_app = EngineGuard(socketio.ASGIApp(self.sio, socketio_path=None), self)
        engine.listeners.append(self.pusher.on_engine_event)
        if replicas is not None:
            replicas.bind(self.on_replica)

    # life of the gateway ----------------------------------------------------------------------

    async def start(self) -> None:
        if not self.sio.manager_initialized:
            # Now rather than at the first connection: a replica hears the others from its
            # start (python-socketio's Redis manager starts listening here).
            self.sio.manager_initialized = True
            self.sio.manager.initialize()
        if self.replicas is not None:
            await self.replicas.start()
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
        if self.replicas is not None:
            await self.presence.withdraw()
            await self.replicas.stop()

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
        return self.heartbeats.quality(session_id)

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
        """Relay ``event {type, data}`` to the session's clients; returns how many it went to.

        Across replicas it goes through Redis to the session's room on every replica, whether
        or not this one has clients of it; the count is this replica's clients plus those the
        others' presence entries list (theirs are left out while Redis cannot say)."""
        room = self.rooms.get(session_id)
        self.stats.broadcasts += 1
        here = len(room.members) if room is not None else 0
        payload = {"type": type_, "data": data}
        if self.replicas is None:
            if not here:
                return 0
            await self.sio.emit("event", payload, room=room_name(session_id))
            return here
        await self.sio.emit("event", payload, room=room_name(session_id))
        return here + await self.presence.elsewhere(session_id)

    async def emit_local(
        self, event: str, data: Any, *, to: str | None = None, room: str | None = None
    ) -> None:
        """Send to this replica's clients only: a connection here (``to``), or a room's
        members here (``room``); never through Redis."""
        await self.sio.emit(event, data, to=to, room=room, ignore_queue=True)

    async def on_replica(self, kind: str, body: dict[str, Any]) -> None:
        """A message from another replica (see :mod:`dormant.gateway.replicas`)."""
        try:
            if kind == "session":
                self.pusher.on_replica_event(body)
            elif kind == "presence":
                self.presence.heard(str(body.get("session_id")))
        except Exception:
            log.exception("handling %s from another replica failed", kind)

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

    async def refuse_message(self, eio_sid: str, code: str, message: str) -> None:
        await self.client_events.refuse_message(eio_sid, code, message)

    # the ticker: heartbeats, presence, level changes ------------------------------------------

    async def _run(self) -> None:
        while True:
            await self.clock.sleep(self.settings.tick)
            try:
                await self.tick()
            except Exception:
                log.exception("gateway tick failed")

    async def tick(self) -> None:
        """One look at what time moves: handshake deadlines, API keys, heartbeats, and each
        room's presence, level and count."""
        now = self.clock.monotonic()
        await self.sockets.expire_handshakes(now)
        self.keys.tick(now)
        await self.heartbeats.tick(now)
        self.presence.tick_replicas(now)
        for room in list(self.rooms.values()):
            await self.presence.tick(room, now)
            self.pusher.tick(room, now)
            self.counts.tick(room)

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
