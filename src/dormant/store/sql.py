"""The SQLAlchemy (async) store: SQLite by default, PostgreSQL by URL."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import (
    String,
    and_,
    bindparam,
    case,
    event,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, StatementError
from sqlalchemy.exc import TimeoutError as SATimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from dormant.errors import Conflict, DormantError, InvalidInput, TemporaryError
from dormant.policy import ActivityTimes, State
from dormant.store import counting
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
)
from dormant.store.schema import (
    UTCDateTime,
    access_links,
    adaptive_models,
    api_keys,
    deployment,
    idempotency_keys,
    instances,
    operations,
    session_events,
    sessions,
)


def make_engine(url: str) -> AsyncEngine:
    if url.startswith("sqlite"):
        # Named parameters: SQLAlchemy's default for SQLite (qmark) costs much more CPU per row
        # on executemany (the activity flush), measured by benchmarks/bench_engine.py.
        engine = create_async_engine(url, connect_args={"timeout": 30}, paramstyle="named")

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_async_engine(url, pool_pre_ping=True)


def _event_rows(session_id: str, events: Sequence[NewEvent], now: datetime) -> list[dict[str, Any]]:
    return [
        {
            "session_id": session_id,
            "at": e.at or now,
            "type": e.type,
            "from_state": e.from_state,
            "to_state": e.to_state,
            "action": e.action,
            "code": e.code,
            "reason": e.reason,
            "source": e.source,
        }
        for e in events
    ]


def _activity_kept(new: SessionRecord) -> dict[str, Any]:
    """A write never moves activity back: each activity column keeps the later of the stored
    value and the written one (the flush writes activity without a version check)."""
    at = literal(new.last_activity_at, UTCDateTime())
    seen = literal(new.last_seen_at, UTCDateTime())
    later = and_(
        at.is_not(None),
        or_(sessions.c.last_activity_at.is_(None), sessions.c.last_activity_at < at),
    )
    return {
        "last_activity_at": case((later, at), else_=sessions.c.last_activity_at),
        "last_activity_kind": case(
            (later, literal(new.last_activity_kind, String())),
            else_=sessions.c.last_activity_kind,
        ),
        "last_activity_source": case(
            (later, literal(new.last_activity_source, String())),
            else_=sessions.c.last_activity_source,
        ),
        "last_seen_at": case(
            (
                and_(
                    seen.is_not(None),
                    or_(sessions.c.last_seen_at.is_(None), sessions.c.last_seen_at < seen),
                ),
                seen,
            ),
            else_=sessions.c.last_seen_at,
        ),
    }


def _anchor_kept(new: SessionRecord) -> Any:
    at = literal(new.last_activity_at, UTCDateTime())
    later = and_(
        at.is_not(None),
        or_(sessions.c.last_activity_at.is_(None), sessions.c.last_activity_at < at),
    )
    return counting.anchor_kept(later, new.last_activity_at)


#: Rows per activity-flush transaction.
FLUSH_CHUNK = 500
#: Admission: states holding a running slot (besides a create not queued), and every state
#: admission counts (queued sessions are creating or sleeping): ix_sessions_state skips the
#: rest (deleted rows kept for ``retention``, failed ones).
_SLOT_STATES = (State.STARTING.value, State.RUNNING.value, State.STOPPING.value)
_COUNTED_STATES = (State.CREATING.value, *_SLOT_STATES, State.SLEEPING.value)


def _admission_query(per_tenant: bool) -> Any:
    """One round trip of scalar counts, each served by an index: a running slot is counted as
    ``state IN (starting, running, stopping)`` (index only, on ix_sessions_state) plus the few
    ``creating`` rows not queued; a tenant's likewise on ix_sessions_tenant_state; a user's
    rows through ix_sessions_tenant_user; the queue through ix_sessions_queued_at."""
    creating = and_(sessions.c.state == State.CREATING.value, sessions.c.queued_at.is_(None))
    slots = sessions.c.state.in_(_SLOT_STATES)
    holds = or_(slots, creating)
    of_tenant = sessions.c.tenant == bindparam("a_tenant")
    mine = and_(of_tenant, sessions.c.user_id == bindparam("a_user"))

    def count(*where: Any) -> Any:
        return select(func.count()).select_from(sessions).where(*where).scalar_subquery()

    return select(
        count(slots) + count(creating),
        count(of_tenant, slots) + count(of_tenant, creating) if per_tenant else literal(0),
        count(mine, holds),
        count(mine, or_(holds, sessions.c.state == State.SLEEPING.value)),
        count(sessions.c.queued_at.is_not(None)),
    )


_ADMISSION_COUNTS = _admission_query(per_tenant=True)
_ADMISSION_COUNTS_NO_TENANT = _admission_query(per_tenant=False)


def _translate_errors(cls: type[SqlStoreT]) -> type[SqlStoreT]:
    """Database trouble (pool exhausted, connection lost, locked) leaves as TemporaryError, at
    the boundary, so callers retry instead of crashing; DormantErrors pass through."""

    def wrap(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(fn)
        async def translated(*args: Any, **kwargs: Any) -> Any:
            try:
                return await fn(*args, **kwargs)
            except DormantError:
                raise
            except (SATimeoutError, DBAPIError, OSError) as exc:
                detail = getattr(exc, "orig", None) or exc
                raise TemporaryError(f"store unavailable: {detail}") from exc
            except StatementError as exc:  # a value refused before it reached the database
                raise InvalidInput(f"store refused a value: {exc.orig}") from exc

        return translated

    for name, value in list(vars(cls).items()):
        if inspect.iscoroutinefunction(value) and not name.startswith("_"):
            setattr(cls, name, wrap(value))
    return cls


SqlStoreT = TypeVar("SqlStoreT")


@_translate_errors
class SqlStore(Store):
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)

    async def close(self) -> None:
        await self.engine.dispose()

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(select(1))

    # sessions -------------------------------------------------------------------------------

    async def insert_session(
        self,
        record: SessionRecord,
        event: NewEvent,
        intent: tuple[str, str] | None,
        idempotency: IdempotencyKey | None = None,
    ) -> int | None:
        op_id: int | None = None
        try:
            async with self.engine.begin() as conn:
                if idempotency is not None:
                    # An expired row of this key no longer counts: the new one replaces it.
                    await conn.execute(
                        idempotency_keys.delete().where(
                            idempotency_keys.c.tenant == record.tenant,
                            idempotency_keys.c.key == idempotency.key,
                            idempotency_keys.c.created_at < idempotency.expired_before,
                        )
                    )
                    await conn.execute(
                        insert(idempotency_keys).values(
                            tenant=record.tenant,
                            key=idempotency.key,
                            body_hash=idempotency.body_hash,
                            session_id=record.id,
                            created_at=record.created_at,
                        )
                    )
                await conn.execute(
                    insert(sessions).values(**record.to_row(), **counting.level_columns(record))
                )
                await conn.execute(
                    insert(session_events), _event_rows(record.id, [event], record.created_at)
                )
                await counting.count_transitions(conn, record.tenant, [event])
                if intent is not None:
                    kind, instance_id = intent
                    result = await conn.execute(
                        insert(operations).values(
                            session_id=record.id,
                            kind=kind,
                            container_name=record.container_name,
                            labels=record.labels,
                            status="pending",
                            attempts=0,
                            instance_id=instance_id,
                            created_at=record.created_at,
                            updated_at=record.created_at,
                        )
                    )
                    pk = result.inserted_primary_key
                    op_id = int(pk[0]) if pk is not None else None
        except IntegrityError as exc:
            raise await self._refusal(record, idempotency) from exc
        except OperationalError as exc:
            raise TemporaryError(f"store unavailable: {exc.orig}") from exc
        return op_id

    async def _refusal(self, record: SessionRecord, idempotency: IdempotencyKey | None) -> Conflict:
        """Which unique rule refused an insert (read again after the rollback)."""
        if idempotency is not None:
            held = await self.get_idempotency(
                record.tenant, idempotency.key, idempotency.expired_before
            )
            if held is not None:
                return KeyTaken(f"idempotency key {idempotency.key!r} is held already")
        if record.name is not None:
            query = select(sessions.c.id).where(
                sessions.c.tenant == record.tenant,
                sessions.c.user_id == record.user_id,
                sessions.c.template == record.template,
                sessions.c.name == record.name,
                sessions.c.state != State.DELETED.value,
            )
            async with self.engine.connect() as conn:
                holder = (await conn.execute(query)).first()
            if holder is not None:
                return NameTaken(
                    f"session {holder.id} of user {record.user_id!r} and template "
                    f"{record.template!r} is named {record.name!r} already"
                )
        return Conflict(f"session {record.id} or port {record.port} already taken")

    async def get_session(self, session_id: str) -> SessionRecord | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(sessions).where(sessions.c.id == session_id))).first()
        return SessionRecord.from_row(row) if row is not None else None

    async def update_session(
        self,
        record: SessionRecord,
        expected_version: int,
        events: Sequence[NewEvent] = (),
        now: datetime | None = None,
        fence: int | None = None,
    ) -> SessionRecord:
        new = record.replace(version=expected_version + 1)
        values: dict[str, Any] = new.to_row()
        del values["id"]
        values.update(_activity_kept(new))
        values.update(counting.level_columns(new))
        values["anchor_minute"] = _anchor_kept(new)
        guard = [sessions.c.id == record.id, sessions.c.version == expected_version]
        if fence is not None:
            guard.append(sessions.c.fence == fence)
        try:
            async with self.engine.begin() as conn:
                stmt = update(sessions).where(*guard).values(**values).returning(*sessions.c)
                row = (await conn.execute(stmt)).first()
                if row is None:
                    raise Conflict(f"session {record.id} changed concurrently; re-read and retry")
                new = SessionRecord.from_row(row)
                if events:
                    await conn.execute(
                        insert(session_events),
                        _event_rows(record.id, events, now or record.state_since),
                    )
                    await counting.count_transitions(conn, new.tenant, events)
        except IntegrityError as exc:
            raise Conflict(f"session {record.id}: {exc.orig}") from exc
        except OperationalError as exc:
            raise TemporaryError(f"store unavailable: {exc.orig}") from exc
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
        name: str | None = None,
        template: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> list[SessionRecord]:
        query = select(sessions).order_by(sessions.c.id).limit(limit)
        if tenant is not None:
            query = query.where(sessions.c.tenant == tenant)
        if user_id is not None:
            query = query.where(sessions.c.user_id == user_id)
        if name is not None:
            query = query.where(sessions.c.name == name)
        if template is not None:
            query = query.where(sessions.c.template == template)
        for key, value in (labels or {}).items():
            query = query.where(sessions.c.labels[key].as_string() == value)
        if state is not None:
            query = query.where(sessions.c.state == state.value)
        elif not include_deleted:
            query = query.where(sessions.c.state != State.DELETED.value)
        if after_id is not None:
            query = query.where(sessions.c.id > after_id)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [SessionRecord.from_row(r) for r in rows]

    async def live_schedule(self) -> list[tuple[str, str, datetime | None]]:
        query = select(sessions.c.id, sessions.c.state, sessions.c.next_action_at).where(
            sessions.c.state != State.DELETED.value
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [(r.id, r.state, r.next_action_at) for r in rows]

    async def flush_activity(self, batch: dict[str, ActivityTimes]) -> None:
        if not batch:
            return
        at = bindparam("b_at", type_=UTCDateTime())
        seen = bindparam("b_seen", type_=UTCDateTime())
        newer = and_(
            at.is_not(None),
            or_(sessions.c.last_activity_at.is_(None), sessions.c.last_activity_at < at),
        )
        stmt = (
            update(sessions)
            .where(sessions.c.id == bindparam("b_id"), sessions.c.state != State.DELETED.value)
            .values(
                last_activity_at=case((newer, at), else_=sessions.c.last_activity_at),
                last_activity_kind=case(
                    (newer, bindparam("b_kind")), else_=sessions.c.last_activity_kind
                ),
                last_activity_source=case(
                    (newer, bindparam("b_source")), else_=sessions.c.last_activity_source
                ),
                # Changes once a minute at most: most flushes change no indexed value.
                anchor_minute=case(
                    (newer, bindparam("b_minute", type_=UTCDateTime())),
                    else_=sessions.c.anchor_minute,
                ),
                last_seen_at=case(
                    (
                        and_(
                            seen.is_not(None),
                            or_(sessions.c.last_seen_at.is_(None), sessions.c.last_seen_at < seen),
                        ),
                        seen,
                    ),
                    else_=sessions.c.last_seen_at,
                ),
                # No version bump: activity is merged by max() everywhere (update_session keeps
                # the later of stored and written), so it never makes a write stale, and a
                # Conflict always means a real second writer.
            )
        )
        params = [
            {
                "b_id": sid,
                "b_at": t.last_activity_at,
                "b_kind": t.last_activity_kind,
                "b_source": t.last_activity_source,
                "b_minute": None
                if t.last_activity_at is None
                else counting.minute_of(t.last_activity_at),
                "b_seen": t.last_seen_at,
            }
            # In session id order: two replicas flushing overlapping batches then lock the
            # same rows in the same order (PostgreSQL found deadlocks otherwise).
            for sid, t in sorted(batch.items())
        ]
        # Chunks, each its own short transaction, so one huge batch neither holds the write
        # lock nor the event loop for seconds; every row is an idempotent max(), so a chunk
        # written twice after a failure is harmless.
        for start in range(0, len(params), FLUSH_CHUNK):
            try:
                async with self.engine.begin() as conn:
                    await conn.execute(stmt, params[start : start + FLUSH_CHUNK])
            except OperationalError as exc:
                raise TemporaryError(f"store unavailable: {exc.orig}") from exc
            await asyncio.sleep(0)

    async def used_ports(self) -> set[int]:
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(select(sessions.c.port).where(sessions.c.port.is_not(None)))
            ).all()
        return {int(r.port) for r in rows}

    async def admission_counts(
        self, tenant: str, user_id: str, *, per_tenant: bool = True
    ) -> AdmissionCounts:
        query = _ADMISSION_COUNTS if per_tenant else _ADMISSION_COUNTS_NO_TENANT
        async with self.engine.connect() as conn:
            row = (await conn.execute(query, {"a_tenant": tenant, "a_user": user_id})).one()
        return AdmissionCounts(*(int(v) for v in row))

    async def list_queued(self, limit: int = 10_000) -> list[SessionRecord]:
        query = (
            select(sessions)
            .where(sessions.c.queued_at.is_not(None), sessions.c.state != State.DELETED.value)
            .order_by(sessions.c.queued_at, sessions.c.id)
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [SessionRecord.from_row(r) for r in rows]

    async def count_by_state(self, tenant: str | None) -> dict[str, int]:
        query = select(sessions.c.state, func.count()).group_by(sessions.c.state)
        if tenant is not None:
            query = query.where(sessions.c.tenant == tenant)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return {str(r[0]): int(r[1]) for r in rows}

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
        due = sessions.c.next_action_at <= now
        if ids:
            due = or_(due, sessions.c.id.in_(list(ids)))
        free = or_(
            sessions.c.claimed_by.is_(None),
            sessions.c.claim_until < now,
            sessions.c.claimed_by.not_in(list(live_instances) or [""]),
        )
        candidates = (
            select(sessions.c.id)
            .where(due, free, sessions.c.state != State.DELETED.value)
            .order_by(sessions.c.next_action_at)
            .limit(limit)
            .with_for_update(skip_locked=True)  # PostgreSQL; SQLite has one writer anyway
        )
        stmt = (
            update(sessions)
            .where(sessions.c.id.in_(candidates.scalar_subquery()))
            .values(claimed_by=instance_id, claim_until=lease_until, fence=sessions.c.fence + 1)
            .returning(sessions.c.id, sessions.c.fence, sessions.c.next_action_at)
        )
        async with self.engine.begin() as conn:
            rows = (await conn.execute(stmt)).all()
        return [Claim(str(r.id), int(r.fence), r.next_action_at) for r in rows]

    async def release_claim(
        self, session_id: str, instance_id: str, fence: int, until: datetime | None = None
    ) -> None:
        values: dict[str, Any] = (
            {"claimed_by": None, "claim_until": None} if until is None else {"claim_until": until}
        )
        async with self.engine.begin() as conn:
            await conn.execute(
                update(sessions)
                .where(
                    sessions.c.id == session_id,
                    sessions.c.claimed_by == instance_id,
                    sessions.c.fence == fence,
                )
                .values(**values)
            )

    async def sessions_with_connections(self) -> list[SessionRecord]:
        query = select(sessions).where(
            sessions.c.connections != 0, sessions.c.state != State.DELETED.value
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [SessionRecord.from_row(r) for r in rows]

    async def purge_deleted(self, before: datetime, limit: int) -> int:
        async with self.engine.begin() as conn:
            ids = [
                r.id
                for r in (
                    await conn.execute(
                        select(sessions.c.id)
                        .where(
                            sessions.c.state == State.DELETED.value,
                            sessions.c.deleted_at < before,
                        )
                        .order_by(sessions.c.deleted_at)
                        .limit(limit)
                    )
                ).all()
            ]
            if not ids:
                return 0
            await conn.execute(session_events.delete().where(session_events.c.session_id.in_(ids)))
            await conn.execute(operations.delete().where(operations.c.session_id.in_(ids)))
            await conn.execute(
                sessions.delete().where(
                    sessions.c.id.in_(ids), sessions.c.state == State.DELETED.value
                )
            )
        return len(ids)

    # deployment -----------------------------------------------------------------------------

    async def deployment_id(self, candidate: str, now: datetime) -> str:
        query = select(deployment.c.id).where(deployment.c.singleton == 1)
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is not None:
            return str(row.id)
        try:
            async with self.engine.begin() as conn:
                await conn.execute(
                    insert(deployment).values(id=candidate, created_at=now, singleton=1)
                )
        except IntegrityError:
            pass  # another process made it first: take theirs
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        assert row is not None
        return str(row.id)

    # operations -----------------------------------------------------------------------------

    async def insert_operation(
        self,
        session_id: str,
        kind: str,
        container_name: str,
        labels: dict[str, str],
        instance_id: str,
        now: datetime,
    ) -> int:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                insert(operations).values(
                    session_id=session_id,
                    kind=kind,
                    container_name=container_name,
                    labels=labels,
                    status="pending",
                    attempts=0,
                    instance_id=instance_id,
                    created_at=now,
                    updated_at=now,
                )
            )
            pk = result.inserted_primary_key
            assert pk is not None
            return int(pk[0])

    async def finish_operation(
        self, op_id: int, status: str, attempts: int, error: str | None, now: datetime
    ) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(operations)
                .where(operations.c.id == op_id)
                .values(status=status, attempts=attempts, error=error, updated_at=now)
            )

    async def pending_operations(self) -> list[OperationRecord]:
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(operations)
                    .where(operations.c.status == "pending")
                    .order_by(operations.c.id)
                )
            ).all()
        return [OperationRecord(**dict(r._mapping)) for r in rows]

    # timeline -------------------------------------------------------------------------------

    async def add_events(self, session_id: str, events: Sequence[NewEvent], now: datetime) -> None:
        if not events:
            return
        async with self.engine.begin() as conn:
            await conn.execute(insert(session_events), _event_rows(session_id, events, now))
            if any(e.counted for e in events):
                owner = select(sessions.c.tenant).where(sessions.c.id == session_id)
                tenant = (await conn.execute(owner)).scalar()
                if tenant is not None:
                    await counting.count_transitions(conn, str(tenant), events)

    async def list_events(
        self, session_id: str, limit: int = 500, *, newest: bool = False
    ) -> list[EventRecord]:
        order = session_events.c.id.desc() if newest else session_events.c.id
        query = (
            select(session_events)
            .where(session_events.c.session_id == session_id)
            .order_by(order)
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        events = [EventRecord(**dict(r._mapping)) for r in rows]
        return events[::-1] if newest else events

    async def event_counts(self, tenant: str | None) -> dict[str, dict[str, int]]:
        async with self.engine.connect() as conn:
            return await counting.transitions_by_reason(conn, tenant)

    async def count_by_level(self, tenant: str | None, now: datetime) -> dict[str, int]:
        async with self.engine.connect() as conn:
            return await counting.levels(conn, tenant, now)

    async def add_samples(self, samples: Sequence[tuple[str, NewEvent]], now: datetime) -> None:
        if not samples:
            return
        rows = [row for sid, e in samples for row in _event_rows(sid, [e], now)]
        async with self.engine.begin() as conn:
            await conn.execute(insert(session_events), rows)

    # api keys -------------------------------------------------------------------------------

    async def insert_key(self, record: ApiKeyRecord) -> None:
        try:
            async with self.engine.begin() as conn:
                await conn.execute(insert(api_keys).values(**dataclasses.asdict(record)))
        except IntegrityError as exc:
            raise Conflict(f"API key {record.id} exists already") from exc

    async def get_key(self, key_id: str) -> ApiKeyRecord | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(api_keys).where(api_keys.c.id == key_id))).first()
        return ApiKeyRecord(**dict(row._mapping)) if row is not None else None

    async def list_keys(self) -> list[ApiKeyRecord]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(api_keys).order_by(api_keys.c.created_at))).all()
        return [ApiKeyRecord(**dict(r._mapping)) for r in rows]

    async def revoke_key(self, key_id: str, now: datetime) -> bool:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(api_keys)
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
        return bool(result.rowcount)

    # idempotency keys -----------------------------------------------------------------------

    async def get_idempotency(
        self, tenant: str, key: str, since: datetime
    ) -> IdempotencyRecord | None:
        query = select(idempotency_keys).where(
            idempotency_keys.c.tenant == tenant,
            idempotency_keys.c.key == key,
            idempotency_keys.c.created_at >= since,
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return IdempotencyRecord(**dict(row._mapping)) if row is not None else None

    async def purge_idempotency(self, before: datetime) -> int:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                idempotency_keys.delete().where(idempotency_keys.c.created_at < before)
            )
        return int(result.rowcount or 0)

    # access links ---------------------------------------------------------------------------

    async def insert_link(self, token_hash: str, session_id: str, expires_at: datetime) -> None:
        try:
            async with self.engine.begin() as conn:
                await conn.execute(
                    insert(access_links).values(
                        token_hash=token_hash, session_id=session_id, expires_at=expires_at
                    )
                )
        except IntegrityError as exc:
            raise Conflict("this link exists already") from exc

    async def consume_link(self, token_hash: str, now: datetime) -> str | None:
        # One UPDATE ... WHERE used_at IS NULL: of racing exchanges exactly one changes the row.
        async with self.engine.begin() as conn:
            row = (
                await conn.execute(
                    update(access_links)
                    .where(
                        access_links.c.token_hash == token_hash,
                        access_links.c.used_at.is_(None),
                        access_links.c.expires_at > now,
                    )
                    .values(used_at=now)
                    .returning(access_links.c.session_id)
                )
            ).first()
        return str(row.session_id) if row is not None else None

    async def purge_links(self, before: datetime) -> int:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                access_links.delete().where(access_links.c.expires_at < before)
            )
        return int(result.rowcount or 0)

    # instances ------------------------------------------------------------------------------

    async def heartbeat_instance(self, record: InstanceRecord) -> None:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(instances)
                .where(instances.c.id == record.id)
                .values(heartbeat_at=record.heartbeat_at)
            )
            if result.rowcount == 0:
                await conn.execute(insert(instances).values(**dataclasses.asdict(record)))

    async def live_instances(self, since: datetime) -> list[InstanceRecord]:
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(select(instances).where(instances.c.heartbeat_at >= since))
            ).all()
        return [InstanceRecord(**dict(r._mapping)) for r in rows]

    async def remove_instance(self, instance_id: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(instances.delete().where(instances.c.id == instance_id))

    # adaptive models ------------------------------------------------------------------------

    async def load_adaptive(self, keys: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
        query = select(adaptive_models.c.key, adaptive_models.c.model)
        if keys is not None:
            if not keys:
                return {}
            query = query.where(adaptive_models.c.key.in_(list(keys)))
        try:
            async with self.engine.connect() as conn:
                rows = (await conn.execute(query)).all()
        except OperationalError as exc:
            raise TemporaryError(f"store unavailable: {exc.orig}") from exc
        return {str(r.key): dict(r.model) for r in rows}

    async def save_adaptive(self, models: Mapping[str, dict[str, Any]], now: datetime) -> None:
        if not models:
            return
        from sqlalchemy.dialects import postgresql, sqlite

        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        rows = [
            {
                "key": key,
                "model": model,
                "observations": int(model.get("observations", 0)),
                "weight": float(sum(model.get("weights", ()))),
                "updated_at": now,
            }
            for key, model in models.items()
        ]
        stmt = dialect.insert(adaptive_models)
        stmt = stmt.on_conflict_do_update(
            index_elements=[adaptive_models.c.key],
            set_={
                name: stmt.excluded[name]
                for name in ("model", "observations", "weight", "updated_at")
            },
        )
        try:
            async with self.engine.begin() as conn:
                await conn.execute(stmt, rows)
        except OperationalError as exc:
            raise TemporaryError(f"store unavailable: {exc.orig}") from exc

    # the console's overview (read only) -----------------------------------------------------

    async def window_events(
        self, since: datetime, activity_since: datetime, tenant: str | None, limit: int
    ) -> list[EventRecord]:
        wanted = or_(
            session_events.c.type == "transition",
            and_(session_events.c.type == "activity", session_events.c.at >= activity_since),
        )
        query = (
            select(session_events)
            .join(sessions, sessions.c.id == session_events.c.session_id)
            .where(wanted, or_(sessions.c.deleted_at.is_(None), sessions.c.deleted_at >= since))
            .order_by(session_events.c.session_id, session_events.c.id)
            .limit(limit)
        )
        if tenant is not None:
            query = query.where(sessions.c.tenant == tenant)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [EventRecord(**dict(r._mapping)) for r in rows]
