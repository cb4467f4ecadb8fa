"""Presence: ``presence {participants, occupancy, truncated}`` to a room when people join or
leave or their connection quality changes, coalesced (a crowded room hears about once a
second at most)."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dormant.gateway.rooms import Room
    from dormant.gateway.server import Gateway


class Presence:
    """Marks rooms whose presence changed; the ticker announces them."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def soon(self, room: Room) -> None:
        """Someone joined or left, or a quality changed: announce at the next chance."""
        room.presence_dirty = True

    async def tick(self, room: Room, now: float) -> None:
        """Announce the room if it changed and its last announcement is far enough back."""
        if room.presence_dirty and room.presence_next <= now:
            room.presence_dirty = False
            # Joins and leaves are coalesced: a crowded room hears at most about once a
            # second (a list of 100 names to 100 people per join would be quadratic).
            spacing = min(1.0, len(room.members) / 100)
            room.presence_next = now + max(self.gateway.settings.tick, spacing)
            await self.announce(room)

    async def announce(self, room: Room) -> None:
        """``presence``: who is here (the first ``presence_limit``) and how well connected."""
        gateway = self.gateway
        if not room.members:
            return
        now = gateway.clock.monotonic()
        people = []
        for conn in itertools.islice(room.members.values(), gateway.settings.presence_limit):
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
        await gateway.sio.emit(
            "presence",
            {
                "participants": people,
                "occupancy": len(room.members),
                "truncated": len(room.members) > len(people),
            },
            room=room.name,
        )
