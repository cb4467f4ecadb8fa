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
import hashlib
import json
import logging
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from dormant.engine.admission import Admission
from dormant.engine.core import EngineSettings, instance_ttl
from dormant.engine.ids import container_name, new_session_id
from dormant.engine.notify import Transitioned
from dormant.engine.outcome import OperationKind, Outcome, ends_wait
from dormant.engine.ports import PORT_ATTEMPTS, PortTaken
from dormant.engine.templates import Template
from dormant.engine.writer import with_count
from dormant.errors import (
    Conflict,
    DormantError,
    InvalidInput,
    NotFound,
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
from dormant.store import IdempotencyKey, KeyTaken, NameTaken
from dormant.store.records import InstanceRecord, NewEvent, SessionRecord

log = logging.getLogger("dormant.engine")

#: Stands in for the admission lock when no limits are set.
_NO_LOCK = contextlib.nullcontext()

#: A session name: 1-63 of a-z 0-9 . _ -, starting with a letter or digit.
SESSION_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
#: How long an ``Idempotency-Key`` answers with the session it made.
IDEMPOTENCY_TTL = timedelta(hours=24)
#: Rounds of "read the named session, else create it" before a get-or-create gives up.
ENSURE_ATTEMPTS = 5


class IdempotencyKeyReused(InvalidInput):
    """An ``Idempotency-Key`` sent again with a different request."""

    code = "idempotency_key_reused"


@dataclass(frozen=True, slots=True)
class Idempotency:
    """A create's ``Idempotency-Key`` and the hash of what was asked with it."""

    key: str
    body_hash: str

    @staticmethod
    def hash_of(request: dict[str, Any]) -> str:
        """A stable hash of a request body (keys sorted, no insignificant whitespace)."""
        canonical = json.dumps(request, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()


def check_name(name: str) -> str:
    if not SESSION_NAME.match(name):
        raise InvalidInput(
            f"session name {name[:80]!r} must be 1-63 of a-z 0-9 . _ -, "
            "starting with a letter or digit"
        )
    return name


class Engine(Admission):
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
            asyncio.create_task(self._idempotency_loop(), name="dormant-idempotency-purge"),
        ]
        if self.limits.configured:
            self._loops.append(
                asyncio.create_task(self._admission_loop(), name="dormant-admission")
            )

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

    async def purge_idempotency(self) -> int:
        """Forget idempotency keys older than :data:`IDEMPOTENCY_TTL`; returns how many."""
        return await self.store.purge_idempotency(self.clock.now() - IDEMPOTENCY_TTL)

    async def _idempotency_loop(self) -> None:
        while True:
            try:
                if n := await self.purge_idempotency():
                    log.info("purged %d idempotency key(s) older than 24 h", n)
            except DormantError as exc:
                log.warning("purge of idempotency keys failed: %s", exc)
            except Exception:
                log.exception("purge of idempotency keys failed")
            await asyncio.sleep(self.settings.purge_interval)

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
        name: str | None = None,
        idempotency: Idempotency | None = None,
        reason: str = "created",
    ) -> SessionRecord:
        """Create a session (named: :class:`~dormant.store.NameTaken` if a live session of
        the user and template has the name). With ``idempotency``, a key already used by this
        tenant within 24 h gives the session it made (the same request) or
        :class:`IdempotencyKeyReused` (another request); concurrent uses make one session.
        ``reason`` is its first timeline entry (who asked: :mod:`dormant.api.audit`)."""
        if idempotency is not None:
            made = await self._made_with(tenant, idempotency)
            if made is not None:
                return made
        if name is not None:
            check_name(name)
        tpl = self.catalog.template(template)
        tpl.check_request_env(env or {})  # nothing from a request reaches the host unasked
        settings = self.catalog.policy(tpl.policy)
        if policy:
            settings = settings.with_overrides(policy)
        runtime = self.runtimes.get(tpl.runtime)
        if runtime is None:
            raise InvalidInput(f"template {tpl.name!r} needs runtime {tpl.runtime!r}, not enabled")
        await self.ensure_deployment()
        key = (
            None
            if idempotency is None
            else IdempotencyKey(
                idempotency.key, idempotency.body_hash, self.clock.now() - IDEMPOTENCY_TTL
            )
        )
        for attempt in range(1, PORT_ATTEMPTS + 1):
            try:
                return await self._insert_session(
                    tpl, runtime, settings, tenant, user_id, labels, env, name, key, reason
                )
            except KeyTaken:
                # A concurrent request with the same key made its session first: answer that.
                assert idempotency is not None
                made = await self._made_with(tenant, idempotency)
                if made is not None:
                    return made
                if attempt == PORT_ATTEMPTS:
                    raise
            except PortTaken:
                # Another instance handed out the same port at the same moment: take another.
                if attempt == PORT_ATTEMPTS:
                    raise Conflict("no port could be taken for the session; try again") from None
        raise AssertionError("unreachable")

    async def _made_with(self, tenant: str, idempotency: Idempotency) -> SessionRecord | None:
        """The session this tenant's key made within 24 h (the same request), if any."""
        held = await self.store.get_idempotency(
            tenant, idempotency.key, self.clock.now() - IDEMPOTENCY_TTL
        )
        if held is None:
            return None
        if held.body_hash != idempotency.body_hash:
            raise IdempotencyKeyReused(
                f"Idempotency-Key {idempotency.key[:80]!r} was used for another request "
                f"(session {held.session_id}); use a new key for a different request"
            )
        made = await self.store.get_session(held.session_id)
        if made is None:
            raise NotFound(f"session {held.session_id} made with this Idempotency-Key is gone")
        self._state.setdefault(made.id, made.state)
        return made

    async def ensure_session(
        self,
        *,
        tenant: str,
        user_id: str,
        name: str,
        template: str | None = None,
        policy: dict[str, Any] | None = None,
        labels: dict[str, str] | None = None,
        env: dict[str, str] | None = None,
        wake: bool = False,
        reason: str = "created",
    ) -> tuple[SessionRecord, bool]:
        """Get or create the user's live session of this name and template: ``(session,
        created)``. The store's unique name decides between concurrent calls; the losers read
        and answer the winner. An existing session is returned as it is (the rest of the
        request only shapes a new one); with ``wake``, a sleeping or failed one is woken."""
        check_name(name)
        tpl = self.catalog.template(template)
        for _ in range(ENSURE_ATTEMPTS):
            found = await self.store.list_sessions(
                tenant=tenant, user_id=user_id, template=tpl.name, name=name, limit=1
            )
            if found:
                held = found[0]
                if held.state is State.DELETING or held.id in self._delete_requested:
                    raise Conflict(
                        f"session {held.id} named {name!r} is being deleted; "
                        "ask again once it is gone"
                    )
                try:
                    record = await self.get(held.id, tenant)
                except NotFound:
                    continue  # deleted meanwhile: the name is free again
                if wake and record.state in (State.SLEEPING, State.FAILED):
                    woken = "woken by get-or-create" if reason == "created" else f"woken: {reason}"
                    record = await self.wake(record.id, tenant, reason=woken)
                return record, False
            try:
                record = await self.create_session(
                    tenant=tenant,
                    user_id=user_id,
                    template=tpl.name,
                    policy=policy,
                    labels=labels,
                    env=env,
                    name=name,
                    reason=reason,
                )
            except NameTaken:
                continue  # another request made it first: read it
            return record, True
        raise Conflict(f"session {name!r} of user {user_id!r} changes too fast; try again")

    async def _insert_session(
        self,
        tpl: Template,
        runtime: Runtime,
        settings: PolicySettings,
        tenant: str,
        user_id: str,
        labels: dict[str, str] | None,
        env: dict[str, str] | None,
        session_name: str | None = None,
        idempotency: IdempotencyKey | None = None,
        reason: str = "created",
    ) -> SessionRecord:
        now = self.clock.now()
        sid = new_session_id(now)
        name = container_name(sid)
        port = await self.ports.allocate() if self._needs_host_port(tpl) else None
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
                name=session_name,
                labels={**(labels or {}), **self._system_labels(sid, user_id, tenant, tpl, now)},
                env=dict(env or {}),
                port=port,
            )
            record = self._with_decision(record, now)
            try:  # refuse what cannot work (bad values, unknown image) before anything is made
                await runtime.check(self._spec(record))
            except TemporaryError as exc:  # cannot tell now; the create operation will retry
                log.warning("could not check session %s before creating it: %s", sid, exc)
            event = NewEvent("transition", reason, "create", None, State.CREATING.value, "create")
            async with self._admission_lock if self.limits.configured else _NO_LOCK:
                queued = None
                if self.limits.configured:
                    queued = await self._admission_for_create(record)
                    if queued is not None:
                        record = self._with_decision(queued, now)
                intent = None if queued else (OperationKind.CREATE, self.settings.instance_id)
                try:
                    op_id = await self.store.insert_session(record, event, intent, idempotency)
                except (NameTaken, KeyTaken):
                    raise
                except Conflict as exc:
                    if port is not None and port in await self.store.used_ports():
                        raise PortTaken(str(exc)) from exc
                    raise
        finally:
            if port is not None:
                self.ports.settle(port)
        self._state[sid] = State.CREATING
        self._log_transition(record, None, State.CREATING, "create", reason)
        self._emit(Transitioned(record, None, State.CREATING, "create", reason))
        if queued is not None:
            self._queued_new(record)
            return record
        assert op_id is not None
        self._op_begun(op_id, sid, OperationKind.CREATE, now)
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
        if self.limits.configured:  # started now or queued (admission)
            return await self._admit_wake(record, code, reason)
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

    async def logout(
        self, user_id: str, tenant: str | None, reason: str = "user logged out"
    ) -> list[str]:
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
                NewEvent("decision", reason, "logout", action=Action.DELETE.value),
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
        self,
        session_id: str,
        until: datetime,
        tenant: str | None = None,
        busy: bool = False,
        by: str | None = None,
    ) -> SessionRecord:
        """Keep the session from an inactivity sleep until ``until`` (``busy``: the workload
        says it works); ``by`` names who asked, for the timeline."""
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
            NewEvent(
                "decision",
                f"{what} until {until.isoformat()}" + (f" requested by {by}" if by else ""),
                what,
            ),
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


__all__ = [
    "PORT_ATTEMPTS",
    "Engine",
    "EngineSettings",
    "Idempotency",
    "IdempotencyKeyReused",
    "PortTaken",
]
