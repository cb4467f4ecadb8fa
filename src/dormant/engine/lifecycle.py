"""The engine: applies events to sessions, asks the policy what is next, runs operations.

Signals (API, gateway) call the public methods. Every change to a session is read fresh from the
store, changed, and written back with its timeline entries and its next decision, under a
per-session lock (one writer per session in this process; optimistic versions guard the rest).
Runtime calls happen only after an intent row is written, in background tasks, with retries.
The stages it is built from are listed in :mod:`dormant.engine.core`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
from datetime import datetime, timedelta
from typing import Any

from dormant.engine.core import EngineSettings, instance_ttl
from dormant.engine.ids import container_name, new_session_id
from dormant.engine.notify import Transitioned
from dormant.engine.outcome import OperationKind, Outcome, ends_wait
from dormant.engine.ports import PORT_ATTEMPTS, PortTaken
from dormant.engine.reads import ReadSide
from dormant.engine.templates import Template
from dormant.engine.writer import with_count
from dormant.errors import (
    Conflict,
    DormantError,
    InvalidInput,
    TemporaryError,
)
from dormant.policy import (
    Action,
    PolicySettings,
    State,
)
from dormant.policy.adaptive import GapModel
from dormant.runtimes import Runtime
from dormant.runtimes.base import DEPLOYMENT_LABEL
from dormant.store.records import InstanceRecord, NewEvent, SessionRecord

log = logging.getLogger("dormant.engine")


class Engine(ReadSide):
    async def ensure_deployment(self) -> str:
        """This deployment's id (made and stored on the first start); stamped on containers."""
        if self.deployment_id is None:
            self.deployment_id = await self.store.deployment_id(
                secrets.token_hex(8), self.clock.now()
            )
        return self.deployment_id

    async def load(self) -> int:
        """Resume every live session's deadline from the store; returns how many. Connection
        counts held by this instance's dead predecessors (and by this id before a restart) are
        dropped: their clients went with them, and their grace periods start now."""
        await self.ensure_deployment()
        await self.drop_dead_connections(include_self=True)
        stored = await self.store.load_adaptive()
        self.models.update({key: GapModel.from_json(doc) for key, doc in stored.items()})
        rows = await self.store.live_schedule()
        now = self.clock.now()
        for sid, state, next_at in rows:
            self._state[sid] = State(state)
            # A session without a stored deadline is re-decided at once.
            self.deadlines.set(sid, next_at or now)
        return len(rows)

    async def start(self) -> None:
        await self.heartbeat()
        self._loops = [
            asyncio.create_task(self._schedule_loop(), name="dormant-scheduler"),
            asyncio.create_task(self._flush_loop(), name="dormant-flusher"),
            asyncio.create_task(self._heartbeat_loop(), name="dormant-heartbeat"),
            asyncio.create_task(self._purge_loop(), name="dormant-purge"),
        ]

    async def stop(self) -> None:
        # The flusher is cancelled too; an interrupted flush keeps its batch (see flush) and
        # the final flush below writes it.
        for task in self._loops:
            task.cancel()
        for task in self._loops:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._loops = []
        await self.drain()
        await self.flush()
        with contextlib.suppress(DormantError, OSError):
            await self.store.remove_instance(self.settings.instance_id)

    def live_count(self) -> int:
        return len(self._state)

    def busy_sessions(self) -> set[str]:
        """Sessions with an operation in flight in this process (running or waiting)."""
        locked = {sid for sid, entry in self._locks.items() if entry.lock.locked()}
        return locked | set(self._inflight)

    def inflight_operations(self) -> set[int]:
        return set(self._inflight_ops)

    async def create_session(
        self,
        *,
        tenant: str,
        user_id: str,
        template: str | None = None,
        policy: dict[str, Any] | None = None,
        labels: dict[str, str] | None = None,
        env: dict[str, str] | None = None,
    ) -> SessionRecord:
        tpl = self.catalog.template(template)
        tpl.check_request_env(env or {})  # nothing from a request reaches the host unasked
        settings = self.catalog.policy(tpl.policy)
        if policy:
            settings = settings.with_overrides(policy)
        runtime = self.runtimes.get(tpl.runtime)
        if runtime is None:
            raise InvalidInput(f"template {tpl.name!r} needs runtime {tpl.runtime!r}, not enabled")
        await self.ensure_deployment()
        for attempt in range(1, PORT_ATTEMPTS + 1):
            try:
                return await self._insert_session(
                    tpl, runtime, settings, tenant, user_id, labels, env
                )
            except PortTaken:
                # Another instance handed out the same port at the same moment: take another.
                if attempt == PORT_ATTEMPTS:
                    raise Conflict("no port could be taken for the session; try again") from None
        raise AssertionError("unreachable")

    async def _insert_session(
        self,
        tpl: Template,
        runtime: Runtime,
        settings: PolicySettings,
        tenant: str,
        user_id: str,
        labels: dict[str, str] | None,
        env: dict[str, str] | None,
    ) -> SessionRecord:
        now = self.clock.now()
        sid = new_session_id(now)
        name = container_name(sid)
        port = await self.ports.allocate() if tpl.needs_host_port else None
        try:
            record = SessionRecord(
                id=sid,
                tenant=tenant,
                user_id=user_id,
                template=tpl.name,
                runtime=tpl.runtime,
                policy_name=tpl.policy,
                policy=settings.to_dict(),
                state=State.CREATING,
                state_since=now,
                created_at=now,
                container_name=name,
                labels={**(labels or {}), **self._system_labels(sid, user_id, tenant, tpl, now)},
                env=dict(env or {}),
                port=port,
            )
            record = self._with_decision(record, now)
            try:  # refuse what cannot work (bad values, unknown image) before anything is made
                await runtime.check(self._spec(record))
            except TemporaryError as exc:  # cannot tell now; the create operation will retry
                log.warning("could not check session %s before creating it: %s", sid, exc)
            event = NewEvent(
                "transition", "created", "create", None, State.CREATING.value, "create"
            )
            try:
                op_id = await self.store.insert_session(
                    record, event, (OperationKind.CREATE, self.settings.instance_id)
                )
            except Conflict as exc:
                if port is not None and port in await self.store.used_ports():
                    raise PortTaken(str(exc)) from exc
                raise
        finally:
            if port is not None:
                self.ports.settle(port)
        self._state[sid] = State.CREATING
        self._log_transition(record, None, State.CREATING, "create", "created")
        self._emit(Transitioned(record, None, State.CREATING, "create", "created"))
        assert op_id is not None
        self._spawn_op(sid, op_id, lambda: self._run_start(sid, op_id, creating=True))
        return record

    def _system_labels(
        self, sid: str, user_id: str, tenant: str, tpl: Template, now: datetime
    ) -> dict[str, str]:
        return {
            "dormant.managed": "true",
            "dormant.session": sid,
            "dormant.user": user_id,
            "dormant.tenant": tenant,
            "dormant.template": tpl.name,
            "dormant.instance": self.settings.instance_id,
            DEPLOYMENT_LABEL: self.deployment_id or "",
            "dormant.created": now.isoformat(),
        }

    async def sleep(
        self,
        session_id: str,
        tenant: str | None = None,
        code: str = "manual",
        reason: str = "requested via API",
    ) -> SessionRecord:
        record = await self.get(session_id, tenant)
        if record.state in (State.SLEEPING, State.STOPPING):
            return record
        if record.state is not State.RUNNING:
            raise Conflict(
                f"session {session_id} is {record.state.value}; only a running "
                "session can be put to sleep"
            )
        # Like a delete, an accepted sleep is written down before the 202 (the intent row), so a
        # crash does not lose it: the reconciler carries out pending intents after a restart.
        op_id = await self._intent(record, OperationKind.STOP)
        self._spawn_op(session_id, op_id, lambda: self._run_stop(session_id, code, reason, op_id))
        return record

    async def wake(
        self,
        session_id: str,
        tenant: str | None = None,
        code: str = "manual",
        reason: str = "requested via API",
    ) -> SessionRecord:
        record = await self.get(session_id, tenant)
        if record.state in (State.RUNNING, State.STARTING, State.CREATING):
            return record
        if record.state is State.STOPPING:
            raise Conflict(f"session {session_id} is stopping; wake it once it sleeps")
        op_id = await self._intent(record, OperationKind.START)
        self._spawn_op(session_id, op_id, lambda: self._begin_wake(session_id, code, reason, op_id))
        return record

    async def delete(
        self,
        session_id: str,
        tenant: str | None = None,
        code: str = "manual",
        reason: str = "requested via API",
    ) -> None:
        record = await self.get(session_id, tenant)
        # The acknowledgement must survive a crash: the intent row is written before the 202,
        # even when another operation holds the session and the removal has to wait for it.
        op_id = await self._intent(record, OperationKind.REMOVE)
        self._delete_requested.add(session_id)
        self._spawn_op(session_id, op_id, lambda: self._run_delete(session_id, code, reason, op_id))

    async def logout(self, user_id: str, tenant: str | None) -> list[str]:
        """Delete every live session of a user now (through the policy's logout rule)."""
        ids: list[str] = []
        after: str | None = None
        while True:
            page = await self.store.list_sessions(
                tenant=tenant, user_id=user_id, after_id=after, limit=500
            )
            if not page:
                break
            ids += [r.id for r in page if r.state not in (State.DELETING, State.DELETED)]
            after = page[-1].id
        now = self.clock.now()
        for sid in ids:
            await self._mutate(
                sid,
                lambda r: r.replace(logged_out_at=now),
                NewEvent("decision", "user logged out", "logout", action=Action.DELETE.value),
            )
            self._delete_requested.add(sid)
            self._spawn_op(sid, None, functools.partial(self._due_guarded, sid))
        return ids

    def instance_lease(self) -> timedelta:
        """How long an instance counts as live after its last heartbeat."""
        return instance_ttl(self.settings)

    async def live_instances(self) -> list[InstanceRecord]:
        """The instances whose lease has not run out (this one included once it has beaten)."""
        since = self.clock.now() - self.instance_lease()
        return sorted(await self.store.live_instances(since=since), key=lambda i: i.id)

    async def wait_for(self, session_id: str, wanted: State, timeout: float) -> Outcome | None:
        """The outcome once the session reaches ``wanted`` (or fails, or is deleted); ``None``
        if it is still on its way after ``timeout`` seconds. Callers waiting on the same
        session share one future; the store is read again every second, so a transition made
        by another instance is seen too."""
        future = self._waiters.future(session_id, wanted)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            record = await self.store.get_session(session_id)
            if record is None:
                return Outcome(session_id, wanted, State.DELETED)
            if ends_wait(wanted, record.state):
                return Outcome(session_id, wanted, record.state, record.error)
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                return await asyncio.wait_for(asyncio.shield(future), min(remaining, 1.0))

    async def keepalive(
        self, session_id: str, until: datetime, tenant: str | None = None, busy: bool = False
    ) -> SessionRecord:
        record = await self.get(session_id, tenant)
        policy = self.policy_of(record)
        now = self.clock.now()
        bound = policy.max_busy if busy else policy.max_keepalive
        what = "busy" if busy else "keepalive"
        if until <= now:
            raise InvalidInput(f"{what} 'until' must be in the future")
        if (until - now).total_seconds() > bound:
            raise InvalidInput(
                f"{what} 'until' may be at most {bound:g}s ahead (policy.max_{what})"
            )
        field_name = "busy_until" if busy else "keepalive_until"
        updated = await self._mutate(
            session_id,
            lambda r: r.replace(**{field_name: until}),
            NewEvent("decision", f"{what} until {until.isoformat()}", what),
        )
        return updated

    async def connect(self, session_id: str, count: int | None = None) -> SessionRecord:
        """A real-time client attached (hook for the gateway). ``count``, when given, is the
        caller's live count for the session (it corrects a count left stale by a crash)."""
        await self.get(session_id)
        me = self.settings.instance_id

        def change(r: SessionRecord) -> SessionRecord:
            mine = r.connections_by_instance.get(me, 0) + 1 if count is None else count
            return with_count(r, me, mine).replace(ever_connected=True)

        return await self._mutate(
            session_id, change, NewEvent("activity", "client connected", "connect")
        )

    async def disconnect(self, session_id: str, count: int | None = None) -> SessionRecord:
        """A real-time client left, for any reason; the last one starts the grace period."""
        now = self.clock.now()
        me = self.settings.instance_id

        def change(r: SessionRecord) -> SessionRecord:
            mine = r.connections_by_instance.get(me, 0) - 1 if count is None else count
            return with_count(r, me, mine).replace(last_disconnect_at=now)

        return await self._mutate(
            session_id, change, NewEvent("activity", "client disconnected", "disconnect")
        )


__all__ = ["PORT_ATTEMPTS", "Engine", "EngineSettings", "PortTaken"]
