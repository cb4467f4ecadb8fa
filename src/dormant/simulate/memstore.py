"""An in-memory :class:`~dormant.store.base.Store`: the simulator's fast path.

A second implementation of the same contract as :class:`~dormant.store.sql.SqlStore` (optimistic
versions, unique ports, commutative activity flushes, timelines, the operation log), kept in
dictionaries so that replaying a day of a thousand users costs no disk writes. Nothing survives
the process; use ``SqlStore`` wherever that matters.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from dormant.errors import Conflict
from dormant.policy import ActivityTimes, State
from dormant.store.base import Store
from dormant.store.records import (
    ApiKeyRecord,
    EventRecord,
    InstanceRecord,
    NewEvent,
    OperationRecord,
    SessionRecord,
)

_SESSION_FIELDS = tuple(f.name for f in dataclasses.fields(SessionRecord))


def _replace(record: SessionRecord, changes: dict[str, Any]) -> SessionRecord:
    """``dataclasses.replace`` without its per-call introspection (activity flushes are hot)."""
    new = object.__new__(SessionRecord)
    for name in _SESSION_FIELDS:
        object.__setattr__(new, name, changes[name] if name in changes else getattr(record, name))
    return new


class MemoryStore(Store):
    def __init__(self, *, keep_events: bool = True) -> None:
        self.sessions: dict[str, SessionRecord] = {}
        self.ports: dict[int, str] = {}
        self.operations: dict[int, OperationRecord] = {}
        self._pending_ops: set[int] = set()
        self.events: dict[str, list[EventRecord]] = {}
        self.keep_events = keep_events
        self.keys: dict[str, ApiKeyRecord] = {}
        self.instances: dict[str, InstanceRecord] = {}
        self.adaptive: dict[str, dict[str, Any]] = {}
        self._op_id = 0
        self._event_id = 0
        self._deployment: str | None = None

    async def close(self) -> None:
        return None

    async def ping(self) -> None:
        return None

    # sessions -------------------------------------------------------------------------------

    def _claim_port(self, record: SessionRecord) -> None:
        old = self.sessions.get(record.id)
        if old is not None and old.port is not None and old.port != record.port:
            self.ports.pop(old.port, None)
        if record.port is not None:
            self.ports[record.port] = record.id

    def _port_taken(self, record: SessionRecord) -> bool:
        if record.port is None:
            return False
        holder = self.ports.get(record.port)
        return holder is not None and holder != record.id

    def _add_events(self, session_id: str, events: Sequence[NewEvent], now: datetime) -> None:
        if not events or not self.keep_events:
            return
        timeline = self.events.setdefault(session_id, [])
        for e in events:
            self._event_id += 1
            timeline.append(
                EventRecord(
                    self._event_id,
                    session_id,
                    now,
                    e.type,
                    e.from_state,
                    e.to_state,
                    e.action,
                    e.code,
                    e.reason,
                )
            )

    async def insert_session(
        self, record: SessionRecord, event: NewEvent, intent: tuple[str, str] | None
    ) -> int | None:
        if record.id in self.sessions or self._port_taken(record):
            raise Conflict(f"session {record.id} or port {record.port} already taken")
        self.sessions[record.id] = record
        self._claim_port(record)
        self._add_events(record.id, [event], record.created_at)
        if intent is None:
            return None
        kind, instance_id = intent
        return self._new_op(
            record.id, kind, record.container_name, record.labels, instance_id, record.created_at
        )

    async def get_session(self, session_id: str) -> SessionRecord | None:
        return self.sessions.get(session_id)

    async def update_session(
        self,
        record: SessionRecord,
        expected_version: int,
        events: Sequence[NewEvent] = (),
        now: datetime | None = None,
    ) -> SessionRecord:
        current = self.sessions.get(record.id)
        if current is None or current.version != expected_version:
            raise Conflict(f"session {record.id} changed concurrently; re-read and retry")
        if self._port_taken(record):
            raise Conflict(f"session {record.id}: port {record.port} is taken")
        new = record.replace(version=expected_version + 1)
        self._claim_port(new)
        self.sessions[record.id] = new
        self._add_events(record.id, events, now or record.state_since)
        return new

    async def list_sessions(
        self,
        *,
        tenant: str | None = None,
        user_id: str | None = None,
        state: State | None = None,
        after_id: str | None = None,
        limit: int = 100,
        include_deleted: bool = False,
    ) -> list[SessionRecord]:
        out = []
        for sid in sorted(self.sessions):
            r = self.sessions[sid]
            if tenant is not None and r.tenant != tenant:
                continue
            if user_id is not None and r.user_id != user_id:
                continue
            if state is not None:
                if r.state is not state:
                    continue
            elif not include_deleted and r.state is State.DELETED:
                continue
            if after_id is not None and sid <= after_id:
                continue
            out.append(r)
            if len(out) >= limit:
                break
        return out

    async def live_schedule(self) -> list[tuple[str, str, datetime | None]]:
        return [
            (r.id, r.state.value, r.next_action_at)
            for r in self.sessions.values()
            if r.state is not State.DELETED
        ]

    async def flush_activity(self, batch: dict[str, ActivityTimes]) -> None:
        for sid, t in batch.items():
            r = self.sessions.get(sid)
            if r is None or r.state is State.DELETED:
                continue
            changes: dict[str, Any] = {"version": r.version + 1}
            if t.last_activity_at is not None and (
                r.last_activity_at is None or r.last_activity_at < t.last_activity_at
            ):
                changes["last_activity_at"] = t.last_activity_at
                changes["last_activity_kind"] = t.last_activity_kind
                changes["last_activity_source"] = t.last_activity_source
            if t.last_seen_at is not None and (
                r.last_seen_at is None or r.last_seen_at < t.last_seen_at
            ):
                changes["last_seen_at"] = t.last_seen_at
            self.sessions[sid] = _replace(r, changes)

    async def used_ports(self) -> set[int]:
        return set(self.ports)

    async def count_by_state(self, tenant: str | None) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self.sessions.values():
            if tenant is None or r.tenant == tenant:
                counts[r.state.value] = counts.get(r.state.value, 0) + 1
        return counts

    async def sessions_with_connections(self) -> list[SessionRecord]:
        return [r for r in self.sessions.values() if r.connections and r.state is not State.DELETED]

    async def purge_deleted(self, before: datetime, limit: int) -> int:
        doomed = sorted(
            (r for r in self.sessions.values() if r.state is State.DELETED),
            key=lambda r: r.deleted_at or before,
        )
        ids = [r.id for r in doomed if r.deleted_at is not None and r.deleted_at < before][:limit]
        for sid in ids:
            record = self.sessions.pop(sid)
            if record.port is not None and self.ports.get(record.port) == sid:
                del self.ports[record.port]
            self.events.pop(sid, None)
        for op_id in [i for i, op in self.operations.items() if op.session_id in set(ids)]:
            del self.operations[op_id]
            self._pending_ops.discard(op_id)
        return len(ids)

    async def deployment_id(self, candidate: str, now: datetime) -> str:
        if self._deployment is None:
            self._deployment = candidate
        return self._deployment

    # operations -----------------------------------------------------------------------------

    def _new_op(
        self,
        session_id: str,
        kind: str,
        container_name: str,
        labels: dict[str, str],
        instance_id: str,
        now: datetime,
    ) -> int:
        self._op_id += 1
        self.operations[self._op_id] = OperationRecord(
            self._op_id,
            session_id,
            kind,
            container_name,
            dict(labels),
            "pending",
            0,
            None,
            instance_id,
            now,
            now,
        )
        self._pending_ops.add(self._op_id)
        return self._op_id

    async def insert_operation(
        self,
        session_id: str,
        kind: str,
        container_name: str,
        labels: dict[str, str],
        instance_id: str,
        now: datetime,
    ) -> int:
        return self._new_op(session_id, kind, container_name, labels, instance_id, now)

    async def finish_operation(
        self, op_id: int, status: str, attempts: int, error: str | None, now: datetime
    ) -> None:
        op = self.operations.get(op_id)
        if op is None:
            return
        if status == "pending":
            self._pending_ops.add(op_id)
            self.operations[op_id] = dataclasses.replace(
                op, status=status, attempts=attempts, error=error, updated_at=now
            )
            return
        # Finished operations are only ever read back as "not pending": drop them.
        self._pending_ops.discard(op_id)
        del self.operations[op_id]

    async def pending_operations(self) -> list[OperationRecord]:
        return [self.operations[i] for i in sorted(self._pending_ops)]

    # timeline -------------------------------------------------------------------------------

    async def add_events(self, session_id: str, events: Sequence[NewEvent], now: datetime) -> None:
        self._add_events(session_id, events, now)

    async def list_events(self, session_id: str, limit: int = 500) -> list[EventRecord]:
        return list(self.events.get(session_id, ())[:limit])

    async def event_counts(self, tenant: str | None) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for sid, timeline in self.events.items():
            if tenant is not None:
                r = self.sessions.get(sid)
                if r is None or r.tenant != tenant:
                    continue
            for e in timeline:
                if e.type == "transition" and e.action is not None:
                    by_code = out.setdefault(e.action, {})
                    by_code[str(e.code)] = by_code.get(str(e.code), 0) + 1
        return out

    # api keys -------------------------------------------------------------------------------

    async def insert_key(self, record: ApiKeyRecord) -> None:
        if record.id in self.keys:
            raise Conflict(f"key {record.id} exists")
        self.keys[record.id] = record

    async def get_key(self, key_id: str) -> ApiKeyRecord | None:
        return self.keys.get(key_id)

    async def list_keys(self) -> list[ApiKeyRecord]:
        return sorted(self.keys.values(), key=lambda k: k.created_at)

    async def revoke_key(self, key_id: str, now: datetime) -> bool:
        key = self.keys.get(key_id)
        if key is None or key.revoked_at is not None:
            return False
        self.keys[key_id] = dataclasses.replace(key, revoked_at=now)
        return True

    # instances ------------------------------------------------------------------------------

    async def heartbeat_instance(self, record: InstanceRecord) -> None:
        old = self.instances.get(record.id)
        if old is None:
            self.instances[record.id] = record
        else:
            self.instances[record.id] = dataclasses.replace(old, heartbeat_at=record.heartbeat_at)

    async def live_instances(self, since: datetime) -> list[InstanceRecord]:
        return [i for i in self.instances.values() if i.heartbeat_at >= since]

    async def remove_instance(self, instance_id: str) -> None:
        self.instances.pop(instance_id, None)

    # adaptive models ------------------------------------------------------------------------

    async def load_adaptive(self, keys: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
        if keys is None:
            return {k: dict(v) for k, v in self.adaptive.items()}
        return {k: dict(self.adaptive[k]) for k in keys if k in self.adaptive}

    async def save_adaptive(self, models: Mapping[str, dict[str, Any]], now: datetime) -> None:
        for key, model in models.items():
            self.adaptive[key] = dict(model)
