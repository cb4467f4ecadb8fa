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
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

import socketio  # type: ignore[import-untyped]

from dormant.clock import Clock
from dormant.engine import Engine, EngineEvent
from dormant.errors import DormantError, InvalidInput, NotFound, TemporaryError
from dormant.gateway.heartbeat import Heartbeat, Quality, worst
from dormant.gateway.limits import TokenBucket
from dormant.gateway.protocol import (
    ProtocolError,
    error,
    iso,
    parse_activity,
    parse_pong,
    session_view,
)
from dormant.gateway.tokens import Claims, TokenError, TokenIssuer
from dormant.policy import Action, Category, Level, State
from dormant.store.records import SessionRecord

log = logging.getLogger("dormant.gateway")

#: Messages above this size close the transport (Engine.IO's own limit); between
#: ``max_payload_bytes`` and this they are refused with an ``error`` event and dropped.
HARD_MESSAGE_LIMIT = 1_000_000
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
    HTTP requests need; polling bodies are bounded by Engine.IO, each message by the gateway."""

    def __init__(self, app: Any, gateway_app: Any, path: str = "/socket.io/") -> None:
        self.app = app
        self.gateway_app = gateway_app
        self.path = path

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket") and scope["path"].startswith(self.path):
            await self.gateway_app(scope, receive, send)
        else:
            await self.app(scope, receive, send)


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    max_connections: int = 10_000
    max_connections_per_session: int = 100
    activity_rate: float = 20.0
    activity_burst: int = 40
    max_payload_bytes: int = 64 * 1024
    cors_origins: str | list[str] = "*"
    #: How often heartbeats, presence and level changes are looked at (seconds).
    tick: float = 0.1
    #: Participants listed in a ``presence`` event; ``occupancy`` always counts everyone.
    presence_limit: int = 100


@dataclass
class GatewayStats:
    connections: int = 0
    connected_total: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    activity_applied: int = 0
    activity_dropped: int = 0
    invalid_events: int = 0
    heartbeat_drops: int = 0
    broadcasts: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "connections": self.connections,
            "connected_total": self.connected_total,
            "refused": dict(self.refused),
            "activity_applied": self.activity_applied,
            "activity_dropped": self.activity_dropped,
            "invalid_events": self.invalid_events,
            "heartbeat_drops": self.heartbeat_drops,
            "broadcasts": self.broadcasts,
        }


class Connection:
    __slots__ = (
        "bucket",
        "closed",
        "dropped",
        "heartbeat",
        "joined_at",
        "last_notice",
        "name",
        "quality",
        "registered",
        "session_id",
        "sid",
        "tenant",
        "user_id",
    )

    def __init__(self, sid: str, claims: Claims, heartbeat: Heartbeat, bucket: TokenBucket):
        self.sid = sid
        self.session_id = claims.session_id
        self.user_id = claims.user_id
        self.tenant = claims.tenant
        self.name = claims.name
        self.heartbeat = heartbeat
        self.bucket = bucket
        self.joined_at = ""
        self.quality = Quality.STABLE
        self.dropped = 0
        self.last_notice = -math.inf
        self.registered = False
        self.closed = False


class Room:
    """The connections of one session in this process."""

    __slots__ = (
        "joining",
        "last_key",
        "last_kind",
        "left",
        "level",
        "level_check_at",
        "lock",
        "members",
        "newest",
        "presence_dirty",
        "presence_next",
        "record",
        "refresh_again",
        "refreshing",
        "session_id",
        "synced",
        "syncing",
    )

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self.members: dict[str, Connection] = {}
        self.joining = 0
        self.lock = asyncio.Lock()
        self.last_key: tuple[Any, ...] | None = None
        self.last_kind: str | None = None
        self.newest: tuple[int, datetime, datetime] | None = None
        self.level: str | None = None
        self.level_check_at: float | None = None
        self.presence_dirty = False
        self.presence_next = 0.0
        self.refreshing = False
        self.refresh_again = False
        #: The freshest view of the session (first join, engine events, refreshes).
        self.record: SessionRecord | None = None
        #: The count the engine has; a worker brings it to ``len(members)``, coalescing storms.
        self.synced = 0
        self.syncing = False
        self.left = False

    @property
    def name(self) -> str:
        return f"session:{self.session_id}"

    @property
    def empty(self) -> bool:
        return not self.members and not self.joining


_EPOCH = datetime.min.replace(tzinfo=UTC)


def _age(record: SessionRecord) -> tuple[int, datetime, datetime]:
    """How recent a view of a session is: its stored version, then activity not yet stored."""
    return (
        record.version,
        record.last_activity_at or _EPOCH,
        record.last_seen_at or _EPOCH,
    )


def _trim(environ: dict[str, Any]) -> None:
    """Drop the handshake's request headers: Engine.IO keeps the environ for the connection's
    whole life and nothing reads them after the handshake (about 2 KB per connection)."""
    for key in [k for k in environ if k.startswith("HTTP_")]:
        del environ[key]
    environ.pop("wsgi.input", None)


class Refused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _SocketServer(socketio.AsyncServer):  # type: ignore[misc]
    """python-socketio with two guards on every incoming message: its size, and that a
    malformed packet answers an ``error`` event instead of a logged traceback."""

    gateway: Gateway

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        limit = self.gateway.settings.max_payload_bytes
        if isinstance(data, str | bytes) and len(data) > limit:
            await self.gateway.refuse_message(
                eio_sid, "payload_too_large", f"message of {len(data)} bytes; limit is {limit}"
            )
            return
        try:
            await super()._handle_eio_message(eio_sid, data)
        except Exception as exc:
            log.info("malformed packet from %s: %s", eio_sid, exc)
            await self.gateway.refuse_message(
                eio_sid, "malformed_packet", "the message is not a valid Socket.IO packet"
            )


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
        self.sio = _SocketServer(
            async_mode="asgi",
            cors_allowed_origins=self.settings.cors_origins,
            max_http_buffer_size=max(HARD_MESSAGE_LIMIT, self.settings.max_payload_bytes),
            async_handlers=False,
            logger=False,
            engineio_logger=False,
        )
        self.sio.gateway = self
        self.sio.on("connect", self._on_connect)
        self.sio.on("disconnect", self._on_disconnect)
        self.sio.on("activity", self._on_activity)
        self.sio.on("pong", self._on_pong)
        self.sio.on("*", self._on_unknown)
        self.asgi_app = socketio.ASGIApp(self.sio, socketio_path=None)
        self._conns: dict[str, Connection] = {}
        self._rooms: dict[str, Room] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        #: Store operations the gateway may have in flight (connects, disconnects, refreshes).
        self._store_slots = asyncio.Semaphore(STORE_CONCURRENCY)
        engine.listeners.append(self._on_engine_event)

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
        for sid in list(self._conns):
            await self._close(sid)
        await self.drain()

    async def drain(self) -> None:
        """Wait for every task the gateway started (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def connection_count(self, session_id: str | None = None) -> int:
        if session_id is None:
            return len(self._conns)
        room = self._rooms.get(session_id)
        return len(room.members) if room is not None else 0

    def connection_quality(self, session_id: str) -> str | None:
        room = self._rooms.get(session_id)
        if room is None or not room.members:
            return None
        now = self.clock.monotonic()
        found = worst([c.heartbeat.quality(now) for c in room.members.values()])
        return found.value if found is not None else None

    def mint_token(
        self, record: SessionRecord, name: str | None, ttl: float | None
    ) -> tuple[str, datetime]:
        return self.tokens.mint(
            session_id=record.id,
            user_id=record.user_id,
            tenant=record.tenant,
            name=name,
            ttl=ttl,
        )

    async def broadcast(self, session_id: str, type_: str, data: Any) -> int:
        """Relay ``event {type, data}`` to the session's clients; returns how many got it."""
        room = self._rooms.get(session_id)
        self.stats.broadcasts += 1
        if room is None or not room.members:
            return 0
        await self.sio.emit("event", {"type": type_, "data": data}, room=room.name)
        return len(room.members)

    # connect and disconnect -------------------------------------------------------------------

    async def _on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> bool:
        try:
            claims = self._admit(environ, auth)
        except Refused as exc:
            return self._refuse(exc)
        _trim(environ)
        room = self._rooms.get(claims.session_id)
        if room is None:
            room = self._rooms[claims.session_id] = Room(claims.session_id)
        if len(room.members) + room.joining >= self.settings.max_connections_per_session:
            self._drop_room_if_empty(room)
            return self._refuse(
                Refused(
                    "session_full",
                    f"session has {self.settings.max_connections_per_session} connections "
                    "already (the most allowed)",
                )
            )
        room.joining += 1
        try:
            return await self._join(sid, claims, room)
        finally:
            room.joining -= 1
            self._drop_room_if_empty(room)

    def _admit(self, environ: dict[str, Any], auth: Any) -> Claims:
        query = parse_qs(str(environ.get("QUERY_STRING", "")))
        if "token" in query or "auth" in query:
            raise Refused(
                "token_in_query",
                "tokens never travel in the query string; connect with auth: {token}",
            )
        if not isinstance(auth, dict) or "token" not in auth:
            raise Refused("unauthorized", "missing token: connect with auth: {token}")
        try:
            claims = self.tokens.verify(auth.get("token"))
        except TokenError as exc:
            raise Refused(exc.code, str(exc)) from None
        # Joining connections are in _conns already (nothing awaits between here and there).
        if len(self._conns) >= self.settings.max_connections:
            raise Refused(
                "server_full",
                f"this server holds {self.settings.max_connections} connections (its limit); "
                "try again later",
            )
        return claims

    def _refuse(self, exc: Refused) -> bool:
        self.stats.refused[exc.code] = self.stats.refused.get(exc.code, 0) + 1
        log.info("connection refused: %s: %s", exc.code, exc.message)
        raise socketio.exceptions.ConnectionRefusedError(exc.message, {"code": exc.code})

    async def _join(self, sid: str, claims: Claims, room: Room) -> bool:
        now = self.clock.monotonic()
        conn = Connection(
            sid,
            claims,
            Heartbeat(25.0, 3, now),  # replaced by the session's settings below
            TokenBucket(self.settings.activity_rate, self.settings.activity_burst, now),
        )
        self._conns[sid] = conn
        record = room.record
        if record is None:
            # The first of a room looks the session up; whoever arrives meanwhile waits for it,
            # and later ones need no store at all: a reconnect storm costs one read.
            async with room.lock:
                record = room.record
                if record is None:
                    try:
                        async with self._store_slots:
                            record = await self.engine.get(room.session_id)
                    except Exception as exc:
                        self._conns.pop(sid, None)
                        if isinstance(exc, NotFound):
                            return self._refuse(Refused("session_not_found", "no such session"))
                        if not isinstance(exc, DormantError):
                            log.exception("looking up session %s failed", room.session_id)
                        return self._refuse(Refused("unavailable", "cannot attach now; retry"))
                    room.record = record
                    room.synced = record.connections
        if conn.closed:  # the client went away while we were looking
            self._conns.pop(sid, None)
            return False
        if record.tenant != claims.tenant or record.state in (State.DELETING, State.DELETED):
            self._conns.pop(sid, None)
            return self._refuse(Refused("session_not_found", "no such session"))
        policy = self.engine.policy_of(record)
        conn.heartbeat = Heartbeat(policy.heartbeat_interval, policy.missed_pongs, now)
        conn.joined_at = self.clock.now().isoformat()
        conn.registered = True
        room.members[sid] = conn
        await self.sio.enter_room(sid, room.name)
        self.stats.connections = len(self._conns)
        self.stats.connected_total += 1
        heapq.heappush(self._heap, (conn.heartbeat.next_at, next(self._seq), sid))
        self._presence_soon(room)
        self._sync(room)
        # The CONNECT packet goes out when this handler returns; greet after it.
        self._spawn(self._greet(conn))
        return True

    def _sync(self, room: Room) -> None:
        """Bring the engine's count of the room's session to the room's; one worker a room."""
        if not room.syncing:
            room.syncing = True
            self._spawn(self._sync_now(room))

    async def _sync_now(self, room: Room) -> None:
        """``connect``/``disconnect`` with the live count until the engine agrees. A storm of
        joins and leaves becomes a few calls; the last leave is always told (grace starts)."""
        try:
            while True:
                count = len(room.members)
                left, room.left = room.left, False
                if count == room.synced and not (left and count == 0):
                    return
                try:
                    async with self._store_slots:
                        if count > room.synced:
                            record = await self.engine.connect(room.session_id, count=count)
                        else:
                            record = await self.engine.disconnect(room.session_id, count=count)
                except NotFound:
                    room.synced = count
                    await self._close_room(room)
                    return
                except TemporaryError as exc:
                    log.warning("counting connections of %s: %s; retrying", room.session_id, exc)
                    return  # the ticker tries again
                except Exception:
                    log.exception("counting connections of session %s failed", room.session_id)
                    return
                room.synced = count
                await self._push(room, record)
        finally:
            room.syncing = False
            self._drop_room_if_empty(room)

    async def _greet(self, conn: Connection) -> None:
        await asyncio.sleep(0)
        room = self._rooms.get(conn.session_id)
        if conn.closed or room is None or room.record is None:
            return
        record = room.record
        view = self._view(record, room)
        await self.sio.emit("session", view.payload, to=conn.sid)
        if room.last_key is None:
            room.last_key = view.key
            room.last_kind = record.last_activity_kind
            self._arm_level_check(room, record)
        if view.payload["warning"] is not None:
            await self.sio.emit("sleep-warning", view.payload["warning"], to=conn.sid)

    async def _on_disconnect(self, sid: str, reason: Any = None) -> None:
        conn = self._conns.get(sid)
        if conn is None:
            return
        conn.closed = True
        if not conn.registered:
            return  # _join sees ``closed`` and cleans up
        self._conns.pop(sid, None)
        self.stats.connections = len(self._conns)
        room = self._rooms.get(conn.session_id)
        if room is None or room.members.pop(sid, None) is None:
            return
        log.info(
            "connection closed session=%s reason=%s left=%d",
            conn.session_id,
            reason,
            len(room.members),
        )
        room.left = True
        self._presence_soon(room)
        self._sync(room)

    def _presence_soon(self, room: Room) -> None:
        room.presence_dirty = True

    def _drop_room_if_empty(self, room: Room) -> None:
        """Forget a room nobody is in once the engine knows it (a new one starts afresh)."""
        if (
            room.empty
            and not room.syncing
            and (room.synced == 0 or room.record is None)
            and self._rooms.get(room.session_id) is room
        ):
            del self._rooms[room.session_id]

    # client events ----------------------------------------------------------------------------

    async def _on_activity(self, sid: str, *args: Any) -> dict[str, Any]:
        conn = self._conns.get(sid)
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
            self._spawn(self._close(sid))
            return {"ok": False, "error": error("session_not_found", "session is gone")}
        except InvalidInput as exc:
            return await self._client_error(sid, ProtocolError("invalid_activity", str(exc)))
        self.stats.activity_applied += 1
        return _COUNTED if kind.category is Category.MEANINGFUL else _NOT_COUNTED

    async def _on_pong(self, sid: str, *args: Any) -> dict[str, Any] | None:
        conn = self._conns.get(sid)
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

    # engine events ----------------------------------------------------------------------------

    def _on_engine_event(self, event: EngineEvent) -> None:
        room = self._rooms.get(event.session_id)
        if room is None:
            return
        if not room.members:
            if event.session is not None:  # keep the cached view fresh for whoever joins next
                self._spawn(self._push(room, event.session))
            return
        if event.type == "transition" and event.session is not None:
            self._spawn(self._push(room, event.session))
            if event.to_state in (State.DELETING.value, State.DELETED.value):
                self._spawn(self._close_room(room))
        elif event.type == "warning" and event.session is not None:
            self._spawn(self._warn(room, event))
        elif event.type == "warning-cancelled" or (
            event.type == "activity"
            and (room.level != Level.ACTIVE.value or room.last_kind != event.reason)
        ):
            # Level or kind changed; a later time alone is not worth a message to everyone.
            self._refresh(room)

    async def _warn(self, room: Room, event: EngineEvent) -> None:
        record = event.session
        assert record is not None
        policy = self.engine.policy_of(record)
        decision = event.decision
        at: datetime | None
        if decision is not None and decision.at is not None:
            at = decision.at + timedelta(seconds=policy.warn_before)
        else:
            at = self.engine.describe(record)[1].at
        reason = (
            decision.reason.split(": ", 1)[-1]
            if decision is not None
            else f"no meaningful activity for {policy.sleep_after:g}s"
        )
        await self.sio.emit("sleep-warning", {"at": iso(at), "reason": reason}, room=room.name)
        await self._push(room, record)

    async def _close_room(self, room: Room) -> None:
        for sid in list(room.members):
            await self.sio.emit(
                "error", error("session_deleted", "the session was deleted"), to=sid
            )
            await self._close(sid)

    async def _close(self, sid: str) -> None:
        try:
            await self.sio.disconnect(sid)
        except Exception:
            log.exception("closing connection %s failed", sid)

    # the session event ------------------------------------------------------------------------

    def _view(self, record: SessionRecord, room: Room | None) -> Any:
        lvl, decision = self.engine.describe(record)
        warning_at = None
        if (
            record.warned_at is not None
            and decision.action is Action.SLEEP
            and decision.at is not None
        ):
            warn_from = decision.at - timedelta(seconds=self.engine.policy_of(record).warn_before)
            if record.warned_at >= warn_from:
                warning_at = record.warned_at
        return session_view(
            session_id=record.id,
            user_id=record.user_id,
            state=record.state.value,
            level=lvl,
            decision=decision,
            warning_at=warning_at,
            connections=record.connections,
            quality=self.connection_quality(record.id) if room is not None else None,
            last_activity_at=record.last_activity_at,
            last_activity_kind=record.last_activity_kind,
            error_text=record.error,
        )

    async def _push(self, room: Room, record: SessionRecord, force: bool = False) -> None:
        """Send ``session`` to the room if what clients see changed."""
        age = _age(record)
        if room.newest is not None and age < room.newest:
            return  # an engine event overtaken by a fresher read: clients know better already
        room.newest = age
        room.record = record
        if not room.members:
            return
        view = self._view(record, room)
        self._arm_level_check(room, record)
        if not force and view.key == room.last_key:
            return
        room.last_key = view.key
        room.level = view.payload["level"]
        room.last_kind = record.last_activity_kind
        await self.sio.emit("session", view.payload, room=room.name)

    def _arm_level_check(self, room: Room, record: SessionRecord) -> None:
        """Levels change with time alone (active -> idle -> background): look again then."""
        lvl, _ = self.engine.describe(record)
        room.level = lvl.value
        policy = self.engine.policy_of(record)
        anchor = record.last_activity_at or record.created_at
        if lvl is Level.ACTIVE:
            boundary = anchor + timedelta(seconds=policy.active_within)
        elif lvl is Level.IDLE:
            boundary = anchor + timedelta(seconds=policy.idle_within)
        else:
            room.level_check_at = None
            return
        wait = max(0.0, (boundary - self.clock.now()).total_seconds())
        room.level_check_at = self.clock.monotonic() + wait + self.settings.tick

    def _refresh(self, room: Room) -> None:
        if room.refreshing:
            room.refresh_again = True
            return
        room.refreshing = True
        self._spawn(self._refresh_now(room))

    async def _refresh_now(self, room: Room) -> None:
        try:
            while True:
                room.refresh_again = False
                try:
                    async with self._store_slots:
                        record = await self.engine.get(room.session_id)
                except NotFound:
                    await self._close_room(room)
                    return
                except TemporaryError as exc:
                    log.warning("refreshing session %s: %s", room.session_id, exc)
                    return
                except Exception:
                    log.exception("refreshing session %s failed", room.session_id)
                    return
                await self._push(room, record)
                if not room.refresh_again:
                    return
        finally:
            room.refreshing = False

    def _note_quality(self, conn: Connection, now: float) -> None:
        quality = conn.heartbeat.quality(now)
        if quality is conn.quality:
            return
        conn.quality = quality
        room = self._rooms.get(conn.session_id)
        if room is not None:
            self._presence_soon(room)
            self._refresh(room)

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
        await self._heartbeats(now)
        for room in list(self._rooms.values()):
            if room.presence_dirty and room.presence_next <= now:
                room.presence_dirty = False
                # Joins and leaves are coalesced: a crowded room hears at most about once a
                # second (a list of 100 names to 100 people per join would be quadratic).
                spacing = min(1.0, len(room.members) / 100)
                room.presence_next = now + max(self.settings.tick, spacing)
                await self._presence(room)
            if room.level_check_at is not None and room.level_check_at <= now:
                room.level_check_at = None
                self._refresh(room)
            if not room.syncing and len(room.members) != room.synced:
                self._sync(room)  # a count the engine did not take (store trouble): again

    async def _heartbeats(self, now: float) -> None:
        while self._heap and self._heap[0][0] <= now:
            _, _, sid = heapq.heappop(self._heap)
            conn = self._conns.get(sid)
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
                self._spawn(self._close(sid))
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

    def _spawn(self, coro: Awaitable[None]) -> None:
        async def guarded() -> None:
            try:
                await coro
            except Exception:
                log.exception("gateway task failed")

        task = asyncio.create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
