"""Heartbeats on the wire: every connection is pinged each ``heartbeat_interval`` of its
session's policy (``ping {ts}``, answered by ``pong {ts}``) and dropped after ``missed_pongs``
unanswered pings; round trips make its quality (the bookkeeping of one connection is
:mod:`dormant.gateway.heartbeat`). Engine.IO's own ping/pong stays on underneath."""

from __future__ import annotations

import heapq
import itertools
import logging
from typing import TYPE_CHECKING, Any

from dormant.gateway.heartbeat import worst
from dormant.gateway.protocol import ProtocolError, error, parse_pong

if TYPE_CHECKING:
    from dormant.gateway.rooms import Connection
    from dormant.gateway.server import Gateway

log = logging.getLogger("dormant.gateway")


class Heartbeats:
    """When each connection is due a ping (a heap), pongs, and the quality they make."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        #: (next ping due, monotonic; tie-break; sid), soonest first.
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()

    def schedule(self, conn: Connection) -> None:
        """A connection just joined: its first ping is due one interval from now."""
        heapq.heappush(self._heap, (conn.heartbeat.next_at, next(self._seq), conn.sid))

    def quality(self, session_id: str) -> str | None:
        """The worst quality of the session's connections here (None without any)."""
        gateway = self.gateway
        room = gateway.rooms.get(session_id)
        if room is None or not room.members:
            return None
        now = gateway.clock.monotonic()
        found = worst([c.heartbeat.quality(now) for c in room.members.values()])
        return found.value if found is not None else None

    async def on_pong(self, sid: str, *args: Any) -> dict[str, Any] | None:
        gateway = self.gateway
        conn = gateway.conns.get(sid)
        if conn is None or not conn.registered:
            return None
        try:
            ts = parse_pong(args)
        except ProtocolError as exc:
            return await gateway.client_events.reject(sid, exc)
        now = gateway.clock.monotonic()
        if not conn.heartbeat.pong(ts, now):
            return await gateway.client_events.reject(
                sid, ProtocolError("invalid_pong", "pong 'ts' matches no ping sent")
            )
        self.note_quality(conn, now)
        return None

    def note_quality(self, conn: Connection, now: float) -> None:
        """A connection's quality moved: presence and the ``session`` event show it."""
        gateway = self.gateway
        quality = conn.heartbeat.quality(now)
        if quality is conn.quality:
            return
        conn.quality = quality
        room = gateway.rooms.get(conn.session_id)
        if room is not None:
            gateway.presence.soon(room)
            gateway.pusher.refresh(room)

    async def tick(self, now: float) -> None:
        """Ping every connection whose time has come; drop those that stopped answering."""
        gateway = self.gateway
        while self._heap and self._heap[0][0] <= now:
            _, _, sid = heapq.heappop(self._heap)
            conn = gateway.conns.get(sid)
            if conn is None or conn.closed or not conn.registered:
                continue
            beat = conn.heartbeat
            if beat.next_at > now:  # rescheduled since (should not happen; be safe)
                heapq.heappush(self._heap, (beat.next_at, next(self._seq), sid))
                continue
            if beat.expired():
                gateway.stats.heartbeat_drops += 1
                log.info(
                    "dropping %s of session %s: %d pings unanswered",
                    sid,
                    conn.session_id,
                    beat.missed,
                )
                await gateway.emit_local(
                    "error",
                    error("heartbeat_timeout", f"{beat.missed} pings went unanswered"),
                    to=sid,
                )
                gateway.spawn(gateway.members.close(sid))
                continue
            ts = int(gateway.clock.now().timestamp() * 1000)
            while ts in beat.outstanding:
                ts += 1
            beat.sent(ts, now)
            await gateway.emit_local("ping", {"ts": ts}, to=sid)
            self.note_quality(conn, now)
            heapq.heappush(self._heap, (beat.next_at, next(self._seq), sid))
