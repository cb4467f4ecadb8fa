"""The operation runner: intent row, then the runtime call (retried), then the transition.

Only runtime calls can fail a session; a store error after a runtime step that worked is
waited out (patient store calls) and never turned into ``failed``.
"""

from __future__ import annotations

import logging

from dormant.engine.outcome import OperationKind, OperationStatus
from dormant.engine.templates import Template
from dormant.engine.writer import SessionWriter, merge_pending
from dormant.errors import (
    DormantError,
    TemporaryError,
)
from dormant.policy import (
    Action,
    ActivityKind,
    State,
    decide,
)
from dormant.runtimes import ContainerSpec
from dormant.store.records import SessionRecord

log = logging.getLogger("dormant.engine")

#: Error prefix of a session failed by a stop that did not work (not repaired by running it).
STOP_FAILED = "stop failed: "


class OperationRunner(SessionWriter):
    def _spec(self, record: SessionRecord) -> ContainerSpec:
        tpl = self.catalog.templates.get(record.template) or Template(name=record.template)
        return ContainerSpec(
            name=record.container_name,
            session_id=record.id,
            labels=dict(record.labels),
            port=record.port,
            command=list(tpl.command) if tpl.command else None,
            image=tpl.image,
            env=tpl.session_env(record.env),
            container_port=tpl.port,
            resources=tpl.resources,
            start_timeout=tpl.start_timeout,
            stop_timeout=tpl.stop_timeout,
            read_only=tpl.read_only,
            tmpfs=dict(tpl.tmpfs),
            cap_drop=tuple(tpl.cap_drop),
            no_new_privileges=tpl.no_new_privileges,
            network_mode=tpl.network_mode,
            user=tpl.user,
        )

    async def _run_start(
        self,
        sid: str,
        op_id: int | None,
        *,
        creating: bool,
        code: str = "create",
        reason: str = "created",
    ) -> None:
        """create (idempotent) + start, then ``running``; the intent row is written already.
        Only the runtime calls can fail the session: a store error after a runtime step that
        succeeded is waited out (patient store calls) and never turned into ``failed``."""
        async with self._session_lock(sid):
            record = await self.store.get_session(sid)
            if record is None or record.state not in (State.CREATING, State.STARTING):
                if op_id is not None:
                    await self._finish_op(op_id, OperationStatus.SUPERSEDED, 0, None)
                return
            runtime = self.runtime_of(record)
            spec = self._spec(record)
            attempts = 0
            try:
                async with self._slots:
                    state, attempts = await self._retry(
                        lambda: runtime.create(spec), self.settings.backoff
                    )
            except DormantError as exc:
                await self._fail(record, exc, op_id, attempts, started=False)
                return
            if record.state is State.CREATING:
                record = await self._transition(
                    record,
                    State.STARTING,
                    code,
                    "container created",
                    runtime_state={**record.runtime_state, **state},
                )
            ready = record
            try:
                async with self._slots:
                    started, n = await self._retry(
                        lambda: runtime.start(
                            ready.container_name, {**ready.runtime_state, **state}
                        ),
                        self.settings.backoff,
                    )
            except DormantError as exc:
                await self._fail(record, exc, op_id, attempts, started=True)
                return
            attempts += n
            record = await self._transition(
                record,
                State.RUNNING,
                code,
                reason,
                runtime_state=started,
                state_since=self.clock.now(),
                warned_at=None,
                error=None,
            )
            if op_id is not None:
                await self._finish_op(op_id, OperationStatus.DONE, attempts, None)

    async def _begin_wake(self, sid: str, code: str, reason: str, op_id: int | None = None) -> None:
        async with self._session_lock(sid):
            record = await self.store.get_session(sid)
            if record is not None and record.state is State.STARTING:
                pass  # a wake already moved it (e.g. this one, before a store error): start it
            elif record is None or record.state not in (State.SLEEPING, State.FAILED):
                if op_id is not None:
                    await self._finish_op(op_id, OperationStatus.SUPERSEDED, 0, None)
                return
            else:
                if op_id is None:
                    op_id = await self._intent(record, OperationKind.START)
                await self._transition(
                    record, State.STARTING, code, reason, action="wake", error=None
                )
        await self._run_start(sid, op_id, creating=False, code=code, reason=reason)

    async def _wake_on_activity(self, sid: str, kind: ActivityKind) -> None:
        record = await self.store.get_session(sid)
        if record is None or record.state is not State.SLEEPING:
            return
        if not self.policy_of(record).wake_on_activity:
            return
        await self._begin_wake(sid, "activity", f"woken by {kind.value} activity")

    async def _run_stop(self, sid: str, code: str, reason: str, op_id: int | None = None) -> None:
        async with self._session_lock(sid):
            record = await self.store.get_session(sid)
            if record is None or record.state not in (State.RUNNING, State.STOPPING):
                if op_id is not None:
                    await self._finish_op(op_id, OperationStatus.SUPERSEDED, 0, None)
                return
            if record.state is State.RUNNING:
                # Re-decide from fresh state: activity may have arrived since this was scheduled.
                if code not in ("manual", "reconcile") and not self._still_due(record, code):
                    return
                if op_id is None:
                    op_id = await self._intent(record, OperationKind.STOP)
                record = await self._transition(
                    record, State.STOPPING, code, reason, action=Action.SLEEP.value
                )
            elif op_id is None:
                op_id = await self._intent(record, OperationKind.STOP)
            runtime = self.runtime_of(record)
            try:
                async with self._slots:
                    state, attempts = await self._retry(
                        lambda: runtime.stop(record.container_name, dict(record.runtime_state)),
                        self.settings.backoff,
                    )
            except DormantError as exc:
                await self._fail(record, exc, op_id, 0, started=True, what=STOP_FAILED)
                return
            await self._transition(
                record,
                State.SLEEPING,
                code,
                reason,
                runtime_state=state,
                state_since=self.clock.now(),
                warned_at=None,
            )
            self._warned.discard(sid)
            await self._finish_op(op_id, OperationStatus.DONE, attempts, None)

    def _still_due(self, record: SessionRecord, code: str) -> bool:
        pending = self._pending.get(record.id)
        fresh = merge_pending(record, pending) if pending is not None else record
        decision = decide(fresh.view(), self.policy_of(fresh), self.clock.now())
        if decision.due(self.clock.now()) and decision.action is Action.SLEEP:
            return True
        log.info(
            "sleep skipped session=%s code=%s: no longer due (%s)", record.id, code, decision.reason
        )
        self._arm(record.id, decision.at)
        return False

    async def _run_delete(self, sid: str, code: str, reason: str, op_id: int | None = None) -> None:
        async with self._session_lock(sid):
            record = await self.store.get_session(sid)
            if record is None or record.state is State.DELETED:
                if op_id is not None:
                    await self._finish_op(op_id, OperationStatus.SUPERSEDED, 0, None)
                self._forget(sid)
                return
            if op_id is None:
                op_id = await self._intent(record, OperationKind.REMOVE)
            if record.state is not State.DELETING:
                record = await self._transition(
                    record, State.DELETING, code, reason, action=Action.DELETE.value
                )
            runtime = self.runtime_of(record)
            try:
                async with self._slots:
                    _, attempts = await self._retry(
                        lambda: runtime.remove(record.container_name, dict(record.runtime_state)),
                        self.settings.backoff,
                    )
            except DormantError as exc:
                # Never mark deleted what may still have a container: stay in ``deleting``
                # and let the reconciler finish it.
                await self._finish_op(op_id, OperationStatus.FAILED, 0, str(exc))
                log.warning("delete of %s failed, reconciler will retry: %s", sid, exc)
                return
            now = self.clock.now()
            await self._transition(
                record,
                State.DELETED,
                code,
                reason,
                port=None,
                deleted_at=now,
                end_reason=reason,
                connections=0,
                connections_by_instance={},
            )
            await self._finish_op(op_id, OperationStatus.DONE, attempts, None)
        self._forget(sid)

    async def _fail(
        self,
        record: SessionRecord,
        exc: DormantError,
        op_id: int | None,
        attempts: int,
        *,
        started: bool,
        what: str = "",
    ) -> None:
        """A runtime step failed for good: the session is ``failed`` with the error. A session
        is never ``failed`` while its container runs, so a container that may have started is
        stopped first (best effort; the reconciler repairs what this misses)."""
        message = str(exc)
        if isinstance(exc, TemporaryError):
            message = f"gave up after retries: {message}"
        message = what + message
        if started:
            runtime = self.runtime_of(record)
            try:
                await runtime.stop(record.container_name, dict(record.runtime_state))
            except DormantError as stop_exc:
                log.warning("could not stop %s after a failure: %s", record.id, stop_exc)
        fresh = await self.store.get_session(record.id) or record
        if fresh.state.live and fresh.state is not State.DELETING:
            await self._transition(fresh, State.FAILED, "error", message, error=message)
        log.warning("session %s failed: %s", record.id, message)
        if op_id is not None:
            await self._finish_op(op_id, OperationStatus.FAILED, attempts, message)
