"""Bringing the engine's count of a session's connections in step with its room here: the
engine learns live connections through ``connect``/``disconnect`` with this instance's count,
coalesced per session (a storm of joins is a few writes); the last one leaving starts the grace
period."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from dormant.errors import NotFound, TemporaryError

if TYPE_CHECKING:
    from dormant.gateway.rooms import Room
    from dormant.gateway.server import Gateway

log = logging.getLogger("dormant.gateway")


class CountSync:
    """One worker a room tells the engine the room's count until the engine agrees."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

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
        joins and leaves becomes a few calls; the last leave is always told (grace starts)."""
        gateway = self.gateway
        try:
            while True:
                count = len(room.members)
                left, room.left = room.left, False
                if count == room.synced and not (left and count == 0):
                    return
                try:
                    async with gateway.store_slots:
                        if count > room.synced:
                            record = await gateway.engine.connect(room.session_id, count=count)
                        else:
                            record = await gateway.engine.disconnect(room.session_id, count=count)
                except NotFound:
                    room.synced = count
                    await gateway.members.close_room(room)
                    return
                except TemporaryError as exc:
                    log.warning("counting connections of %s: %s; retrying", room.session_id, exc)
                    return  # the ticker tries again
                except Exception:
                    log.exception("counting connections of session %s failed", room.session_id)
                    return
                room.synced = count
                await gateway.pusher.push(room, record)
        finally:
            room.syncing = False
            gateway.members.drop_if_empty(room)
