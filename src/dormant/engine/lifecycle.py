"""The engine: applies events to sessions, asks the policy what is next, runs operations.

Signals (API, gateway) call the public methods. Every change to a session is read fresh from the
store, changed, and written back with its timeline entries and its next decision, under a
per-session lock (one writer per session in this process; optimistic versions guard the rest).
Runtime calls happen only after an intent row is written, in background tasks, with retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from dormant.clock import Clock
from dormant.engine.connections import dead_instances, drop_gone, host_identity
from dormant.engine.deadlines import Deadlines
from dormant.engine.ids import container_name, new_session_id
from dormant.engine.notify import EngineEvent, Listener
from dormant.engine.ports import PortAllocator
from dormant.engine.retry import Backoff, call_with_retry
from dormant.engine.templates import Catalog, Template
from dormant.errors import (
    Conflict,
    DormantError,
    InvalidInput,
    NotFound,
    PermanentError,
    RuntimeUnavailable,
    TemporaryError,
)
from dormant.policy import (
    Action,
    ActivityKind,
    ActivityTimes,
    Category,
    Decision,
    Level,
    PolicySettings,
    State,
    apply_activity,
    decide,
    level,
)
from dormant.policy.adaptive import GapModel, Learner, effective_policy, learner_of, observe
from dormant.runtimes import ContainerInfo, ContainerSpec, ContainerStatus, Runtime
from dormant.runtimes.base import DEPLOYMENT_LABEL
from dormant.store.base import Store
from dormant.store.records import InstanceRecord, NewEvent, SessionRecord

log = logging.getLogger("dormant.engine")
T = TypeVar("T")

#: Activity stamped this far in the future is a client clock error, not a plan.
MAX_CLOCK_SKEW = timedelta(seconds=60)

#: Set inside background operations: their store calls wait out a store outage (up to
#: ``store_outage_patience``) instead of failing, because the runtime step they follow or precede
#: has been acknowledged. Request handlers leave it unset and fail fast (503).
#: Error prefix of a session failed by a stop that did not work (not repaired by running it).
STOP_FAILED = "stop failed: "

_PATIENT: contextvars.ContextVar[bool] = contextvars.ContextVar("dormant_patient", default=False)


@dataclass(slots=True)
class _SessionLock:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


@dataclass(frozen=True, slots=True)
class EngineSettings:
    instance_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    flush_interval: float = 1.0
    runtime_concurrency: int = 8
    #: Due sessions handled at once (each needs store connections).
    due_concurrency: int = 32
    backoff: Backoff = field(default_factory=Backoff)
    instance_heartbeat: float = 10.0
    #: After the retry budget is spent on an unreachable runtime (RuntimeUnavailable), keep
    #: waiting this long (probing at the backoff cap) before failing the operation.
    outage_patience: float = 0.0
    #: How long background operations wait for an unreachable store before giving up (the
    #: reconciler then finishes them); a store error never turns a runtime success into failure.
    store_outage_patience: float = 300.0
    #: Deleted sessions (rows, timelines, operations) are purged this long after deletion.
    retention: float = 30 * 86400.0
    purge_interval: float = 3600.0


class Engine:
    def __init__(
        self,
        store: Store,
        runtimes: dict[str, Runtime],
        catalog: Catalog,
        clock: Clock,
        ports: PortAllocator,
        settings: EngineSettings | None = None,
    ) -> None:
        self.store = store
        self.runtimes = runtimes
        self.catalog = catalog
        self.clock = clock
        self.ports = ports
        self.settings = settings or EngineSettings()
        self.deadlines = Deadlines()
        self.listeners: list[Listener] = []
        self._state: dict[str, State] = {}
        self._pending: dict[str, ActivityTimes] = {}
        self._warned: set[str] = set()
        self._locks: dict[str, _SessionLock] = {}
        self._due_slots = asyncio.Semaphore(self.settings.due_concurrency)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(self.settings.runtime_concurrency)
        self._delete_requested: set[str] = set()
        #: Operations running (or queued) in this process, by session: the reconciler leaves
        #: these sessions and their intent rows alone.
        self._inflight: dict[str, int] = {}
        self._inflight_ops: set[int] = set()
        self.deployment_id: str | None = None
        #: Since when this instance's heartbeats have worked (None after one failed): an
        #: instance that could not reach the store does not judge others' heartbeats stale.
        self._healthy_since: float | None = None
        self.connections_dropped = 0
        self.sessions_purged = 0
        self.events_applied = 0
        # adaptive policy: learned idle-gap models by key, and a learner per adaptive session
        self.models: dict[str, GapModel] = {}
        self._models_dirty: set[str] = set()
        self._learners: dict[str, Learner] = {}

    # lifecycle of the engine itself -------------------------------------------------------

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

    async def drain(self) -> None:
        """Wait for every operation in flight (tests and graceful shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def heartbeat(self) -> None:
        now = self.clock.now()
        await self.store.heartbeat_instance(
            InstanceRecord(self.settings.instance_id, host_identity(), os.getpid(), now, now)
        )
        if self._healthy_since is None:
            self._healthy_since = self.clock.monotonic()

    # reading ------------------------------------------------------------------------------

    def policy_of(self, record: SessionRecord) -> PolicySettings:
        if "adaptive" in record.policy:  # sleep_after learned (dormant.policy.adaptive)
            return self._adaptive_policy(record)
        return PolicySettings(**record.policy)

    def _adaptive_policy(self, record: SessionRecord) -> PolicySettings:
        if record.id not in self._learners and record.state.live:
            last = _merge(record, self._pending.get(record.id)).last_activity_at
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
        pending = self._pending.get(session_id)
        return _merge(record, pending) if pending is not None else record

    def describe(
        self, record: SessionRecord, now: datetime | None = None
    ) -> tuple[Level, Decision]:
        now = now or self.clock.now()
        policy = self.policy_of(record)
        view = record.view()
        return level(view, policy, now), decide(view, policy, now)

    def live_count(self) -> int:
        return len(self._state)

    def busy_sessions(self) -> set[str]:
        """Sessions with an operation in flight in this process (running or waiting)."""
        locked = {sid for sid, entry in self._locks.items() if entry.lock.locked()}
        return locked | set(self._inflight)

    def inflight_operations(self) -> set[int]:
        return set(self._inflight_ops)

    # signals ------------------------------------------------------------------------------

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
        now = self.clock.now()
        sid = new_session_id(now)
        name = container_name(sid)
        port = await self.ports.allocate()
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
            op_id = await self.store.insert_session(
                record, event, ("create", self.settings.instance_id)
            )
        finally:
            self.ports.settle(port)
        self._state[sid] = State.CREATING
        self._log_transition(record, None, State.CREATING, "create", "created")
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

    def record_activity(
        self,
        session_id: str,
        kind: ActivityKind,
        at: datetime | None = None,
        source: str = "api",
    ) -> None:
        """Apply activity in memory now; the store gets it at the next flush (coalesced)."""
        state = self._state.get(session_id)
        if state is None or session_id in self._delete_requested:
            raise NotFound(f"session {session_id} not found")
        now = self.clock.now()
        if at is None or at > now:
            if at is not None and at > now + MAX_CLOCK_SKEW:
                raise InvalidInput("activity 'at' is in the future; check the client's clock")
            at = now
        previous = self._pending.get(session_id, _EMPTY)
        self._pending[session_id] = apply_activity(previous, kind, at, source)
        if session_id in self._learners and kind.category is Category.MEANINGFUL:
            self._learn(session_id, at, now)
        self.events_applied += 1
        if kind.category is not Category.MEANINGFUL:
            return
        self._emit(EngineEvent("activity", session_id, None, source, kind.value))
        if session_id in self._warned:
            self._warned.discard(session_id)
            self.deadlines.set(session_id, now)  # re-decide at once: the warning is void
            self._wakeup.set()
            self._emit(EngineEvent("warning-cancelled", session_id, None, "activity", kind.value))
        if state is State.SLEEPING:
            self._spawn_op(session_id, None, lambda: self._wake_on_activity(session_id, kind))

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
        op_id = await self._intent(record, "stop")
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
        op_id = await self._intent(record, "start")
        self._spawn_op(session_id, op_id, lambda: self._begin_wake(session_id, code, reason, op_id))
        return record

    def resume_intent(self, session_id: str, kind: str, op_id: int, reason: str) -> None:
        """Carry out a sleep or wake accepted before a crash (reconciler)."""
        if kind == "stop":
            self._spawn_op(
                session_id, op_id, lambda: self._run_stop(session_id, "reconcile", reason, op_id)
            )
        elif kind == "start":
            self._spawn_op(
                session_id, op_id, lambda: self._begin_wake(session_id, "reconcile", reason, op_id)
            )

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
        op_id = await self._intent(record, "remove")
        self._delete_requested.add(session_id)
        self._spawn_op(session_id, op_id, lambda: self._run_delete(session_id, code, reason, op_id))

    def resume_delete(self, session_id: str, op_id: int, reason: str) -> None:
        """Carry out a deletion acknowledged before a crash (reconciler)."""
        self._delete_requested.add(session_id)
        self._spawn_op(
            session_id, op_id, lambda: self._run_delete(session_id, "reconcile", reason, op_id)
        )

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
            return _with_count(r, me, mine).replace(ever_connected=True)

        return await self._mutate(
            session_id, change, NewEvent("activity", "client connected", "connect")
        )

    async def disconnect(self, session_id: str, count: int | None = None) -> SessionRecord:
        """A real-time client left, for any reason; the last one starts the grace period."""
        now = self.clock.now()
        me = self.settings.instance_id

        def change(r: SessionRecord) -> SessionRecord:
            mine = r.connections_by_instance.get(me, 0) - 1 if count is None else count
            return _with_count(r, me, mine).replace(last_disconnect_at=now)

        return await self._mutate(
            session_id, change, NewEvent("activity", "client disconnected", "disconnect")
        )

    async def drop_dead_connections(self, *, include_self: bool = False) -> int:
        """Drop the connection counts held by instances that are gone (their clients went with
        them); a session left with none starts its grace period now. ``include_self`` at start:
        whatever this instance id held before a restart is stale too. Returns sessions changed."""
        ttl = _instance_ttl(self.settings)
        healthy = self._healthy_since
        if not include_self and (
            healthy is None or self.clock.monotonic() - healthy < ttl.total_seconds()
        ):
            return 0  # after our own trouble with the store, others' heartbeats prove nothing
        now = self.clock.now()
        known = await self.store.live_instances(since=datetime.min.replace(tzinfo=UTC))
        dead = dead_instances(
            known,
            now=now,
            ttl=ttl,
            me=self.settings.instance_id if include_self else None,
        )
        known_ids = {i.id for i in known} - dead
        if not include_self and not dead:
            return 0  # nobody died: no need to look at sessions
        rows = await self.store.sessions_with_connections()
        changed = 0
        for row in rows:
            gone = set(row.connections_by_instance) & dead
            if include_self:
                gone |= set(row.connections_by_instance) - known_ids
            untracked = row.connections != sum(row.connections_by_instance.values())
            if not gone and not (include_self and untracked):
                continue
            who = ", ".join(sorted(gone)) or "an earlier version"
            try:
                saved = await self._mutate(
                    row.id,
                    functools.partial(
                        drop_gone,
                        dead=dead,
                        unknown=known_ids if include_self else None,
                        now=now,
                    ),
                    NewEvent(
                        "activity",
                        f"connections held by instance {who} dropped: the instance is gone",
                        "connections-dropped",
                    ),
                )
            except NotFound:
                continue
            changed += 1
            self.connections_dropped += max(0, row.connections - saved.connections)
            log.warning(
                "session %s: dropped %d connection(s) of gone instance(s) %s",
                row.id,
                row.connections - saved.connections,
                who,
            )
        for instance_id in dead - {self.settings.instance_id}:
            await self.store.remove_instance(instance_id)  # handled; not looked at again
        return changed

    # scheduler ----------------------------------------------------------------------------

    async def tick(self) -> int:
        """Handle everything due now; returns how many sessions were due."""
        now = self.clock.now()
        due = self.deadlines.pop_due(now)
        for sid, at in due:
            self._emit(EngineEvent("due", sid, None, seconds=(now - at).total_seconds()))
            self._spawn_op(sid, None, functools.partial(self._due_guarded, sid))
        return len(due)

    async def _due_guarded(self, sid: str, attempt: int = 1) -> None:
        """Bounded concurrency, and a deadline is never dropped: if handling fails (store busy,
        runtime down) it is re-armed with backoff and tried again."""
        try:
            async with self._due_slots:
                await self._due(sid)
        except DormantError as exc:
            delay = self.settings.backoff.delay(min(attempt, 10))
            log.warning("due session %s not handled (%s); again in %.2fs", sid, exc, delay)
            if sid in self._state:
                self._arm(sid, self.clock.now() + timedelta(seconds=delay))

    async def _schedule_loop(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # the scheduler must outlive any one bad session
                log.exception("scheduler tick failed")
            next_at = self.deadlines.next_at()
            self._wakeup.clear()
            wait = None if next_at is None else (next_at - self.clock.now()).total_seconds()
            if wait is not None and wait <= 0:
                await asyncio.sleep(0)
                continue
            waiter = asyncio.create_task(self._wakeup.wait())
            sleeper = asyncio.create_task(self.clock.sleep(wait if wait is not None else 3600))
            try:
                await asyncio.wait({waiter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
                sleeper.cancel()

    async def _due(self, sid: str) -> None:
        async with self._session_lock(sid):
            record = await self._fresh(sid)
            if record is None or not record.state.live:
                self._forget(sid)
                return
            now = self.clock.now()
            policy = self.policy_of(record)
            decision = decide(record.view(), policy, now)
            if not decision.due(now):
                await self._persist_decision(record, decision)
                return
            log.info(
                "decision session=%s action=%s code=%s reason=%s",
                sid,
                decision.action.value,
                decision.code,
                decision.reason,
                extra={"session": sid, "action": decision.action.value, "code": decision.code},
            )
            if decision.action is Action.WARN:
                updated = await self._save(
                    record.replace(warned_at=now),
                    [
                        NewEvent(
                            "decision", decision.reason, decision.code, action=Action.WARN.value
                        )
                    ],
                )
                self._warned.add(sid)
                self._emit(
                    EngineEvent(
                        "warning", sid, updated, decision.code, decision.reason, decision=decision
                    )
                )
                return
        if decision.action is Action.SLEEP:
            await self._run_stop(sid, decision.code, decision.reason)
        elif decision.action is Action.DELETE:
            await self._run_delete(sid, decision.code, decision.reason)

    async def _persist_decision(self, record: SessionRecord, decision: Decision) -> None:
        if record.next_action != decision.action.value or record.next_action_at != decision.at:
            await self._save(record, [])
        else:
            self._arm(record.id, decision.at)

    def _arm(self, sid: str, at: datetime | None) -> None:
        """Set a session's deadline; wake the scheduler if it is now the earliest."""
        if self.deadlines.set(sid, at):
            self._wakeup.set()

    # activity coalescing ------------------------------------------------------------------

    async def flush(self) -> int:
        """Write buffered activity: one write per session, ``max(old, new)``."""
        await self.save_models()
        if not self._pending:
            return 0
        batch, self._pending = self._pending, {}
        try:
            await self.store.flush_activity(batch)
        except BaseException:  # also cancellation at shutdown: keep them for the next flush
            for sid, times in batch.items():
                self._pending[sid] = _merge_times(times, self._pending.get(sid))
            raise
        return len(batch)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.flush_interval)
            try:
                await self.flush()
            except Exception:
                log.exception("activity flush failed; will retry")

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.instance_heartbeat)
            try:
                await self.heartbeat()
                await self.drop_dead_connections()
            except DormantError as exc:
                self._healthy_since = None
                log.warning("instance heartbeat failed: %s", exc)
            except Exception:
                log.exception("instance heartbeat failed")

    async def purge(self) -> int:
        """Remove deleted sessions older than ``retention`` (rows, timelines, operations).
        Level-triggered on ``deleted_at``, so nothing is lost across restarts."""
        before = self.clock.now() - timedelta(seconds=self.settings.retention)
        total = 0
        while True:
            n = await self.store.purge_deleted(before, 500)
            total += n
            if n < 500:
                break
            await asyncio.sleep(0)
        if total:
            self.sessions_purged += total
            log.info("purged %d deleted session(s) older than %s", total, before.isoformat())
        return total

    async def _purge_loop(self) -> None:
        while True:
            try:
                await self.purge()
            except DormantError as exc:
                log.warning("purge of deleted sessions failed: %s", exc)
            except Exception:
                log.exception("purge of deleted sessions failed")
            await asyncio.sleep(self.settings.purge_interval)

    # operations ---------------------------------------------------------------------------

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
                    await self._finish_op(op_id, "superseded", 0, None)
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
                await self._finish_op(op_id, "done", attempts, None)

    async def _begin_wake(self, sid: str, code: str, reason: str, op_id: int | None = None) -> None:
        async with self._session_lock(sid):
            record = await self.store.get_session(sid)
            if record is not None and record.state is State.STARTING:
                pass  # a wake already moved it (e.g. this one, before a store error): start it
            elif record is None or record.state not in (State.SLEEPING, State.FAILED):
                if op_id is not None:
                    await self._finish_op(op_id, "superseded", 0, None)
                return
            else:
                if op_id is None:
                    op_id = await self._intent(record, "start")
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
                    await self._finish_op(op_id, "superseded", 0, None)
                return
            if record.state is State.RUNNING:
                # Re-decide from fresh state: activity may have arrived since this was scheduled.
                if code not in ("manual", "reconcile") and not self._still_due(record, code):
                    return
                if op_id is None:
                    op_id = await self._intent(record, "stop")
                record = await self._transition(
                    record, State.STOPPING, code, reason, action=Action.SLEEP.value
                )
            elif op_id is None:
                op_id = await self._intent(record, "stop")
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
            await self._finish_op(op_id, "done", attempts, None)

    def _still_due(self, record: SessionRecord, code: str) -> bool:
        pending = self._pending.get(record.id)
        fresh = _merge(record, pending) if pending is not None else record
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
                    await self._finish_op(op_id, "superseded", 0, None)
                self._forget(sid)
                return
            if op_id is None:
                op_id = await self._intent(record, "remove")
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
                await self._finish_op(op_id, "failed", 0, str(exc))
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
            await self._finish_op(op_id, "done", attempts, None)
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
            await self._finish_op(op_id, "failed", attempts, message)

    async def remove_container(self, runtime_name: str, info: ContainerInfo, reason: str) -> bool:
        """Remove a container no live session owns (reconciler). Looks once more first: a
        container already gone is not an orphan removed. Returns whether one was removed."""
        runtime = self.runtimes[runtime_name]
        if await runtime.inspect(info.name) is None:
            return False
        async with self._slots:
            await self._retry(lambda: runtime.remove(info.name, {}), self.settings.backoff)
        self._emit(
            EngineEvent("orphan-removed", info.session_id or info.name, None, "orphan", reason)
        )
        log.warning("orphan removed name=%s session=%s: %s", info.name, info.session_id, reason)
        return True

    async def resume(self, sid: str, seen_version: int | None = None) -> bool:
        """Finish a session left in a transitional state (after a crash). ``seen_version`` is
        the version the reconciler judged: a session that changed since is left alone, as is
        one with an operation in flight here. Returns whether an operation was started."""
        if sid in self._inflight:
            return False
        record = await self.store.get_session(sid)
        if record is None or (seen_version is not None and record.version != seen_version):
            return False
        reason = f"resumed after restart (was {record.state.value})"
        if record.state in (State.CREATING, State.STARTING):
            op_id = await self._intent(record, "start")
            creating = record.state is State.CREATING
            self._spawn_op(
                sid,
                op_id,
                lambda: self._run_start(
                    sid, op_id, creating=creating, code="reconcile", reason=reason
                ),
            )
        elif record.state is State.STOPPING:
            self._spawn_op(sid, None, lambda: self._run_stop(sid, "reconcile", reason))
        elif record.state is State.DELETING:
            self._delete_requested.add(sid)
            self._spawn_op(sid, None, lambda: self._run_delete(sid, "reconcile", reason))
        else:
            return False
        return True

    async def mark_vanished(self, sid: str, status: str) -> bool:
        """A running session's container is gone or stopped behind dormant's back: it is
        asleep now (wake brings it back), and the policy takes it from there. Returns whether
        the session was changed (the container is looked at again first)."""
        async with self._session_lock(sid):
            record = await self.store.get_session(sid)
            if record is None or record.state is not State.RUNNING:
                return False
            # The plan was made from a listing that may predate a start: look again.
            info = await self.runtime_of(record).inspect(record.container_name)
            if info is not None and info.status is ContainerStatus.RUNNING:
                return False
            await self._transition(
                record,
                State.SLEEPING,
                "container_exited",
                f"container {status} unexpectedly; marked sleeping",
                state_since=self.clock.now(),
                action=Action.SLEEP.value,
            )
            return True

    async def stop_stray(self, sid: str) -> bool:
        """A sleeping session's container runs: stop it again."""
        async with self._session_lock(sid):
            record = await self.store.get_session(sid)
            if record is None or record.state is not State.SLEEPING:
                return False
            runtime = self.runtime_of(record)
            await self._retry(
                lambda: runtime.stop(record.container_name, dict(record.runtime_state)),
                self.settings.backoff,
            )
            return True

    async def repair_failed(self, sid: str) -> bool:
        """A ``failed`` session whose container runs (a store error once hid a start that
        worked): if it serves, it is ``running`` again; if not, it is stopped."""
        async with self._session_lock(sid):
            record = await self.store.get_session(sid)
            if record is None or record.state is not State.FAILED:
                return False
            if (record.error or "").startswith(STOP_FAILED):
                # Its container cannot be stopped: running it again would only fail again.
                log.warning(
                    "session %s: container runs but cannot be stopped: %s", sid, record.error
                )
                return False
            runtime = self.runtime_of(record)
            info = await runtime.inspect(record.container_name)
            if info is None or info.status is not ContainerStatus.RUNNING:
                return False
            try:
                started = await runtime.start(record.container_name, dict(record.runtime_state))
            except DormantError as exc:
                log.warning("failed session %s runs but does not serve; stopping: %s", sid, exc)
                await self._retry(
                    lambda: runtime.stop(record.container_name, dict(record.runtime_state)),
                    self.settings.backoff,
                )
                return True
            await self._transition(
                record,
                State.RUNNING,
                "reconcile",
                "container found running and serving; state repaired",
                runtime_state=started,
                state_since=self.clock.now(),
                warned_at=None,
                error=None,
            )
            return True

    # plumbing -----------------------------------------------------------------------------

    async def _retry(self, fn: Callable[[], Awaitable[T]], backoff: Backoff) -> tuple[T, int]:
        """``call_with_retry``; while the runtime is unreachable, wait for it (up to
        ``outage_patience``) rather than fail: an engine outage delays operations."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.outage_patience
        spent = 0
        while True:
            try:
                result, attempts = await call_with_retry(fn, backoff)
                return result, spent + attempts
            except RuntimeUnavailable as exc:
                spent += backoff.attempts
                if loop.time() + backoff.cap > deadline:
                    raise
                log.warning("runtime unreachable, operation waits: %s", exc)
                await asyncio.sleep(backoff.cap)

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

    async def _intent(self, record: SessionRecord, kind: str) -> int:
        return await self._patiently(
            lambda: self.store.insert_operation(
                record.id,
                kind,
                record.container_name,
                record.labels,
                self.settings.instance_id,
                self.clock.now(),
            )
        )

    async def _finish_op(self, op_id: int, status: str, attempts: int, error: str | None) -> None:
        now = self.clock.now()
        await self._patiently(
            lambda: self.store.finish_operation(op_id, status, attempts, error, now)
        )

    async def _patiently(self, fn: Callable[[], Awaitable[T]]) -> T:
        """A store call; inside a background operation it waits out a store outage (up to
        ``store_outage_patience``) rather than fail what the runtime already did."""
        if not _PATIENT.get():
            return await fn()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.store_outage_patience
        attempt = 0
        while True:
            try:
                return await fn()
            except TemporaryError as exc:
                attempt += 1
                delay = self.settings.backoff.delay(min(attempt, 10))
                if loop.time() + delay > deadline:
                    raise
                if attempt == 1:
                    log.warning("store unavailable, operation waits for it: %s", exc)
                await asyncio.sleep(delay)

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
        self._log_transition(saved, record.state, to, code, reason)
        self._emit(
            EngineEvent("transition", saved.id, saved, code, reason, record.state.value, to.value)
        )
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
        for _ in range(5):
            try:
                saved = await self._patiently(
                    functools.partial(self.store.update_session, candidate, version, events, now)
                )
            except Conflict:
                current = await self._patiently(lambda: self.store.get_session(record.id))
                if current is None:
                    raise
                if from_state is not None and current.state is not from_state:
                    raise Conflict(
                        f"session {record.id} is {current.state.value} now, not "
                        f"{from_state.value}; not moved to {record.state.value}"
                    ) from None
                candidate = self._with_decision(
                    _reapply(current, candidate, self.settings.instance_id), now
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
        if not record.state.live:
            return record.replace(next_action=None, next_action_at=None, next_action_reason=None)
        decision = decide(record.view(), self.policy_of(record), now)
        return record.replace(
            next_action=decision.action.value,
            next_action_at=decision.at,
            next_action_reason=decision.reason,
        )

    @contextlib.asynccontextmanager
    async def _session_lock(self, sid: str) -> AsyncIterator[None]:
        """One writer per session in this process; the lock lives only while someone uses it
        (keeping one per session ever decided would cost memory for nothing)."""
        entry = self._locks.get(sid)
        if entry is None:
            entry = self._locks[sid] = _SessionLock()
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0 and self._locks.get(sid) is entry:
                del self._locks[sid]

    def _forget(self, sid: str) -> None:
        self._state.pop(sid, None)
        self._learners.pop(sid, None)
        self._pending.pop(sid, None)
        self._warned.discard(sid)
        self._delete_requested.discard(sid)
        self.deadlines.discard(sid)

    def _spawn_op(self, sid: str, op_id: int | None, make: Callable[[], Awaitable[None]]) -> None:
        """Run an operation in the background, marked in flight (the reconciler leaves it
        alone) from now until it ends. Its store calls are patient; if it still meets a store
        error (a read before any runtime step, or an outage beyond patience) it runs again from
        fresh state, which is safe because every runtime call is idempotent."""
        self._inflight[sid] = self._inflight.get(sid, 0) + 1
        if op_id is not None:
            self._inflight_ops.add(op_id)

        async def run() -> None:
            _PATIENT.set(True)
            loop = asyncio.get_running_loop()
            deadline: float | None = None  # patience counts from the first store error
            attempt = 0
            try:
                while True:
                    try:
                        await make()
                        return
                    except TemporaryError as exc:
                        if deadline is None:
                            deadline = loop.time() + self.settings.store_outage_patience
                        attempt += 1
                        delay = self.settings.backoff.delay(min(attempt, 10))
                        if loop.time() + delay > deadline:
                            log.error(
                                "operation on %s gave up on the store (%s); the reconciler "
                                "will finish it",
                                sid,
                                exc,
                            )
                            return
                        log.warning("operation on %s meets a store error, again: %s", sid, exc)
                        await asyncio.sleep(delay)
            finally:
                left = self._inflight.get(sid, 1) - 1
                if left <= 0:
                    self._inflight.pop(sid, None)
                else:
                    self._inflight[sid] = left
                if op_id is not None:
                    self._inflight_ops.discard(op_id)

        self._spawn(run())

    def _spawn(self, coro: Awaitable[None]) -> None:
        async def guarded() -> None:
            try:
                await coro
            except Exception:
                log.exception("session operation failed")

        task = asyncio.create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _emit(self, event: EngineEvent) -> None:
        # Listeners (the gateway) answer clients: what they start must fail fast, not inherit
        # an operation's patience with the store.
        token = _PATIENT.set(False)
        try:
            for listener in self.listeners:
                try:
                    listener(event)
                except Exception:
                    log.exception("engine listener failed")
        finally:
            _PATIENT.reset(token)

    def _log_transition(
        self, record: SessionRecord, old: State | None, new: State, code: str, reason: str
    ) -> None:
        log.info(
            "transition session=%s %s -> %s code=%s reason=%s",
            record.id,
            old.value if old else "-",
            new.value,
            code,
            reason,
            extra={
                "session": record.id,
                "from": old.value if old else None,
                "to": new.value,
                "code": code,
            },
        )


_EMPTY = ActivityTimes()


def _merge_times(a: ActivityTimes, b: ActivityTimes | None) -> ActivityTimes:
    if b is None:
        return a
    newer = b if (b.last_activity_at or _MIN) > (a.last_activity_at or _MIN) else a
    seen = max((t for t in (a.last_seen_at, b.last_seen_at) if t is not None), default=None)
    return ActivityTimes(
        newer.last_activity_at, newer.last_activity_kind, newer.last_activity_source, seen
    )


def _merge(record: SessionRecord, times: ActivityTimes | None) -> SessionRecord:
    if times is None:
        return record
    merged = _merge_times(
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


def _reapply(current: SessionRecord, ours: SessionRecord, me: str) -> SessionRecord:
    """Our write on top of a row that changed by an activity flush or by another instance's
    connection count: their activity is merged (max) and their counts are kept; only this
    instance's own count comes from our write."""
    merged = _merge(
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


_MIN = datetime.min.replace(tzinfo=UTC)


def _with_count(record: SessionRecord, instance_id: str, count: int) -> SessionRecord:
    """This instance's live count of a session's connections; the total is the sum."""
    by = dict(record.connections_by_instance)
    if count > 0:
        by[instance_id] = count
    else:
        by.pop(instance_id, None)
    return record.replace(connections_by_instance=by, connections=sum(by.values()))


def _instance_ttl(settings: EngineSettings) -> timedelta:
    """An instance that has not beaten its heart for this long is gone."""
    return timedelta(seconds=settings.instance_heartbeat * 3)
