"""The ``session`` event and sleep warnings: what clients see of their session, pushed to its
room when it changes (engine events, refreshes from the store, levels that change with time
alone) and to each client as it joins."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from dormant.engine import EngineEvent
from dormant.errors import NotFound, TemporaryError
from dormant.gateway.protocol import iso, session_view
from dormant.policy import Action, Level, State
from dormant.store.records import SessionRecord

if TYPE_CHECKING:
    from dormant.gateway.rooms import Connection, Room
    from dormant.gateway.server import Gateway

log = logging.getLogger("dormant.gateway")

_EPOCH = datetime.min.replace(tzinfo=UTC)


def _age(record: SessionRecord) -> tuple[int, datetime, datetime]:
    """How recent a view of a session is: its stored version, then activity not yet stored."""
    return (
        record.version,
        record.last_activity_at or _EPOCH,
        record.last_seen_at or _EPOCH,
    )


class Pusher:
    """Keeps each room's clients up to date with their session."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def on_engine_event(self, event: EngineEvent) -> None:
        gateway = self.gateway
        room = gateway.rooms.get(event.session_id)
        if room is None:
            return
        if not room.members:
            if event.session is not None:  # keep the cached view fresh for whoever joins next
                gateway.spawn(self.push(room, event.session))
            return
        if event.type == "transition" and event.session is not None:
            gateway.spawn(self.push(room, event.session))
            if event.to_state in (State.DELETING.value, State.DELETED.value):
                gateway.spawn(gateway.members.close_room(room))
        elif event.type == "warning" and event.session is not None:
            gateway.spawn(self._warn(room, event))
        elif event.type == "warning-cancelled" or (
            event.type == "activity"
            and (room.level != Level.ACTIVE.value or room.last_kind != event.reason)
        ):
            # Level or kind changed; a later time alone is not worth a message to everyone.
            self.refresh(room)

    async def _warn(self, room: Room, event: EngineEvent) -> None:
        gateway = self.gateway
        record = event.session
        assert record is not None
        policy = gateway.engine.policy_of(record)
        decision = event.decision
        at: datetime | None
        if decision is not None and decision.at is not None:
            at = decision.at + timedelta(seconds=policy.warn_before)
        else:
            at = gateway.engine.describe(record)[1].at
        reason = (
            decision.reason.split(": ", 1)[-1]
            if decision is not None
            else f"no meaningful activity for {policy.sleep_after:g}s"
        )
        await gateway.sio.emit("sleep-warning", {"at": iso(at), "reason": reason}, room=room.name)
        await self.push(room, record)

    async def greet(self, conn: Connection) -> None:
        gateway = self.gateway
        await asyncio.sleep(0)
        room = gateway.rooms.get(conn.session_id)
        if conn.closed or room is None or room.record is None:
            return
        record = room.record
        view = self.view(record, room)
        await gateway.sio.emit("session", view.payload, to=conn.sid)
        if room.last_key is None:
            room.last_key = view.key
            room.last_kind = record.last_activity_kind
            self.arm_level_check(room, record)
        if view.payload["warning"] is not None:
            await gateway.sio.emit("sleep-warning", view.payload["warning"], to=conn.sid)

    def view(self, record: SessionRecord, room: Room | None) -> Any:
        engine = self.gateway.engine
        lvl, decision = engine.describe(record)
        warning_at = None
        if (
            record.warned_at is not None
            and decision.action is Action.SLEEP
            and decision.at is not None
        ):
            warn_from = decision.at - timedelta(seconds=engine.policy_of(record).warn_before)
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
            quality=self.gateway.connection_quality(record.id) if room is not None else None,
            last_activity_at=record.last_activity_at,
            last_activity_kind=record.last_activity_kind,
            error_text=record.error,
        )

    async def push(self, room: Room, record: SessionRecord, force: bool = False) -> None:
        """Send ``session`` to the room if what clients see changed."""
        age = _age(record)
        if room.newest is not None and age < room.newest:
            return  # an engine event overtaken by a fresher read: clients know better already
        room.newest = age
        room.record = record
        if not room.members:
            return
        view = self.view(record, room)
        self.arm_level_check(room, record)
        if not force and view.key == room.last_key:
            return
        room.last_key = view.key
        room.level = view.payload["level"]
        room.last_kind = record.last_activity_kind
        await self.gateway.sio.emit("session", view.payload, room=room.name)

    def arm_level_check(self, room: Room, record: SessionRecord) -> None:
        """Levels change with time alone (active -> idle -> background): look again then."""
        gateway = self.gateway
        lvl, _ = gateway.engine.describe(record)
        room.level = lvl.value
        policy = gateway.engine.policy_of(record)
        anchor = record.last_activity_at or record.created_at
        if lvl is Level.ACTIVE:
            boundary = anchor + timedelta(seconds=policy.active_within)
        elif lvl is Level.IDLE:
            boundary = anchor + timedelta(seconds=policy.idle_within)
        else:
            room.level_check_at = None
            return
        wait = max(0.0, (boundary - gateway.clock.now()).total_seconds())
        room.level_check_at = gateway.clock.monotonic() + wait + gateway.settings.tick

    def tick(self, room: Room, now: float) -> None:
        """A level due to change with time alone: look at the session again."""
        if room.level_check_at is not None and room.level_check_at <= now:
            room.level_check_at = None
            self.refresh(room)

    def refresh(self, room: Room) -> None:
        if room.refreshing:
            room.refresh_again = True
            return
        room.refreshing = True
        self.gateway.spawn(self._refresh_now(room))

    async def _refresh_now(self, room: Room) -> None:
        gateway = self.gateway
        try:
            while True:
                room.refresh_again = False
                try:
                    async with gateway.store_slots:
                        record = await gateway.engine.get(room.session_id)
                except NotFound:
                    await gateway.members.close_room(room)
                    return
                except TemporaryError as exc:
                    log.warning("refreshing session %s: %s", room.session_id, exc)
                    return
                except Exception:
                    log.exception("refreshing session %s failed", room.session_id)
                    return
                await self.push(room, record)
                if not room.refresh_again:
                    return
        finally:
            room.refreshing = False
