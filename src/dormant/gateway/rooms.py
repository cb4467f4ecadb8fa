"""A session's connections in this process: each :class:`Connection`, the :class:`Room` they
share (which also holds what the gateway knows and told about the session), and
:class:`Membership`: joining a room once admitted, leaving it, closing connections."""

from __future__ import annotations

import asyncio
import logging
import math
from datetime import datetime
from typing import TYPE_CHECKING, Any

from dormant.errors import DormantError, NotFound
from dormant.gateway.heartbeat import Heartbeat, Quality
from dormant.gateway.limits import TokenBucket
from dormant.gateway.protocol import Refused, error
from dormant.gateway.push import view_age
from dormant.gateway.tokens import Claims
from dormant.policy import State
from dormant.store.records import SessionRecord

if TYPE_CHECKING:
    from dormant.gateway.server import Gateway

log = logging.getLogger("dormant.gateway")


def room_name(session_id: str) -> str:
    """The Socket.IO room of a session's clients (on every replica)."""
    return f"session:{session_id}"


class Connection:
    __slots__ = (
        "bucket",
        "closed",
        "dropped",
        "eio_sid",
        "heartbeat",
        "joined_at",
        "key_id",
        "last_notice",
        "name",
        "quality",
        "registered",
        "session_id",
        "sid",
        "tenant",
        "user_id",
    )

    def __init__(
        self,
        sid: str,
        claims: Claims,
        heartbeat: Heartbeat,
        bucket: TokenBucket,
        eio_sid: str | None = None,
    ):
        self.sid = sid
        self.eio_sid = eio_sid
        self.key_id = claims.key_id
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
    """The connections of one session in this process (with several replicas, each has its
    own Room of a session; they share the Socket.IO room :func:`room_name`)."""

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
        "presence_busy",
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
        #: An announcement is being made (across replicas it reads Redis first).
        self.presence_busy = False
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
        return room_name(self.session_id)

    @property
    def empty(self) -> bool:
        return not self.members and not self.joining


class Membership:
    """Who is in which room: a connection joins once admitted (:mod:`dormant.gateway.admission`)
    and leaves when it closes; a room nobody is in is forgotten once the engine knows."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def join(self, sid: str, claims: Claims, room: Room, eio_sid: str | None) -> bool:
        """Register an admitted connection in its session's room (False if its client went
        away meanwhile); a session that is gone or cannot be looked up raises :class:`Refused`."""
        gateway = self.gateway
        now = gateway.clock.monotonic()
        conn = Connection(
            sid,
            claims,
            Heartbeat(25.0, 3, now),  # replaced by the session's settings below
            TokenBucket(gateway.settings.activity_rate, gateway.settings.activity_burst, now),
            eio_sid,
        )
        gateway.conns[sid] = conn
        record = room.record
        if record is None:
            # The first of a room looks the session up; whoever arrives meanwhile waits for it,
            # and later ones need no store at all: a reconnect storm costs one read. Store work
            # waits its turn (``store_slots``), and is done only for a client still there: one
            # that left while waiting hands the lookup to the next in line.
            async with room.lock:
                record = room.record
                if record is None:
                    try:
                        async with gateway.store_slots:
                            if self._gone(conn):
                                gateway.conns.pop(sid, None)
                                return False
                            record = await gateway.engine.get(room.session_id)
                    except Exception as exc:
                        gateway.conns.pop(sid, None)
                        if isinstance(exc, NotFound):
                            raise Refused("session_not_found", "no such session") from None
                        if not isinstance(exc, DormantError):
                            log.exception("looking up session %s failed", room.session_id)
                        raise Refused("unavailable", "cannot attach now; retry") from None
                    pushed = room.record  # an engine event (here or elsewhere) meanwhile
                    if pushed is not None and view_age(pushed) > view_age(record):
                        record = pushed
                    room.record = record
                    # What this instance told the store before (other instances' count apart).
                    room.synced = record.connections_by_instance.get(
                        gateway.engine.settings.instance_id, 0
                    )
        if self._gone(conn):
            gateway.conns.pop(sid, None)  # the client went away while we were looking
            return False
        if record.tenant != claims.tenant or record.state in (State.DELETING, State.DELETED):
            gateway.conns.pop(sid, None)
            raise Refused("session_not_found", "no such session")
        policy = gateway.engine.policy_of(record)
        conn.heartbeat = Heartbeat(policy.heartbeat_interval, policy.missed_pongs, now)
        conn.joined_at = gateway.clock.now().isoformat()
        conn.registered = True
        gateway.sockets.accepted(eio_sid)
        room.members[sid] = conn
        await gateway.sio.enter_room(sid, room.name)
        gateway.stats.connections = len(gateway.conns)
        gateway.stats.connected_total += 1
        gateway.heartbeats.schedule(conn)
        gateway.presence.soon(room)
        gateway.counts.sync(room)
        # The CONNECT packet goes out when this handler returns; greet after it.
        gateway.spawn(gateway.pusher.greet(conn))
        return True

    def _gone(self, conn: Connection) -> bool:
        """Whether a joining connection's client went away (its socket closed)."""
        return conn.closed or (
            conn.eio_sid is not None and conn.eio_sid not in self.gateway.sockets.open
        )

    async def on_disconnect(self, sid: str, reason: Any = None) -> None:
        """The Socket.IO ``disconnect`` handler: leave the room, and owe a connect again."""
        gateway = self.gateway
        conn = gateway.conns.get(sid)
        if conn is None:
            return
        conn.closed = True
        if not conn.registered:
            return  # join sees ``closed`` and cleans up
        gateway.conns.pop(sid, None)
        gateway.stats.connections = len(gateway.conns)
        gateway.sockets.await_connect(conn.eio_sid)
        room = gateway.rooms.get(conn.session_id)
        if room is None or room.members.pop(sid, None) is None:
            return
        log.info(
            "connection closed session=%s reason=%s left=%d",
            conn.session_id,
            reason,
            len(room.members),
        )
        room.left = True
        gateway.presence.soon(room)
        gateway.counts.sync(room)

    def drop_if_empty(self, room: Room) -> None:
        """Forget a room nobody is in once the engine knows it (a new one starts afresh)."""
        gateway = self.gateway
        if (
            room.empty
            and not room.syncing
            and (room.synced == 0 or room.record is None)
            and gateway.rooms.get(room.session_id) is room
        ):
            del gateway.rooms[room.session_id]

    async def close_room(self, room: Room) -> None:
        """The session was deleted: tell its clients and close them."""
        for sid in list(room.members):
            await self.gateway.emit_local(
                "error", error("session_deleted", "the session was deleted"), to=sid
            )
            await self.close(sid)

    async def close(self, sid: str) -> None:
        """Close a connection here (its ``disconnect`` handler runs)."""
        try:
            await self.gateway.sio.disconnect(sid, ignore_queue=True)
        except Exception:
            log.exception("closing connection %s failed", sid)
