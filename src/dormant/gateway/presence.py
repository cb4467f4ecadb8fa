"""Presence: ``presence {participants, occupancy, truncated}`` to a room when people join or
leave or their connection quality changes, coalesced (a crowded room hears about once a
second at most).

With several replicas (:mod:`dormant.gateway.replicas`) each announces to its own clients of a
room: its live connections plus the entries the other replicas keep in Redis. When its clients
come and go it rewrites its own entry and tells the others, which announce again; every
``presence_ttl / 3`` seconds it refreshes its entries, and an entry whose replica stopped
refreshing it (died) is removed by the first replica that sees it expired, which tells the
others too."""

from __future__ import annotations

import itertools
import logging
import math
from typing import TYPE_CHECKING, Any

from dormant.gateway.replicas import Entry, people_of

if TYPE_CHECKING:
    from dormant.gateway.rooms import Connection, Room
    from dormant.gateway.server import Gateway

log = logging.getLogger("dormant.gateway")

#: After Redis failed, the entries still to write wait this long (seconds) before a new try.
RETRY_AFTER = 1.0
#: Redis trouble is logged at most this often (seconds).
COMPLAIN_EVERY = 10.0


class Presence:
    """Marks rooms whose presence changed; the ticker announces them (and, across replicas,
    keeps this replica's entries in Redis)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        #: Sessions whose entry (this replica's clients, as the others see them) must be
        #: rewritten, or removed, and the others told.
        self.unposted: set[str] = set()
        #: Sessions this replica has an entry for.
        self.posted: set[str] = set()
        #: Sessions whose entry is being written now.
        self.posting: set[str] = set()
        self._retry_at = -math.inf
        self._refresh_at = -math.inf
        self._refreshing = False
        self._complained_at = -math.inf

    def soon(self, room: Room) -> None:
        """Someone joined or left, or a quality changed: announce at the next chance."""
        room.presence_dirty = True
        if self.gateway.replicas is not None:
            self.unposted.add(room.session_id)

    def heard(self, session_id: str) -> None:
        """Another replica's clients of the session changed: announce again here."""
        room = self.gateway.rooms.get(session_id)
        if room is not None and room.members:
            room.presence_dirty = True

    async def tick(self, room: Room, now: float) -> None:
        """Announce the room if it changed and its last announcement is far enough back."""
        if room.presence_dirty and room.presence_next <= now and not room.presence_busy:
            room.presence_dirty = False
            # Joins and leaves are coalesced: a crowded room hears at most about once a
            # second (a list of 100 names to 100 people per join would be quadratic).
            spacing = min(1.0, len(room.members) / 100)
            room.presence_next = now + max(self.gateway.settings.tick, spacing)
            if self.gateway.replicas is None:
                await self.announce(room)
            else:
                room.presence_busy = True
                self.gateway.spawn(self._announce_shared(room))

    async def announce(self, room: Room, others: list[Entry] | None = None) -> None:
        """``presence``: who is here (the first ``presence_limit``, over every replica) and how
        well connected; to this replica's clients of the room."""
        gateway = self.gateway
        if not room.members:
            return
        now = gateway.clock.monotonic()
        limit = gateway.settings.presence_limit
        people = self.people(room, now)
        occupancy = len(room.members)
        if others:
            occupancy += sum(entry.count for entry in others)
            # Each replica lists its earliest; the earliest of all are among them.
            people = sorted(people + people_of(others), key=lambda p: str(p.get("since")))[:limit]
        await gateway.emit_local(
            "presence",
            {
                "participants": people,
                "occupancy": occupancy,
                "truncated": occupancy > len(people),
            },
            room=room.name,
        )

    def people(self, room: Room, now: float) -> list[dict[str, Any]]:
        """The room's first ``presence_limit`` connections here, as participants."""
        limit = self.gateway.settings.presence_limit
        return [_person(conn, now) for conn in itertools.islice(room.members.values(), limit)]

    # across replicas ----------------------------------------------------------------------------

    async def elsewhere(self, session_id: str) -> int:
        """How many clients of the session the other replicas have (0 if Redis cannot say)."""
        replicas = self.gateway.replicas
        if replicas is None:
            return 0
        try:
            others, pruned = await replicas.others(session_id, self._wall())
        except Exception as exc:
            self._complain("reading presence", exc)
            return 0
        if pruned:
            self._tell(session_id)
        return sum(entry.count for entry in others)

    async def _announce_shared(self, room: Room) -> None:
        replicas = self.gateway.replicas
        assert replicas is not None
        others: list[Entry] = []
        try:
            others, pruned = await replicas.others(room.session_id, self._wall())
            if pruned:
                self._tell(room.session_id)
        except Exception as exc:
            self._complain("reading presence", exc)  # this replica's own clients, at least
        try:
            await self.announce(room, others)
        finally:
            room.presence_busy = False

    def tick_replicas(self, now: float) -> None:
        """Write the entries that changed; refresh all of them every ``presence_ttl / 3``."""
        if self.gateway.replicas is None:
            return
        if now >= self._retry_at:
            for session_id in list(self.unposted - self.posting):
                self.unposted.discard(session_id)
                self.posting.add(session_id)
                self.gateway.spawn(self._post(session_id))
        if now >= self._refresh_at and not self._refreshing:
            self._refresh_at = now + self.gateway.settings.presence_ttl / 3
            self._refreshing = True
            self.gateway.spawn(self._refresh())

    def entry(self, room: Room) -> Entry:
        """This replica's entry for the room: its count and first participants, until when."""
        gateway = self.gateway
        assert gateway.replicas is not None
        return Entry(
            gateway.replicas.replica,
            len(room.members),
            self.people(room, gateway.clock.monotonic()),
            self._wall() + gateway.settings.presence_ttl,
        )

    async def _post(self, session_id: str) -> None:
        """Write (or remove) this replica's entry for the session, then tell the others."""
        gateway = self.gateway
        replicas = gateway.replicas
        assert replicas is not None
        try:
            room = gateway.rooms.get(session_id)
            if room is not None and room.members:
                await replicas.put(session_id, self.entry(room), self._wall())
                self.posted.add(session_id)
            else:
                await replicas.drop(session_id)
                self.posted.discard(session_id)
            # The others announce again; this replica did (its own clients are live).
            replicas.send("presence", {"session_id": session_id})
        except Exception as exc:
            self._complain("writing presence", exc)
            self.unposted.add(session_id)
            self._retry_at = gateway.clock.monotonic() + RETRY_AFTER
        finally:
            self.posting.discard(session_id)

    async def _refresh(self) -> None:
        """Rewrite every entry of this replica (they hold ``presence_ttl``); where another
        replica's had expired (it died) or this one's was gone, everyone announces again."""
        gateway = self.gateway
        replicas = gateway.replicas
        assert replicas is not None
        try:
            entries = {}
            for session_id in list(self.posted):
                room = gateway.rooms.get(session_id)
                if room is not None and room.members:
                    entries[session_id] = self.entry(room)
                else:
                    self.unposted.add(session_id)  # emptied meanwhile: removed at the next tick
            if not entries:
                return
            try:
                changed = await replicas.refresh(entries, self._wall())
            except Exception as exc:
                self._complain("refreshing presence", exc)
                return
            for session_id in changed:
                self._tell(session_id)
        finally:
            self._refreshing = False

    async def withdraw(self) -> None:
        """This replica is stopping: remove its entries and tell the others."""
        replicas = self.gateway.replicas
        if replicas is None:
            return
        for session_id in self.posted | self.unposted:
            try:
                await replicas.drop(session_id)
            except Exception as exc:
                self._complain("removing presence", exc)
                return
            replicas.send("presence", {"session_id": session_id})
        self.posted.clear()
        self.unposted.clear()

    def _tell(self, session_id: str) -> None:
        """Everyone announces the session's presence again: the others, and this replica."""
        replicas = self.gateway.replicas
        assert replicas is not None
        replicas.send("presence", {"session_id": session_id})
        self.heard(session_id)

    def _wall(self) -> float:
        """Entries expire by the wall clock (replicas share no monotonic one)."""
        return self.gateway.clock.now().timestamp()

    def _complain(self, doing: str, exc: Exception) -> None:
        now = self.gateway.clock.monotonic()
        if now - self._complained_at >= COMPLAIN_EVERY:
            self._complained_at = now
            log.warning("%s in Redis: %s: %s", doing, type(exc).__name__, exc)


def _person(conn: Connection, now: float) -> dict[str, Any]:
    beat = conn.heartbeat
    return {
        "id": conn.sid,
        "name": conn.name,
        "user_id": conn.user_id,
        "since": conn.joined_at,
        "quality": beat.quality(now).value,
        "rtt_ms": None if beat.rtt is None else round(beat.rtt * 1000),
    }
