"""The operation runner: intent row, then the runtime call (retried), then the transition.

Only runtime calls can fail a session; a store error after a runtime step that worked is
waited out (patient store calls) and never turned into ``failed``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from dormant.engine.outcome import OperationKind, OperationStatus
from dormant.engine.ports import PORT_ATTEMPTS
from dormant.engine.probes import ProbeKind, wait_ready
from dormant.engine.templates import Template
from dormant.engine.volumes import session_volumes
from dormant.engine.writer import SessionWriter, merge_pending
from dormant.errors import (
    CapacityExhausted,
    Conflict,
    DormantError,
    RuntimeFailure,
    TemporaryError,
)
from dormant.policy import (
    Action,
    ActivityKind,
    State,
    decide,
)
from dormant.runtimes import ContainerSpec, Endpoint
from dormant.store.records import NewEvent, SessionRecord

log = logging.getLogger("dormant.engine")

#: Error prefix of a session failed by a stop that did not work (not repaired by running it).
STOP_FAILED = "stop failed: "


#: Keys of a runtime state that describe one start only: the host port dormant passed to
#: ``start`` (the record's ``port`` is the truth) and the endpoint it reported.
_PER_START = ("port", "endpoint")


def _kept(state: dict[str, Any], *drop: str) -> dict[str, Any]:
    return {k: v for k, v in state.items() if k not in drop}


def recreated_note(spec: ContainerSpec) -> str:
    """The timeline's words for a container that a wake had to make again."""
    if spec.volumes:
        names = ", ".join(v.name for v in spec.volumes)
        return f"re-created: container was missing; volumes kept ({names})"
    return "re-created: container was missing; anonymous data lost"


