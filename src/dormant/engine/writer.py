"""The session writer: fresh reads (store plus unflushed activity), versioned writes with the
next decision and timeline entries, transitions, and the policy each session is judged by.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import datetime
from typing import Any

from dormant.engine.core import _FENCE, EngineCore
from dormant.engine.notify import OperationFinished, Transitioned
from dormant.engine.outcome import OperationKind, OperationStatus
from dormant.errors import (
    Conflict,
    DormantError,
    NotFound,
    PermanentError,
)
from dormant.policy import (
    ActivityTimes,
    Decision,
    Level,
    PolicySettings,
    State,
    decide,
    level,
)
from dormant.policy.activity import merge_times
from dormant.policy.adaptive import effective_policy, learner_of, observe
from dormant.runtimes import Runtime
from dormant.store.records import NewEvent, SessionRecord


class SessionWriter(EngineCore):
    def _unflushed(self, session_id: str) -> ActivityTimes | None:
        """Activity this instance has seen that the store's row may not show yet: the buffer,
        and the batch a flush is writing (taken out of the buffer before its write is done)."""
        pending = self._pending.get(session_id)
        flushing = self._flushing.get(session_id)
        return pending if flushing is None else merge_times(flushing, pending)

    def policy_of(self, record: SessionRecord) -> PolicySettings:
        if "adaptive" in record.policy:  # sleep_after learned (dormant.policy.adaptive)
            return self._adaptive_policy(record)
        return PolicySettings(**record.policy)

    def _adaptive_policy(self, record: SessionRecord) -> PolicySettings:
        if record.id not in self._learners and record.state.live:
            last = merge_pending(record, self._unflushed(record.id)).last_activity_at
            learner = learner_of(
                record.policy,
                record.tenant,
                record.user_id,
                record.template,
                last or record.created_at,
            )
            if learner is not None:
                self._learners[record.id] = learner
        return effective_policy(
            record.policy,
            record.view(),
            self.models.get,
            tenant=record.tenant,
            user_id=record.user_id,
            template=record.template,
            learner=self._learners.get(record.id),
        )

    def _learn(self, sid: str, at: datetime, now: datetime) -> None:
        """Meaningful activity of an adaptive session ends an idle gap: learn from it."""
        learner, changed, sooner = observe(self._learners[sid], at, self.models)
        self._learners[sid] = learner
        self.models.update(changed)
        self._models_dirty.update(changed)
        if sooner:  # the session's timeout got shorter: decide its deadline again now
            self.deadlines.set(sid, now)
            self._wakeup.set()

    async def save_models(self) -> int:
        """Persist the models that learned since the last call (:meth:`flush` calls it)."""
        if not self._models_dirty:
            return 0
        dirty, self._models_dirty = self._models_dirty, set()
        try:
            await self.store.save_adaptive(
                {key: self.models[key].to_json() for key in dirty}, self.clock.now()
            )
        except DormantError:
            self._models_dirty |= dirty
            raise
        return len(dirty)

    def runtime_of(self, record: SessionRecord) -> Runtime:
        try:
            return self.runtimes[record.runtime]
        except KeyError:
            raise PermanentError(f"runtime {record.runtime!r} is not configured") from None

    async def get(self, session_id: str, tenant: str | None = None) -> SessionRecord:
        """The session as it is now (store plus activity not yet flushed); NotFound if it is
        deleted, being deleted, or belongs to another tenant."""
        record = await self._fresh(session_id)
        if (
            record is None
            or (tenant is not None and record.tenant != tenant)
            or record.state in (State.DELETED, State.DELETING)
            or session_id in self._delete_requested
        ):
            raise NotFound(f"session {session_id} not found")
        # Known here from now on, also when another instance created it (its activity, sent
        # through this instance, is then accepted), with the state just read.
        self._state[session_id] = record.state
        return record

    async def get_any(self, session_id: str, tenant: str | None = None) -> SessionRecord:
        """Like :meth:`get` but also deleted sessions (for timelines)."""
        record = await self._fresh(session_id)
        if record is None or (tenant is not None and record.tenant != tenant):
            raise NotFound(f"session {session_id} not found")
        return record

    async def _fresh(self, session_id: str) -> SessionRecord | None:
        record = await self.store.get_session(session_id)
        if record is None:
            return None
        return merge_pending(record, self._unflushed(session_id))

    def describe(
        self, record: SessionRecord, now: datetime | None = None
    ) -> tuple[Level, Decision]:
        now = now or self.clock.now()
        policy = self.policy_of(record)
        view = record.view()
        return level(view, policy, now), decide(view, policy, now)

    async def _intent(self, record: SessionRecord, kind: OperationKind) -> int:
        now = self.clock.now()
        op_id = await self._patiently(
            lambda: self.store.insert_operation(
                record.id,
                kind,
                record.container_name,
                record.labels,
                self.settings.instance_id,
                now,
            )
        )
        self._op_begun(op_id, record.id, kind, now)
        return op_id

    def _op_begun(self, op_id: int, sid: str, kind: str, at: datetime | None) -> None:
        """Remember an operation this process carries out (``at`` None: begun elsewhere or
        before a restart, so its duration is unknown)."""
        self._ops_begun.setdefault(op_id, (sid, str(kind), at))

    async def _finish_op(
        self, op_id: int, status: OperationStatus, attempts: int, error: str | None
    ) -> None:
        now = self.clock.now()
        await self._patiently(
            lambda: self.store.finish_operation(op_id, status, attempts, error, now)
        )
        begun = self._ops_begun.pop(op_id, None)
        if begun is not None:
            sid, kind, at = begun
            seconds = None if at is None else max(0.0, (now - at).total_seconds())
            self._emit(OperationFinished(sid, kind, status.value, seconds))

    async def _transition(
        self,
        record: SessionRecord,
        to: State,
        code: str,
        reason: str,
        action: str | None = None,
        **changes: Any,
    ) -> SessionRecord:
        now = self.clock.now()
        changes.setdefault("state_since", now)
        updated = record.replace(state=to, **changes)
        event = NewEvent("transition", reason, code, record.state.value, to.value, action)
        saved = await self._save(updated, [event], expected=record.version, from_state=record.state)
        self._state[record.id] = to
        self._waiters.settle(saved.id, to, saved.error)
        self._log_transition(saved, record.state, to, code, reason)
        self._emit(Transitioned(saved, record.state, to, code, reason))
        return saved

    async def _save(
        self,
        record: SessionRecord,
        events: list[NewEvent],
        expected: int | None = None,
        from_state: State | None = None,
    ) -> SessionRecord:
        """Write with the next decision; on a version conflict (a concurrent activity flush,
        another instance's connection count) re-read, re-apply our fields and retry. A
        transition (``from_state``) whose session left that state meanwhile is a Conflict: a
        stale write never undoes another writer's transition."""
        now = self.clock.now()
        version = record.version if expected is None else expected
        candidate = self._with_decision(record, now)
        held = _FENCE.get()
        fence = held[1] if held is not None and held[0] == record.id else None
        for _ in range(5):
            try:
                saved = await self._patiently(
                    functools.partial(
                        self.store.update_session, candidate, version, events, now, fence
                    )
                )
            except Conflict:
                current = await self._patiently(lambda: self.store.get_session(record.id))
                if current is None:
                    raise
                if fence is not None and current.fence != fence:
                    raise Conflict(
                        f"session {record.id}: this instance's claim was taken over; "
                        "another instance decides it now"
                    ) from None
                if from_state is not None and current.state is not from_state:
                    raise Conflict(
                        f"session {record.id} is {current.state.value} now, not "
                        f"{from_state.value}; not moved to {record.state.value}"
                    ) from None
                candidate = self._with_decision(
                    reapply(current, candidate, self.settings.instance_id), now
                )
                version = current.version
                continue
            self.deadlines.set(saved.id, saved.next_action_at if saved.state.live else None)
            self._wakeup.set()
            return saved
        raise Conflict(f"session {record.id} keeps changing; try again")

    async def _mutate(
        self, sid: str, change: Callable[[SessionRecord], SessionRecord], event: NewEvent
    ) -> SessionRecord:
        async with self._session_lock(sid):
            record = await self._fresh(sid)
            if record is None or record.state in (State.DELETED, State.DELETING):
                raise NotFound(f"session {sid} not found")
            return await self._save(change(record), [event])

    def _with_decision(self, record: SessionRecord, now: datetime) -> SessionRecord:
        if not record.state.live or record.queued_at is not None:
            # A queued session waits for capacity: the policy does not act on it meanwhile.
            return record.replace(next_action=None, next_action_at=None, next_action_reason=None)
        decision = decide(record.view(), self.policy_of(record), now)
        return record.replace(
            next_action=decision.action.value,
            next_action_at=decision.at,
            next_action_reason=decision.reason,
        )

    def _forget(self, sid: str) -> None:
        self._state.pop(sid, None)
        self._learners.pop(sid, None)
        self._pending.pop(sid, None)
        self._sampled.pop(sid, None)
        self._warned.discard(sid)
        self._delete_requested.discard(sid)
        self.deadlines.discard(sid)


def merge_pending(record: SessionRecord, times: ActivityTimes | None) -> SessionRecord:
    if times is None:
        return record
    merged = merge_times(
        ActivityTimes(
            record.last_activity_at,
            record.last_activity_kind,
            record.last_activity_source,
            record.last_seen_at,
        ),
        times,
    )
    return record.replace(
        last_activity_at=merged.last_activity_at,
        last_activity_kind=merged.last_activity_kind,
        last_activity_source=merged.last_activity_source,
        last_seen_at=merged.last_seen_at,
    )


def reapply(current: SessionRecord, ours: SessionRecord, me: str) -> SessionRecord:
    """Our write on top of a row that changed by an activity flush or by another instance's
    connection count: their activity is merged (max) and their counts are kept; only this
    instance's own count comes from our write."""
    merged = merge_pending(
        ours,
        ActivityTimes(
            current.last_activity_at,
            current.last_activity_kind,
            current.last_activity_source,
            current.last_seen_at,
        ),
    )
    if not ours.state.live:
        return merged  # deleted: no counts to keep
    by = {k: v for k, v in current.connections_by_instance.items() if k != me}
    if ours.connections_by_instance.get(me, 0) > 0:
        by[me] = ours.connections_by_instance[me]
    return merged.replace(connections_by_instance=by, connections=sum(by.values()))


def with_count(record: SessionRecord, instance_id: str, count: int) -> SessionRecord:
    """This instance's live count of a session's connections; the total is the sum."""
    by = dict(record.connections_by_instance)
    if count > 0:
        by[instance_id] = count
    else:
        by.pop(instance_id, None)
    return record.replace(connections_by_instance=by, connections=sum(by.values()))
