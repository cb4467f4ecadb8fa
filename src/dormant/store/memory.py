"""The in-memory :class:`~dormant.store.base.Store`: the third implementation of the contract,
next to :class:`~dormant.store.sql.SqlStore` on SQLite and PostgreSQL.

It keeps everything in dictionaries, so that the simulator can replay a day of a thousand users
without a disk write and tests can run the engine without a database. Nothing survives the
process; use ``SqlStore`` wherever that matters. It behaves as the SQL stores do, and the one
store contract suite (``tests/integration/test_store_contract.py``) runs on all three:

- ``update_session`` is optimistic (:class:`~dormant.errors.Conflict` on a stale version) and a
  session's port is unique among all its sessions, deleted ones included (like the unique index
  ``ux_sessions_port``) until they are purged; a session's name is unique per tenant, user and
  template among sessions not deleted (like the partial unique index ``ux_sessions_name``);
- an idempotency key is written with its session or not at all (one transaction);
- ``flush_activity`` takes the max, skips deleted and unknown sessions, and counts as a change
  (``version + 1``), like the SQL ``UPDATE``;
- what goes in is copied, what comes out is a copy: a caller that changes a record's ``labels``
  changes nothing stored; JSON columns (``policy``, ``labels``, ``env``, ``runtime_state``,
  ``connections_by_instance``, operation labels, adaptive models) go through JSON as they do in a
  database (tuples come back as lists, and a value JSON cannot hold is refused);
- datetimes must be aware (a naive one is :class:`~dormant.errors.InvalidInput`) and come back in
  UTC;
- every method runs without awaiting, so each is atomic on the event loop (the SQL stores'
  transactions), and concurrent first starts agree on one ``deployment_id``.

``keep_events=False`` drops timelines (the simulator's fast path: it reads none); every other
behaviour stays. Finished operations are dropped at once: the contract only ever reads pending
ones back.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from dormant.errors import Conflict, InvalidInput
from dormant.policy import ActivityTimes, Level, PolicySettings, State, level
from dormant.store.base import KeyTaken, NameTaken, Store
from dormant.store.records import (
    AdmissionCounts,
    ApiKeyRecord,
    Claim,
    EventRecord,
    IdempotencyKey,
    IdempotencyRecord,
    InstanceRecord,
    NewEvent,
    OperationRecord,
    SessionRecord,
    level_thresholds,
)

_SESSION_FIELDS = tuple(f.name for f in dataclasses.fields(SessionRecord))
#: Columns kept as JSON by the SQL stores.
_JSON_FIELDS = ("policy", "labels", "env", "runtime_state", "connections_by_instance")
#: States that hold a running slot (admission), a queued create apart.
_SLOT_STATES = frozenset({State.CREATING, State.STARTING, State.RUNNING, State.STOPPING})

_TIME_FIELDS = tuple(
    f.name for f in dataclasses.fields(SessionRecord) if str(f.type).startswith("datetime")
)


def _utc(value: datetime, what: str) -> datetime:
    if value.tzinfo is UTC:
        return value
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidInput(f"naive datetime given to the store ({what}); use aware UTC")
    return value.astimezone(UTC)


def _utc_or_none(value: datetime | None, what: str) -> datetime | None:
    return None if value is None else _utc(value, what)


class _Unusual(Exception):
    """A value that the fast path of :func:`_to_json` leaves to ``json`` itself."""


def _plain(value: Any) -> Any:
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is float and math.isfinite(value):
        return value
    if kind is dict:
        out = {}
        for key, item in value.items():
            if type(key) is not str:
                raise _Unusual
            out[key] = _plain(item)
        return out
    if kind is list or kind is tuple:
        return [_plain(item) for item in value]
    raise _Unusual


def _to_json(value: Any, what: str) -> Any:
    """``value`` as a database's JSON column gives it back (a fresh copy): tuples as lists,
    keys as strings, enums as their values; what JSON cannot hold is refused."""
    try:
        return _plain(value)
    except _Unusual:
        pass
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{what} cannot be stored as JSON: {exc}") from exc


def _copy(value: Any) -> Any:
    """A deep copy of a value that already went through :func:`_to_json`."""
    if type(value) is dict:
        out = value.copy()
        for key, item in out.items():
            if type(item) is dict or type(item) is list:
                out[key] = _copy(item)
        return out
    if type(value) is list:
        return [_copy(item) if type(item) is dict or type(item) is list else item for item in value]
    return value


_set = object.__setattr__


def _new(record: SessionRecord, changes: Mapping[str, Any]) -> SessionRecord:
    """``dataclasses.replace`` without its per-call introspection."""
    new = object.__new__(SessionRecord)
    for name in _SESSION_FIELDS:
        _set(new, name, changes[name] if name in changes else getattr(record, name))
    return new


def _stored(record: SessionRecord, **changes: Any) -> SessionRecord:
    """What a database would keep of ``record``: JSON columns copied through JSON, times in
    UTC, naive times refused."""
    values: dict[str, Any] = {
        name: _to_json(getattr(record, name), f"session {record.id}: {name}")
        for name in _JSON_FIELDS
    }
    for name in _TIME_FIELDS:
        values[name] = _utc_or_none(getattr(record, name), f"session {record.id}: {name}")
    values.update(changes)
    return _new(record, values)


_NameKey = tuple[str, str, str, str]


def _name_key(record: SessionRecord) -> _NameKey | None:
    """The key of ``ux_sessions_name`` if the record falls under it (named, not deleted)."""
    if record.name is None or record.state is State.DELETED:
        return None
    return (record.tenant, record.user_id, record.template, record.name)


def _handed_out(record: SessionRecord) -> SessionRecord:
    """A copy of a stored record with its own JSON values (readers never get the stored one)."""
    return _new(record, {name: _copy(getattr(record, name)) for name in _JSON_FIELDS})


class MemoryStore(Store):
    def __init__(self, *, keep_events: bool = True) -> None:
        self.keep_events = keep_events
        self._sessions: dict[str, SessionRecord] = {}
        self._ports: dict[int, str] = {}
        #: (tenant, user, template, name) -> session id, of live named sessions
        self._names: dict[_NameKey, str] = {}
        #: (tenant, key) -> idempotency row
        self._idempotency: dict[tuple[str, str], IdempotencyRecord] = {}
        self._operations: dict[int, OperationRecord] = {}
        self._events: dict[str, list[EventRecord]] = {}
        self._keys: dict[str, ApiKeyRecord] = {}
        self._instances: dict[str, InstanceRecord] = {}
        self._adaptive: dict[str, dict[str, Any]] = {}
        self._op_id = 0
        self._event_id = 0
        #: (tenant, action, code) -> transitions, all-time (kept as events are added).
        self._transitions: dict[tuple[str, str, str], int] = {}
        self._deployment: str | None = None
        #: session id -> (instance, lease until): claims of due work (``claim_due``)
        self._claims: dict[str, tuple[str | None, datetime | None]] = {}
        #: token hash -> (session id, expires at, used)
        self._links: dict[str, tuple[str, datetime, bool]] = {}

    async def close(self) -> None:
        return None

    async def ping(self) -> None:
        """Always reachable (the SQL stores answer a ``SELECT 1``)."""
        return None

    # sessions -------------------------------------------------------------------------------

    def _port_taken(self, record: SessionRecord) -> bool:
        if record.port is None:
            return False
        holder = self._ports.get(record.port)
        return holder is not None and holder != record.id

    def _name_taken(self, record: SessionRecord) -> bool:
        key = _name_key(record)
        if key is None:
            return False
        holder = self._names.get(key)
        return holder is not None and holder != record.id

    def _keep(self, record: SessionRecord) -> None:
        """Store ``record`` (already checked) and move its port and name claims along."""
        old = self._sessions.get(record.id)
        if old is not None and old.port is not None and old.port != record.port:
            del self._ports[old.port]
        if record.port is not None:
            self._ports[record.port] = record.id
        if old is not None and old.name is not None:
            old_key, new_key = _name_key(old), _name_key(record)
            if old_key is not None and old_key != new_key:
                self._names.pop(old_key, None)
        if (new_key := _name_key(record)) is not None:
            self._names[new_key] = record.id
        self._sessions[record.id] = record

    def _add_events(self, session_id: str, events: Sequence[NewEvent], now: datetime) -> None:
        owner = self._sessions.get(session_id)
        for e in events:
            if e.counted and owner is not None:
                key = (owner.tenant, e.action or "", e.code or "")
                self._transitions[key] = self._transitions.get(key, 0) + 1
        if not events or not self.keep_events:
            return
        timeline = self._events.setdefault(session_id, [])
        for e in events:
            self._event_id += 1
            timeline.append(
                EventRecord(
                    self._event_id,
                    session_id,
                    _utc(e.at, "event time") if e.at is not None else now,
                    e.type,
                    e.from_state,
                    e.to_state,
                    e.action,
                    e.code,
                    e.reason,
                    e.source,
                )
            )

    async def insert_session(
        self,
        record: SessionRecord,
        event: NewEvent,
        intent: tuple[str, str] | None,
        idempotency: IdempotencyKey | None = None,
    ) -> int | None:
        stored = _stored(record)  # refuses what a database refuses, before anything is written
        if idempotency is not None:
            cutoff = _utc(idempotency.expired_before, "idempotency expired_before")
            held = self._idempotency.get((stored.tenant, idempotency.key))
            if held is not None and held.created_at >= cutoff:
                raise KeyTaken(f"idempotency key {idempotency.key!r} is held already")
        if self._name_taken(stored):
            key = _name_key(stored)
            assert key is not None
            raise NameTaken(
                f"session {self._names[key]} of user {record.user_id!r} and template "
                f"{record.template!r} is named {record.name!r} already"
            )
        if record.id in self._sessions or self._port_taken(stored):
            raise Conflict(f"session {record.id} or port {record.port} already taken")
        self._keep(stored)
        if idempotency is not None:
            self._idempotency[(stored.tenant, idempotency.key)] = IdempotencyRecord(
                stored.tenant,
                idempotency.key,
                idempotency.body_hash,
                stored.id,
                stored.created_at,
            )
        self._add_events(stored.id, [event], stored.created_at)
        if intent is None:
            return None
        kind, instance_id = intent
        return self._new_op(
            stored.id, kind, stored.container_name, stored.labels, instance_id, stored.created_at
        )

    async def get_session(self, session_id: str) -> SessionRecord | None:
        record = self._sessions.get(session_id)
        return None if record is None else _handed_out(record)

    async def update_session(
        self,
        record: SessionRecord,
        expected_version: int,
        events: Sequence[NewEvent] = (),
        now: datetime | None = None,
        fence: int | None = None,
    ) -> SessionRecord:
        current = self._sessions.get(record.id)
        held = current.fence if current is not None else 0
        new = _stored(record, version=expected_version + 1, fence=held)  # claims own the fence
        at = _utc(now or new.state_since, f"session {record.id}: event time")
        if current is None or current.version != expected_version:
            raise Conflict(f"session {record.id} changed concurrently; re-read and retry")
        if fence is not None and current.fence != fence:
            raise Conflict(f"session {record.id} was claimed by another instance; re-decide")
        # A write never moves activity back (the flush writes it without a version check).
        if current.last_activity_at is not None and (
            new.last_activity_at is None or new.last_activity_at < current.last_activity_at
        ):
            _set(new, "last_activity_at", current.last_activity_at)
            _set(new, "last_activity_kind", current.last_activity_kind)
            _set(new, "last_activity_source", current.last_activity_source)
        if current.last_seen_at is not None and (
            new.last_seen_at is None or new.last_seen_at < current.last_seen_at
        ):
            _set(new, "last_seen_at", current.last_seen_at)
        if self._port_taken(new):
            raise Conflict(f"session {record.id}: port {record.port} is taken")
        if self._name_taken(new):
            raise Conflict(f"session {record.id}: name {record.name!r} is taken")
        self._keep(new)
        self._add_events(record.id, events, at)
        return _handed_out(new)

    async def list_sessions(
        self,
        *,
        tenant: str | None = None,
        user_id: str | None = None,
        state: State | None = None,
        after_id: str | None = None,
        limit: int = 100,
        include_deleted: bool = False,
        name: str | None = None,
        template: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> list[SessionRecord]:
        out: list[SessionRecord] = []
        if limit <= 0:
            return out
        wanted = dict(labels or {})
        for sid in sorted(self._sessions):
            if after_id is not None and sid <= after_id:
                continue
            r = self._sessions[sid]
            if tenant is not None and r.tenant != tenant:
                continue
            if user_id is not None and r.user_id != user_id:
                continue
            if name is not None and r.name != name:
                continue
            if template is not None and r.template != template:
                continue
            if any(r.labels.get(k) != v for k, v in wanted.items()):
                continue
            if state is not None:
                if r.state is not state:
                    continue
            elif not include_deleted and r.state is State.DELETED:
                continue
            out.append(_handed_out(r))
            if len(out) >= limit:
                break
        return out

    async def live_schedule(self) -> list[tuple[str, str, datetime | None]]:
        return [
            (r.id, r.state.value, r.next_action_at)
            for r in self._sessions.values()
            if r.state is not State.DELETED
        ]

    async def flush_activity(self, batch: dict[str, ActivityTimes]) -> None:
        # In place: stored records are never handed out (readers get copies), so nothing else
        # holds them, and the hot path allocates nothing.
        for sid, t in batch.items():
            r = self._sessions.get(sid)
            if r is None or r.state is State.DELETED:
                continue
            if t.last_activity_at is not None:
                at = _utc(t.last_activity_at, f"session {sid}: last_activity_at")
                if r.last_activity_at is None or r.last_activity_at < at:
                    _set(r, "last_activity_at", at)
                    _set(r, "last_activity_kind", t.last_activity_kind)
                    _set(r, "last_activity_source", t.last_activity_source)
            if t.last_seen_at is not None:
                seen = _utc(t.last_seen_at, f"session {sid}: last_seen_at")
                if r.last_seen_at is None or r.last_seen_at < seen:
                    _set(r, "last_seen_at", seen)
            # No version bump: writes keep the later activity (see update_session).

    async def used_ports(self) -> set[int]:
        return set(self._ports)

    async def admission_counts(
        self, tenant: str, user_id: str, *, per_tenant: bool = True
    ) -> AdmissionCounts:
        running = tenant_running = user_running = user_sessions = queued = 0
        for r in self._sessions.values():
            if r.queued_at is not None:
                queued += 1
            holds = r.state in _SLOT_STATES and not (
                r.state is State.CREATING and r.queued_at is not None
            )
            mine = r.tenant == tenant and r.user_id == user_id
            if holds:
                running += 1
                tenant_running += per_tenant and r.tenant == tenant
                user_running += mine
            if mine and (holds or r.state is State.SLEEPING):
                user_sessions += 1
        return AdmissionCounts(running, tenant_running, user_running, user_sessions, queued)

    async def list_queued(self, limit: int = 10_000) -> list[SessionRecord]:
        rows = [
            r
            for r in self._sessions.values()
            if r.queued_at is not None and r.state is not State.DELETED
        ]
        rows.sort(key=lambda r: (r.queued_at, r.id))
        return [_handed_out(r) for r in rows[:limit]]

    async def count_by_state(self, tenant: str | None) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self._sessions.values():
            if tenant is None or r.tenant == tenant:
                counts[r.state.value] = counts.get(r.state.value, 0) + 1
        return counts

    async def claim_due(
        self,
        instance_id: str,
        now: datetime,
        lease_until: datetime,
        *,
        live_instances: Sequence[str],
        ids: Sequence[str] = (),
        limit: int = 100,
    ) -> list[Claim]:
        now = _utc(now, "claim time")
        wanted = set(ids)
        live = set(live_instances)

        def claimable(r: SessionRecord) -> bool:
            due = (r.next_action_at is not None and r.next_action_at <= now) or r.id in wanted
            owner, until = self._claims.get(r.id, (None, None))
            free = owner is None or (until is not None and until < now) or owner not in live
            return due and free and r.state is not State.DELETED

        order = sorted(
            (r for r in self._sessions.values() if claimable(r)),
            key=lambda r: r.next_action_at or now,
        )[: max(limit, 0)]
        claims = []
        for r in order:
            self._claims[r.id] = (instance_id, _utc(lease_until, "lease"))
            self._sessions[r.id] = _new(r, {"fence": r.fence + 1})
            claims.append(Claim(r.id, r.fence + 1, r.next_action_at))
        return claims

    async def release_claim(
        self, session_id: str, instance_id: str, fence: int, until: datetime | None = None
    ) -> None:
        record = self._sessions.get(session_id)
        owner, _ = self._claims.get(session_id, (None, None))
        if record is None or owner != instance_id or record.fence != fence:
            return
        if until is None:
            del self._claims[session_id]
        else:
            self._claims[session_id] = (instance_id, _utc(until, "lease"))

    async def sessions_with_connections(self) -> list[SessionRecord]:
        return [
            _handed_out(r)
            for r in self._sessions.values()
            if r.connections != 0 and r.state is not State.DELETED
        ]

    async def purge_deleted(self, before: datetime, limit: int) -> int:
        before = _utc(before, "purge cutoff")
        doomed = sorted(
            (
                r
                for r in self._sessions.values()
                if r.state is State.DELETED and r.deleted_at is not None and r.deleted_at < before
            ),
            key=lambda r: (r.deleted_at, r.id),
        )[: max(limit, 0)]
        ids = {r.id for r in doomed}
        for sid in ids:
            record = self._sessions.pop(sid)
            if record.port is not None and self._ports.get(record.port) == sid:
                del self._ports[record.port]
            self._events.pop(sid, None)
        for op_id in [i for i, op in self._operations.items() if op.session_id in ids]:
            del self._operations[op_id]
        return len(ids)

    # deployment -----------------------------------------------------------------------------

    async def deployment_id(self, candidate: str, now: datetime) -> str:
        _utc(now, "deployment created_at")
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
        now = _utc(now, f"operation on {session_id}")
        labels = _to_json(labels, f"operation on {session_id}: labels")
        self._op_id += 1
        self._operations[self._op_id] = OperationRecord(
            self._op_id,
            session_id,
            kind,
            container_name,
            labels,
            "pending",
            0,
            None,
            instance_id,
            now,
            now,
        )
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
        now = _utc(now, f"operation {op_id}")
        op = self._operations.get(op_id)
        if op is None:
            return
        if status == "pending":
            self._operations[op_id] = dataclasses.replace(
                op, attempts=attempts, error=error, updated_at=now
            )
            return
        # Finished operations are only ever read back as "not pending": drop them.
        del self._operations[op_id]

    async def pending_operations(self) -> list[OperationRecord]:
        return [
            dataclasses.replace(op, labels=_copy(op.labels))
            for _, op in sorted(self._operations.items())
        ]

    # timeline -------------------------------------------------------------------------------

    async def add_events(self, session_id: str, events: Sequence[NewEvent], now: datetime) -> None:
        self._add_events(session_id, events, _utc(now, f"events of {session_id}"))

    async def list_events(
        self, session_id: str, limit: int = 500, *, newest: bool = False
    ) -> list[EventRecord]:
        timeline = self._events.get(session_id, [])
        if limit <= 0:
            return []
        return list(timeline[-limit:] if newest else timeline[:limit])

    async def event_counts(self, tenant: str | None) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for (owner, action, code), n in self._transitions.items():
            if tenant is None or owner == tenant:
                by_code = out.setdefault(action, {})
                by_code[code] = by_code.get(code, 0) + n
        return out

    async def count_by_level(self, tenant: str | None, now: datetime) -> dict[str, int]:
        now = _utc(now, "count_by_level now")
        out = {lvl.value: 0 for lvl in Level}
        for r in self._sessions.values():
            if r.state is State.RUNNING and (tenant is None or r.tenant == tenant):
                active, idle = level_thresholds(r.policy)
                thresholds = PolicySettings(active_within=active, idle_within=idle)
                out[level(r.view(), thresholds, now).value] += 1
        return out

    async def add_samples(self, samples: Sequence[tuple[str, NewEvent]], now: datetime) -> None:
        now = _utc(now, "add_samples now")
        for sid, e in samples:
            self._add_events(sid, [e], now)

    # api keys -------------------------------------------------------------------------------

    async def insert_key(self, record: ApiKeyRecord) -> None:
        stored = dataclasses.replace(
            record,
            created_at=_utc(record.created_at, f"key {record.id}: created_at"),
            revoked_at=_utc_or_none(record.revoked_at, f"key {record.id}: revoked_at"),
        )
        if record.id in self._keys:
            raise Conflict(f"key {record.id} exists")
        self._keys[record.id] = stored

    async def get_key(self, key_id: str) -> ApiKeyRecord | None:
        return self._keys.get(key_id)

    async def list_keys(self) -> list[ApiKeyRecord]:
        return sorted(self._keys.values(), key=lambda k: k.created_at)

    async def revoke_key(self, key_id: str, now: datetime) -> bool:
        now = _utc(now, f"key {key_id}: revoked_at")
        key = self._keys.get(key_id)
        if key is None or key.revoked_at is not None:
            return False
        self._keys[key_id] = dataclasses.replace(key, revoked_at=now)
        return True

    # idempotency keys -----------------------------------------------------------------------

    async def get_idempotency(
        self, tenant: str, key: str, since: datetime
    ) -> IdempotencyRecord | None:
        since = _utc(since, "idempotency since")
        held = self._idempotency.get((tenant, key))
        return held if held is not None and held.created_at >= since else None

    async def purge_idempotency(self, before: datetime) -> int:
        before = _utc(before, "idempotency before")
        gone = [k for k, row in self._idempotency.items() if row.created_at < before]
        for k in gone:
            del self._idempotency[k]
        return len(gone)

    # access links ---------------------------------------------------------------------------

    async def insert_link(self, token_hash: str, session_id: str, expires_at: datetime) -> None:
        expires_at = _utc(expires_at, f"link of {session_id}: expires_at")
        if token_hash in self._links:
            raise Conflict("this link exists already")
        self._links[token_hash] = (session_id, expires_at, False)

    async def consume_link(self, token_hash: str, now: datetime) -> str | None:
        now = _utc(now, "link: now")
        link = self._links.get(token_hash)
        if link is None or link[2] or link[1] <= now:
            return None
        self._links[token_hash] = (link[0], link[1], True)
        return link[0]

    async def purge_links(self, before: datetime) -> int:
        before = _utc(before, "links: before")
        gone = [h for h, (_, expires, _) in self._links.items() if expires < before]
        for token_hash in gone:
            del self._links[token_hash]
        return len(gone)

    # instances ------------------------------------------------------------------------------

    async def heartbeat_instance(self, record: InstanceRecord) -> None:
        beat = _utc(record.heartbeat_at, f"instance {record.id}: heartbeat_at")
        old = self._instances.get(record.id)
        if old is None:
            started = _utc(record.started_at, f"instance {record.id}: started_at")
            self._instances[record.id] = dataclasses.replace(
                record, started_at=started, heartbeat_at=beat
            )
        else:
            self._instances[record.id] = dataclasses.replace(old, heartbeat_at=beat)

    async def live_instances(self, since: datetime) -> list[InstanceRecord]:
        since = _utc(since, "live_instances since")
        return [i for i in self._instances.values() if i.heartbeat_at >= since]

    async def remove_instance(self, instance_id: str) -> None:
        self._instances.pop(instance_id, None)

    # adaptive models ------------------------------------------------------------------------

    async def load_adaptive(self, keys: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
        if keys is None:
            return {k: _copy(v) for k, v in self._adaptive.items()}
        return {k: _copy(self._adaptive[k]) for k in keys if k in self._adaptive}

    async def save_adaptive(self, models: Mapping[str, dict[str, Any]], now: datetime) -> None:
        _utc(now, "adaptive models updated_at")
        stored = {key: _to_json(model, f"adaptive model {key}") for key, model in models.items()}
        self._adaptive.update(stored)

    # the console's overview (read only) ---------------------------------------------------

    async def window_events(
        self, since: datetime, activity_since: datetime, tenant: str | None, limit: int
    ) -> list[EventRecord]:
        since = _utc(since, "window_events since")
        activity_since = _utc(activity_since, "window_events activity_since")
        out: list[EventRecord] = []
        for sid in sorted(self._events):
            record = self._sessions.get(sid)
            if record is None or (tenant is not None and record.tenant != tenant):
                continue
            if record.deleted_at is not None and record.deleted_at < since:
                continue
            out += [
                e
                for e in self._events[sid]
                if e.type == "transition" or (e.type == "activity" and e.at >= activity_since)
            ]
        return out[: max(limit, 0)]