class OperationRunner(SessionWriter):
    def _template(self, record: SessionRecord) -> Template:
        return self.catalog.templates.get(record.template) or Template(name=record.template)

    def _needs_host_port(self, tpl: Template) -> bool:
        return tpl.needs_host_port(self.runtimes.get(tpl.runtime))

    def _releases_port(self, record: SessionRecord) -> bool:
        """Whether the session's host port goes back to the pool while it sleeps or has failed:
        it has one and its runtime binds the port at start (``Runtime.ports_follow_start``)."""
        runtime = self.runtimes.get(record.runtime)
        return record.port is not None and runtime is not None and runtime.ports_follow_start

    def _stopped(self, record: SessionRecord) -> dict[str, Any]:
        """Field changes of a transition to ``sleeping`` or ``failed`` (nothing runs): no
        endpoint, and the port released when the runtime takes a new one at every start."""
        changes: dict[str, Any] = {"runtime_state": _kept(record.runtime_state, *_PER_START)}
        if self._releases_port(record):
            changes["port"] = None
        return changes

    async def _claim_port(
        self,
        record: SessionRecord,
        write: Callable[[dict[str, Any]], Awaitable[SessionRecord]],
    ) -> SessionRecord:
        """``write(changes)``, with ``{"port": p}`` in ``changes`` (a free host port) when the
        session needs a host port and has none (it was released while it slept). A port that
        another instance's session took meanwhile (the unique index refuses the write) is
        given up for another one. Raises ``CapacityExhausted`` when no port is free."""
        if record.port is not None or not self._needs_host_port(self._template(record)):
            return await write({})
        for attempt in range(1, PORT_ATTEMPTS + 1):
            port = await self.ports.allocate()
            try:
                return await write({"port": port})
            except Conflict:
                if port not in await self._patiently(self.store.used_ports):
                    raise
                log.info("port %d was taken by another instance meanwhile; another one", port)
                if attempt == PORT_ATTEMPTS:
                    raise Conflict("no port could be taken for the session; try again") from None
            finally:
                self.ports.settle(port)
        raise AssertionError("unreachable")

    async def _refuse_wake(self, record: SessionRecord, op_id: int, exc: DormantError) -> None:
        """No host port is free: the session stays as it is (asleep, intact), the operation
        fails with the reason, and so does every wait for it to run."""
        message = f"cannot wake: {exc}"
        log.warning("session %s: %s", record.id, message)
        await self._save(record, [NewEvent("decision", message, "no_port", action="wake")])
        await self._finish_op(op_id, OperationStatus.FAILED, 0, message)
        self._waiters.refuse(record.id, State.RUNNING, record.state, message)

    def _spec(self, record: SessionRecord) -> ContainerSpec:
        tpl = self._template(record)
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
            network=tpl.network,
            user=tpl.user,
            volumes=session_volumes(tpl, record),
            binds=tuple(tpl.binds),
            workdir=tpl.workdir,
            shm_size=tpl.shm_size,
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
            if record.port is None and self._needs_host_port(self._template(record)):
                # Its port was released (it slept or failed) and no wake took one: take one now.
                current = record
                try:
                    record = await self._claim_port(
                        current, lambda changes: self._save(current.replace(**changes), [])
                    )
                except CapacityExhausted as exc:
                    await self._fail(record, exc, op_id, 0, started=False)
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
            # Whether create made a new container (not kept: it describes this call only).
            made = bool(state.pop("made", False))
            if made and record.state is State.STARTING:
                # A wake (or a resumed create) found no container: never re-created silently.
                note = recreated_note(spec)
                log.warning("session %s: %s", record.id, note)
                record = await self._save(record, [NewEvent("operation", note, "re-created")])
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
                            ready.container_name,
                            {**ready.runtime_state, **state, "port": ready.port},
                        ),
                        self.settings.backoff,
                    )
            except DormantError as exc:
                await self._fail(record, exc, op_id, attempts, started=True)
                return
            attempts += n
            tpl = self.catalog.templates.get(record.template)
            if tpl is not None and tpl.ready.kind is not ProbeKind.TCP:
                # Listening is not serving: ``running`` once the template's probe passes.
                result = await wait_ready(
                    tpl.ready,
                    Endpoint.from_state(started),
                    runtime,
                    record.container_name,
                    tpl.start_timeout,
                )
                if not result.ok:
                    message = f"not ready within {tpl.start_timeout:g}s: {result.detail}"
                    await self._fail(record, RuntimeFailure(message), op_id, attempts, started=True)
                    return
            record = await self._transition(
                record,
                State.RUNNING,
                code,
                reason,
                runtime_state=_kept(started, "port"),
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
                asleep = record
                try:  # a released port is taken again with the transition
                    await self._claim_port(
                        asleep,
                        lambda changes: self._transition(
                            asleep,
                            State.STARTING,
                            code,
                            reason,
                            action="wake",
                            error=None,
                            **changes,
                        ),
                    )
                except CapacityExhausted as exc:
                    await self._refuse_wake(asleep, op_id, exc)
                    return
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
                if code not in (
                    "manual",
                    "reconcile",
                    "health",
                    "capacity",
                ) and not self._still_due(record, code):
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
                **{**self._stopped(record), "runtime_state": _kept(state, *_PER_START)},
                state_since=self.clock.now(),
                warned_at=None,
            )
            self._warned.discard(sid)
            await self._finish_op(op_id, OperationStatus.DONE, attempts, None)

    def _still_due(self, record: SessionRecord, code: str) -> bool:
        fresh = merge_pending(record, self._unflushed(record.id))
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
                    record,
                    State.DELETING,
                    code,
                    reason,
                    action=Action.DELETE.value,
                    queued_at=None,  # no longer waiting for admission, if it was
                    queue_kind=None,
                    queue_limit=None,
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
        stopped = not started
        if started:
            runtime = self.runtime_of(record)
            try:
                await runtime.stop(record.container_name, dict(record.runtime_state))
                stopped = True
            except DormantError as stop_exc:
                log.warning("could not stop %s after a failure: %s", record.id, stop_exc)
        fresh = await self.store.get_session(record.id) or record
        if fresh.state.live and fresh.state is not State.DELETING:
            # Its port is released unless its container may still hold it.
            changes = self._stopped(fresh) if stopped else {}
            await self._transition(fresh, State.FAILED, "error", message, error=message, **changes)
        log.warning("session %s failed: %s", record.id, message)
        if op_id is not None:
            await self._finish_op(op_id, OperationStatus.FAILED, attempts, message)
