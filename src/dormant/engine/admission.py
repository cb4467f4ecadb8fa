"""Admission: creates and wakes beyond a ``[limits]`` limit wait in durable FIFO queues.

A queued create is a ``creating`` session with ``queued_at`` set and no operation started; a
queued wake is a ``sleeping`` session with ``queued_at`` set. The policy leaves queued sessions
alone (no next action) and the reconciler does not resume them. Admission passes (at once when
a running slot frees in this process, and every ``ADMIT_EVERY`` seconds for what other
replicas freed, or after a restart) admit queued sessions oldest first as their limits allow,
time out those that waited ``queue_timeout``, and tell clients their positions (``Queued``).

Counting and admitting happen under one lock per process, with the store's counts read inside
it. Queued sessions are admitted by one replica only (the first live instance by id). A create
or wake that finds room is admitted at once by whichever replica takes it: across replicas two
of those at the same moment can each see the last free slot (a small over-admission, at most
one per other replica at that moment, which the next frees absorb); no cross-replica lock is
taken on the create path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime, timedelta
from typing import Any

from dormant.engine.limits import (
    QUEUE_TIMEOUT,
    RUNNING,
    RUNNING_PER_TENANT,
    Limits,
    blocking,
    describe,
    positions,
    queue_key,
)
from dormant.engine.notify import EngineEvent, QueueChanged, Queued, Transitioned
from dormant.engine.outcome import OperationKind
from dormant.engine.reads import ReadSide
from dormant.errors import CapacityExhausted, DormantError
from dormant.policy import ActivityKind, State
from dormant.store.records import AdmissionCounts, NewEvent, SessionRecord

log = logging.getLogger("dormant.engine")

#: Seconds between admission passes when nothing in this process freed a slot.
ADMIT_EVERY = 1.0
#: States that hold a running slot: leaving them frees one.
_SLOT = frozenset({State.CREATING, State.STARTING, State.RUNNING, State.STOPPING})


class Admission(ReadSide):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._admission_lock = asyncio.Lock()
        self._admission_poke = asyncio.Event()
        #: The positions clients were last told, by queued session (this process's passes).
        self._told_positions: dict[str, int] = {}
        #: Queued session -> the session put to sleep to make room for it (evict_idle).
        self._evicted_for: dict[str, str] = {}
        self._last_queued: datetime | None = None
        #: Sessions waiting for capacity, as the last admission pass of this process saw.
        self.queue_length = 0

    def _queue_time(self) -> datetime:
        """Now, strictly after the last time this process queued something: FIFO order holds
        whatever the clock's resolution (across replicas equal times are ordered by id)."""
        now = self.clock.now()
        if self._last_queued is not None and now <= self._last_queued:
            now = self._last_queued + timedelta(microseconds=1)
        self._last_queued = now
        return now

    @property
    def limits(self) -> Limits:
        return self.settings.limits

    async def _counts(self, record: SessionRecord) -> AdmissionCounts:
        per_tenant = self.limits.tenant_limit(record.tenant) is not None
        return await self.store.admission_counts(
            record.tenant, record.user_id, per_tenant=per_tenant
        )

    def _emit(self, event: EngineEvent) -> None:
        super()._emit(event)
        if (
            isinstance(event, Transitioned)
            and self.limits.configured
            and event.to_state not in _SLOT
            and event.from_state is not None
        ):
            self._admission_poke.set()

    async def _admission_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._admission_poke.wait(), ADMIT_EVERY)
            self._admission_poke.clear()
            try:
                await self.admit_queued()
            except DormantError as exc:
                log.warning("admission pass failed: %s", exc)
            except Exception:
                log.exception("admission pass failed")

    async def _wake_on_activity(self, sid: str, kind: ActivityKind) -> None:
        if not self.limits.configured:
            await super()._wake_on_activity(sid, kind)
            return
        record = await self.store.get_session(sid)
        if record is None or record.state is not State.SLEEPING:
            return
        if not self.policy_of(record).wake_on_activity:
            return
        await self._admit_wake(record, "activity", f"woken by {kind.value} activity")

    async def _admission_for_create(self, record: SessionRecord) -> SessionRecord | None:
        """Under the admission lock (held by the caller): the record queued (``queued_at``
        and its limit set) when a limit blocks it or others wait already, else ``None``."""
        counts = await self._counts(record)
        limit = blocking(self.limits, counts, record.tenant, "create")
        if limit is None and not await self._behind(record, counts):
            return None
        return record.replace(
            queued_at=self._queue_time(), queue_kind="create", queue_limit=limit or RUNNING
        )

    async def _behind(self, record: SessionRecord, counts: AdmissionCounts) -> bool:
        """Whether queued sessions wait for the slots ``record`` would take (FIFO: it queues
        behind them): one in the global queue, in its tenant's queue, or in its user's."""
        if counts.queued == 0:
            return False
        for queued in await self.store.list_queued():
            key = queue_key(queued)
            if (
                key == (RUNNING,)
                or key == (RUNNING_PER_TENANT, record.tenant)
                or key[1:] == (record.tenant, record.user_id)
            ):
                return True
        return False

    def _queued_new(self, record: SessionRecord) -> None:
        """A create was queued (after its insert): say so, and let a pass place it."""
        assert record.queue_limit is not None
        log.warning(
            "admission: session %s (user %s) queued at create by limit %s",
            record.id,
            record.user_id,
            describe(self.limits, record.queue_limit, record),
            extra={"session": record.id, "limit": record.queue_limit},
        )
        self._admission_poke.set()

    async def _admit_wake(self, record: SessionRecord, code: str, reason: str) -> SessionRecord:
        """A wake under limits: started now (moved to ``starting`` under the admission lock,
        so the next count sees it) or queued. Returns the session as it is now."""
        async with self._admission_lock:
            fresh = await self._fresh(record.id)
            if fresh is None or fresh.state not in (State.SLEEPING, State.FAILED):
                return fresh or record
            if fresh.id in self._delete_requested:
                return fresh
            if fresh.queued_at is not None:
                self._admission_poke.set()
                return fresh
            counts = await self._counts(fresh)
            limit = blocking(self.limits, counts, fresh.tenant, "wake")
            if limit is None and not await self._behind(fresh, counts):
                return await self._start_wake(fresh, code, reason)
            queued = fresh.replace(
                queued_at=self._queue_time(), queue_kind="wake", queue_limit=limit or RUNNING
            )
            note = f"wake queued by limit {describe(self.limits, limit or RUNNING, fresh)}"
            async with self._session_lock(fresh.id):
                saved = await self._save(
                    queued, [NewEvent("decision", note, "queued", action="wake")]
                )
            log.warning(
                "admission: session %s (user %s) %s",
                fresh.id,
                fresh.user_id,
                note,
                extra={"session": fresh.id, "limit": limit or RUNNING},
            )
            self._admission_poke.set()
            return saved

    async def _start_wake(self, record: SessionRecord, code: str, reason: str) -> SessionRecord:
        """Admitted: the intent row, then ``starting`` (the slot is taken in the store), then
        the start in the background."""
        async with self._session_lock(record.id):
            current = await self._fresh(record.id)
            if current is None or current.state not in (State.SLEEPING, State.FAILED):
                return current or record
            op_id = await self._intent(current, OperationKind.START)
            try:
                moved = await self._claim_port(
                    current,
                    lambda changes: self._transition(
                        current,
                        State.STARTING,
                        code,
                        reason,
                        action="wake",
                        error=None,
                        queued_at=None,
                        queue_kind=None,
                        queue_limit=None,
                        **changes,
                    ),
                )
            except CapacityExhausted as exc:
                await self._refuse_wake(current, op_id, exc)
                return current
        self._spawn_op(record.id, op_id, lambda: self._begin_wake(record.id, code, reason, op_id))
        return moved

    async def admit_queued(self) -> int:
        """One admission pass; returns how many sessions were admitted. With several
        replicas only one runs passes (the first live instance by id), so that two never admit
        the same queued session; the others' frees reach it by its periodic pass."""
        if not self.limits.configured:
            return 0
        live = self._live_instances
        if live and live[0] != self.settings.instance_id:
            return 0
        admitted = 0
        async with self._admission_lock:
            now = self.clock.now()
            timeout = timedelta(seconds=self.limits.queue_timeout)
            for record in await self.store.list_queued():
                assert record.queued_at is not None
                if record.state not in (State.CREATING, State.SLEEPING, State.FAILED):
                    continue  # being deleted (or moved by another writer): not admitted
                if record.id in self._delete_requested:
                    continue
                try:
                    if now - record.queued_at >= timeout:
                        await self._give_up(record)
                        continue
                    counts = await self._counts(record)
                    kind = record.queue_kind or "create"
                    limit = blocking(self.limits, counts, record.tenant, kind)
                    if limit is None:
                        await self._admit(record)
                        admitted += 1
                    else:
                        if limit != record.queue_limit:
                            await self._requeue(record, limit)
                        if self.limits.evict_idle and limit in (RUNNING, RUNNING_PER_TENANT):
                            await self._evict_for(record, limit, now)
                except DormantError as exc:
                    log.warning("admission of session %s failed: %s", record.id, exc)
            await self._tell_positions()
        return admitted

    async def _tell_positions(self) -> None:
        queued = await self.store.list_queued()
        if len(queued) != self.queue_length:
            self.queue_length = len(queued)
            self._emit(QueueChanged(len(queued)))
        now_at = positions(queued)
        limits = {r.id: r.queue_limit for r in queued}
        for sid in set(self._told_positions) - set(now_at):
            del self._told_positions[sid]
            self._emit(Queued(sid, None, None))
        for sid, pos in now_at.items():
            if self._told_positions.get(sid) != pos:
                self._told_positions[sid] = pos
                self._emit(Queued(sid, pos, limits[sid]))

    async def queue_position(self, record: SessionRecord) -> int | None:
        """Where a queued session is in its queue (1-based); ``None`` when not queued."""
        if record.queued_at is None:
            return None
        return positions(await self.store.list_queued()).get(record.id)

    async def _requeue(self, record: SessionRecord, limit: str) -> None:
        async with self._session_lock(record.id):
            fresh = await self._fresh(record.id)
            if fresh is None or fresh.queued_at is None:
                return
            await self._save(fresh.replace(queue_limit=limit), [])
        log.warning(
            "admission: session %s (user %s) waits for limit %s",
            record.id,
            record.user_id,
            describe(self.limits, limit, record),
            extra={"session": record.id, "limit": limit},
        )

    async def _admit(self, record: SessionRecord) -> None:
        self._evicted_for.pop(record.id, None)
        waited = (self.clock.now() - (record.queued_at or self.clock.now())).total_seconds()
        reason = f"admitted after {waited:.1f}s in the {record.queue_limit} queue"
        log.info("admission: session %s %s", record.id, reason)
        if record.queue_kind == "wake":
            await self._start_wake(record, "admitted", reason)
            return
        async with self._session_lock(record.id):
            fresh = await self._fresh(record.id)
            if fresh is None or fresh.state is not State.CREATING or fresh.queued_at is None:
                return
            op_id = await self._intent(fresh, OperationKind.CREATE)
            await self._save(
                fresh.replace(queued_at=None, queue_kind=None, queue_limit=None),
                [NewEvent("decision", reason, "admitted", action="create")],
            )
        sid = record.id
        self._spawn_op(sid, op_id, lambda: self._run_start(sid, op_id, creating=True))

    async def _give_up(self, record: SessionRecord) -> None:
        """``queue_timeout`` passed: a queued create's session is deleted (nothing was made
        for it; a failed one would hold the user's name and count), a queued wake leaves its
        session asleep. Callers waiting for it to run are refused (503 with ``?wait=``)."""
        self._evicted_for.pop(record.id, None)
        limit = record.queue_limit or RUNNING
        message = (
            f"{QUEUE_TIMEOUT}: waited {self.limits.queue_timeout:g}s for limit "
            f"{describe(self.limits, limit, record)}"
        )
        log.warning(
            "admission: session %s (user %s) gave up its %s: %s",
            record.id,
            record.user_id,
            record.queue_kind,
            message,
            extra={"session": record.id, "limit": limit},
        )
        async with self._session_lock(record.id):
            fresh = await self._fresh(record.id)
            if fresh is None or fresh.queued_at is None:
                return
            cleared = fresh.replace(queued_at=None, queue_kind=None, queue_limit=None)
            if fresh.queue_kind == "wake" or fresh.state is not State.CREATING:
                self._waiters.refuse(fresh.id, State.RUNNING, fresh.state, message)
                await self._save(
                    cleared, [NewEvent("decision", message, "queue_timeout", action="wake")]
                )
                return
            self._waiters.refuse(fresh.id, State.RUNNING, State.DELETED, message)
            now = self.clock.now()
            await self._transition(
                cleared,
                State.DELETED,
                "queue_timeout",
                message,
                action="delete",
                error=message,
                port=None,
                deleted_at=now,
                end_reason=message,
            )
        self._forget(record.id)

    async def _evict_for(self, record: SessionRecord, limit: str, now: datetime) -> None:
        """``evict_idle``: put the idlest running session of the tenant to sleep to make room
        for ``record`` (one eviction per queued session at a time)."""
        pending = self._evicted_for.get(record.id)
        if pending is not None:
            held = await self.store.get_session(pending)
            if held is not None and held.state in (State.RUNNING, State.STOPPING):
                return  # its room is on the way
        running = await self.store.list_sessions(
            tenant=record.tenant, state=State.RUNNING, limit=10_000
        )
        active_since = now - timedelta(seconds=self.limits.active_within)
        candidates = []
        for r in running:
            fresh = await self._fresh(r.id) or r
            if fresh.busy_until is not None and fresh.busy_until > now:
                continue
            if fresh.keepalive_until is not None and fresh.keepalive_until > now:
                continue
            last = fresh.last_activity_at or fresh.state_since
            if last > active_since or r.id in self._inflight:
                continue
            candidates.append((last, r.id))
        if not candidates:
            return
        _, victim = min(candidates)
        reason = f"capacity: idlest of {len(running)} running"
        log.warning(
            "admission: session %s put to sleep for %s (limit %s): %s",
            victim,
            record.id,
            describe(self.limits, limit, record),
            reason,
            extra={"session": victim, "limit": limit},
        )
        self._evicted_for[record.id] = victim
        self._spawn_op(victim, None, lambda: self._run_stop(victim, "capacity", reason))
