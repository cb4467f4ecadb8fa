"""Bringing the engine's count of a session's connections in step with its room here: the
engine learns live connections through ``connect``/``disconnect`` with this instance's count,
coalesced per session (a storm of joins is a few writes); the last one leaving starts the grace
period. Count writes wait for a share of the store's slots, never all of them: admission's
lookups come first (a count can lag a moment; a connect waits for its lookup)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from dormant.errors import NotFound, TemporaryError

if TYPE_CHECKING:
    from dormant.gateway.rooms import Room
    from dormant.gateway.server import Gateway

log = logging.getLogger("dormant.gateway")


#: Count writes in flight at once, at most: half the gateway's store slots
#: (``STORE_CONCURRENCY`` in :mod:`dormant.gateway.server`), so that connects, which wait for
#: their lookups, always find one.
SYNC_CONCURRENCY = 4


class CountSync:
    """One worker a room tells the engine the room's count until the engine agrees."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.slots = asyncio.Semaphore(SYNC_CONCURRENCY)

    def sync(self, room: Room) -> None:
        """Bring the engine's count of the room's session to the room's; one worker a room."""
        if not room.syncing:
            room.syncing = True
            self.gateway.spawn(self._sync_now(room))

    def tick(self, room: Room) -> None:
        """Try again where the engine did not take a count."""
        if not room.syncing and len(room.members) != room.synced:
            self.sync(room)  # a count the engine did not take (store trouble): again

    async def _sync_now(self, room: Room) -> None:
        """``connect``/``disconnect`` with the live count until the engine agrees. A storm of
        joins and leaves becomes a few calls (each tells the count as it is when its turn
        comes); the last leave is always told (grace starts)."""
        gateway = self.gateway
        try:
            while self._owed(room):
                left = False
                try:
                    # Count writes take at most SYNC_CONCURRENCY of the store's slots: in a
                    # storm, admission's lookups must not queue behind fifty rooms' counts.
                    async with self.slots, gateway.store_slots:
                        count = len(room.members)
                        left, room.left = room.left, False
                        if count == room.synced and not (left and count == 0):
                            return
                        if count > room.synced:
                            record = await gateway.engine.connect(room.session_id, count=count)
                        else:
                            record = await gateway.engine.disconnect(room.session_id, count=count)
                except NotFound:
                    room.synced = count
                    await gateway.members.close_room(room)
                    return
                except TemporaryError as exc:
                    room.left = room.left or left  # the last leave is still to be told
                    log.warning("counting connections of %s: %s; retrying", room.session_id, exc)
                    return  # the ticker tries again
                except Exception:
                    room.left = room.left or left
                    log.exception("counting connections of session %s failed", room.session_id)
                    return
                room.synced = count
                await gateway.pusher.push(room, record)
        finally:
            room.syncing = False
            gateway.members.drop_if_empty(room)

    @staticmethod
    def _owed(room: Room) -> bool:
        """Whether the engine is owed a count: it differs, or the last one left."""
        return len(room.members) != room.synced or (room.left and not room.members)
