"""The ``session`` event and sleep warnings: what clients see of their session, pushed to its
room when it changes (engine events, refreshes from the store, levels that change with time
alone) and to each client as it joins.

Across replicas, this process's engine events are also passed on to the others (the session
record of a transition or warning, the kind of an activity), and theirs arrive here
(:meth:`Pusher.on_replica_event`): every replica keeps its room of the session current and
tells its own clients, so each hears of an engine event once."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from dormant.engine import EngineEvent
from dormant.engine.notify import ActivitySeen, Queued, Transitioned, Warned, WarningCancelled
from dormant.errors import NotFound, TemporaryError
from dormant.gateway.protocol import iso, session_view
from dormant.gateway.replicas import record_from_wire, record_to_wire
from dormant.policy import Action, Decision, Level, State
from dormant.store.records import SessionRecord

if TYPE_CHECKING:
    from dormant.gateway.rooms import Connection, Room
    from dormant.gateway.server import Gateway

log = logging.getLogger("dormant.gateway")

_EPOCH = datetime.min.replace(tzinfo=UTC)
#: Engine events clients hear of (here, and through the other replicas).
#: Activity of one kind is told the other replicas at most this often per session (seconds).
#: A repeat only says "still active", which the others' own level checks read from the store
#: (the activity is flushed there within a second); what they must hear at once is another
#: kind, or activity after a pause long enough for their level to drop (``active_within``,
#: minutes by default, is longer than this).
ACTIVITY_EVERY = 5.0


def view_age(record: SessionRecord) -> tuple[int, datetime, datetime]:
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
        #: Across replicas: the last activity told the others, per session (kind, monotonic).
        self._told_activity: dict[str, tuple[str, float]] = {}

    def on_engine_event(self, event: EngineEvent) -> None:
        """This process's engine changed a session: its clients here hear of it, and so do
        the other replicas (which tell theirs)."""
        gateway = self.gateway
        if isinstance(event, Queued):
            self._queued(event.session_id, event.position, event.limit, share=True)
            return
        if not isinstance(event, Transitioned | Warned | WarningCancelled | ActivitySeen):
            return
        warning = self.warning(event.session, event.decision) if isinstance(event, Warned) else None
        if gateway.replicas is not None:
            self._share(event, warning)
        room = gateway.rooms.get(event.session_id)
        if room is None:
            return
        match event:
            case Transitioned(session=record, to_state=to_state):
                self._changed(room, record, to_state.value)
            case Warned(session=record):
                assert warning is not None
                self._warned(room, record, warning)
            case WarningCancelled() if room.members:
                self.refresh(room)
            case ActivitySeen(kind=kind) if room.members and (
                room.level != Level.ACTIVE.value or room.last_kind != kind.value
            ):
                # Level or kind changed; a later time alone is not worth a message to everyone.
                self.refresh(room)
            case _:
                pass

    def _queued(self, sid: str, position: int | None, limit: str | None, *, share: bool) -> None:
        """``queued {position, limit}`` to the session's clients (``position`` null: it left
        the queue); the other replicas tell theirs."""
        gateway = self.gateway
        if share and gateway.replicas is not None:
            body = {"session_id": sid, "type": "queued", "position": position, "limit": limit}
            gateway.replicas.send("session", body)
        room = gateway.rooms.get(sid)
        if room is None or not room.members:
            return
        data = {"position": position, "limit": limit}
        gateway.spawn(gateway.emit_local("queued", data, room=room.name))

    def _changed(self, room: Room, record: SessionRecord, to_state: str | None) -> None:
        gateway = self.gateway
        # Without members: keep the cached view fresh for whoever joins next.
        gateway.spawn(self.push(room, record))
        if room.members and to_state in (State.DELETING.value, State.DELETED.value):
            gateway.spawn(gateway.members.close_room(room))

    def _warned(self, room: Room, record: SessionRecord, warning: dict[str, Any]) -> None:
        if room.members:
            self.gateway.spawn(self._warn(room, record, warning))
        else:
            self.gateway.spawn(self.push(room, record))

    def warning(self, record: SessionRecord, decision: Decision | None) -> dict[str, Any]:
        """``sleep-warning {at, reason}``: when the session sleeps, and why."""
        engine = self.gateway.engine
        policy = engine.policy_of(record)
        at: datetime | None
        if decision is not None and decision.sleep_at is not None:
            at = decision.sleep_at
        elif decision is not None and decision.at is not None:
            at = decision.at + timedelta(seconds=policy.warn_before)
        else:
            at = engine.describe(record)[1].at
        if decision is not None and decision.sleep_reason is not None:
            reason = decision.sleep_reason
        else:
            reason = f"no meaningful activity for {policy.sleep_after:g}s"
        return {"at": iso(at), "reason": reason}

    async def _warn(self, room: Room, record: SessionRecord, warning: dict[str, Any]) -> None:
        await self.gateway.emit_local("sleep-warning", warning, room=room.name)
        await self.push(room, record)

    # across replicas ----------------------------------------------------------------------------

    def _share(
        self,
        event: Transitioned | Warned | WarningCancelled | ActivitySeen,
        warning: dict[str, Any] | None,
    ) -> None:
        """Tell the other replicas: one message per engine event (activity: see
        :data:`ACTIVITY_EVERY`). On the wire a message names its ``type`` (``transition``,
        ``warning``, ``warning-cancelled``, ``activity``)."""
        replicas = self.gateway.replicas
        assert replicas is not None
        body: dict[str, Any] = {"session_id": event.session_id}
        match event:
            case ActivitySeen(kind=kind, source=source):
                now = self.gateway.clock.monotonic()
                told = self._told_activity.get(event.session_id)
                if told is not None and told[0] == kind.value and now - told[1] < ACTIVITY_EVERY:
                    return
                if len(self._told_activity) >= 10_000:
                    self._told_activity.clear()  # forgetting costs at most one message each
                self._told_activity[event.session_id] = (kind.value, now)
                at = iso(self.gateway.clock.now())
                body.update(type="activity", kind=kind.value, source=source, at=at)
            case Transitioned(session=record, to_state=to_state):
                body.update(type="transition", record=record_to_wire(record), to_state=to_state)
            case Warned(session=record):
                body.update(type="warning", record=record_to_wire(record), to_state=None)
                body["warning"] = warning
            case WarningCancelled():
                body.update(type="warning-cancelled")
        replicas.send("session", body)

    def on_replica_event(self, body: dict[str, Any]) -> None:
        """Another replica's engine changed a session: its clients here hear of it."""
        gateway = self.gateway
        room = gateway.rooms.get(str(body.get("session_id")))
        if room is None:
            return
        kind = body.get("type")
        if kind == "queued":
            position, limit = body.get("position"), body.get("limit")
            self._queued(
                room.session_id,
                position if isinstance(position, int) else None,
                limit if isinstance(limit, str) else None,
                share=False,
            )
            return
        if kind == "activity":
            self._remote_activity(room, body)
            return
        if kind == "warning-cancelled":
            if room.members:
                self.refresh(room)
            return
        try:
            record = record_from_wire(body.get("record"))
        except (ValueError, TypeError, KeyError):
            log.warning("a session event from another replica did not parse; reading the store")
            self.refresh(room)
            return
        if kind == "transition":
            to_state = body.get("to_state")
            self._changed(room, record, to_state if isinstance(to_state, str) else None)
        elif kind == "warning":
            warning = body.get("warning")
            if not isinstance(warning, dict):
                warning = self.warning(record, None)
            self._warned(room, record, warning)

    def _remote_activity(self, room: Room, body: dict[str, Any]) -> None:
        """Activity on another replica: the view here takes it at once (the store has it only
        once that replica flushed it)."""
        kind = body.get("kind")
        if not room.members or (room.level == Level.ACTIVE.value and room.last_kind == kind):
            return
        record = room.record
        try:
            at = datetime.fromisoformat(str(body.get("at")))
        except ValueError:
            at = None
        if record is None or at is None or not isinstance(kind, str):
            self.refresh(room)
            return
        source = body.get("source")
        merged = record.replace(
            last_activity_at=max(at, record.last_activity_at or at),
            last_activity_kind=kind,
            last_activity_source=source if isinstance(source, str) else None,
            last_seen_at=max(at, record.last_seen_at or at),
        )
        self.gateway.spawn(self.push(room, merged))

    async def greet(self, conn: Connection) -> None:
        gateway = self.gateway
        await asyncio.sleep(0)
        room = gateway.rooms.get(conn.session_id)
        if conn.closed or room is None or room.record is None:
            return
        record = room.record
        view = self.view(record, room)
        await gateway.emit_local("session", view.payload, to=conn.sid)
        if room.last_key is None:
            room.last_key = view.key
            room.last_kind = record.last_activity_kind
            self.arm_level_check(room, record)
        if view.payload["warning"] is not None:
            await gateway.emit_local("sleep-warning", view.payload["warning"], to=conn.sid)

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
            state="queued" if record.queued_at is not None else record.state.value,
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
        age = view_age(record)
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
        await self.gateway.emit_local("session", view.payload, room=room.name)

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
