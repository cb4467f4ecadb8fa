"""Recovery: this instance's heartbeat and the connections of dead instances, interrupted
operations resumed, containers that vanished or run when they should not, failed sessions
repaired, orphans removed, deleted sessions purged after retention.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from datetime import UTC, datetime, timedelta

from dormant.engine.connections import dead_instances, drop_gone, host_identity
from dormant.engine.core import instance_ttl
from dormant.engine.notify import OrphanRemoved
from dormant.engine.outcome import OperationKind
from dormant.engine.runner import STOP_FAILED
from dormant.engine.scheduler import Scheduler
from dormant.errors import (
    CapacityExhausted,
    DormantError,
    NotFound,
    RuntimeFailure,
)
from dormant.policy import (
    Action,
    State,
)
from dormant.runtimes import ContainerInfo, ContainerStatus
from dormant.store.records import InstanceRecord, NewEvent

log = logging.getLogger("dormant.engine")


class Recovery(Scheduler):
    async def heartbeat(self) -> None:
        now = self.clock.now()
        await self.store.heartbeat_instance(
            InstanceRecord(self.settings.instance_id, host_identity(), os.getpid(), now, now)
        )
        if self._healthy_since is None:
            self._healthy_since = self.clock.monotonic()
        live = await self.store.live_instances(since=now - instance_ttl(self.settings))
        self._live_instances = sorted({i.id for i in live} | {self.settings.instance_id})

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

    async def drop_dead_connections(self, *, include_self: bool = False) -> int:
        """Drop the connection counts held by instances that are gone (their clients went with
        them); a session left with none starts its grace period now. ``include_self`` at start:
        whatever this instance id held before a restart is stale too. Returns sessions changed."""
        ttl = instance_ttl(self.settings)
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
        if not include_self:
            # This instance is alive by definition, however stale its own row looks after the
            # event loop stalled (a reconnect storm): never drop its own counts.
            dead.discard(self.settings.instance_id)
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

    async def resume(self, sid: str, seen_version: int | None = None) -> bool:
        """Finish a session left in a transitional state (after a crash). ``seen_version`` is
        the version the reconciler judged: a session that changed since is left alone, as is
        one with an operation in flight here. Returns whether an operation was started."""
        if sid in self._inflight:
            return False
        record = await self.store.get_session(sid)
        if record is None or (seen_version is not None and record.version != seen_version):
            return False
        if record.queued_at is not None:
            return False  # waiting for capacity: admission starts it, nothing to finish
        reason = f"resumed after restart (was {record.state.value})"
        if record.state in (State.CREATING, State.STARTING):
            op_id = await self._intent(record, OperationKind.START)
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

    def resume_intent(self, session_id: str, kind: str, op_id: int, reason: str) -> None:
        """Carry out a sleep or wake accepted before a crash (reconciler)."""
        if kind in ("stop", "start"):
            self._op_begun(op_id, session_id, kind, None)
        if kind == "stop":
            self._spawn_op(
                session_id, op_id, lambda: self._run_stop(session_id, "reconcile", reason, op_id)
            )
        elif kind == "start":
            self._spawn_op(
                session_id, op_id, lambda: self._begin_wake(session_id, "reconcile", reason, op_id)
            )

    def resume_delete(self, session_id: str, op_id: int, reason: str) -> None:
        """Carry out a deletion acknowledged before a crash (reconciler)."""
        self._op_begun(op_id, session_id, "remove", None)
        self._delete_requested.add(session_id)
        self._spawn_op(
            session_id, op_id, lambda: self._run_delete(session_id, "reconcile", reason, op_id)
        )

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
                **self._stopped(record),
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

    async def restart(self, sid: str, reason: str) -> None:
        """Stop a running session and start it again (health checks that keep failing); the
        timeline says why. Each half is an operation with its intent row, like any other."""
        record = await self.store.get_session(sid)
        if record is None or record.state is not State.RUNNING:
            return
        op_id = await self._intent(record, OperationKind.STOP)
        await self._run_stop(sid, "health", reason, op_id)
        await self._begin_wake(sid, "health", "restarted after failed health checks")

    async def fail_running(self, sid: str, message: str) -> None:
        """Fail a running session for good (health checks failed through every restart):
        its container is stopped first; the error is ``message``."""
        async with self._session_lock(sid):
            record = await self.store.get_session(sid)
            if record is None or record.state is not State.RUNNING:
                return
            await self._fail(record, RuntimeFailure(message), None, 0, started=True)

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
            failed = record
            try:
                # Its port was released when it failed: it runs again on one it holds now (a
                # runtime restarts a container found on another port).
                record = await self._claim_port(
                    failed,
                    lambda changes: self._save(
                        failed.replace(**changes), [], from_state=State.FAILED
                    ),
                )
            except CapacityExhausted as exc:
                log.warning("failed session %s runs, no port to repair it on: %s", sid, exc)
                await self._retry(
                    lambda: runtime.stop(failed.container_name, dict(failed.runtime_state)),
                    self.settings.backoff,
                )
                return True
            claimed = record
            try:
                started = await runtime.start(
                    claimed.container_name, {**claimed.runtime_state, "port": claimed.port}
                )
            except DormantError as exc:
                log.warning("failed session %s runs but does not serve; stopping: %s", sid, exc)
                await self._retry(
                    lambda: runtime.stop(claimed.container_name, dict(claimed.runtime_state)),
                    self.settings.backoff,
                )
                if claimed.port != failed.port:  # taken for the repair: released again
                    await self._save(claimed.replace(port=None), [], from_state=State.FAILED)
                return True
            await self._transition(
                record,
                State.RUNNING,
                "reconcile",
                "container found running and serving; state repaired",
                runtime_state={k: v for k, v in started.items() if k != "port"},
                state_since=self.clock.now(),
                warned_at=None,
                error=None,
            )
            return True

    async def remove_container(self, runtime_name: str, info: ContainerInfo, reason: str) -> bool:
        """Remove a container no live session owns (reconciler). Looks once more first: a
        container already gone is not an orphan removed. Returns whether one was removed."""
        runtime = self.runtimes[runtime_name]
        if await runtime.inspect(info.name) is None:
            return False
        async with self._slots:
            await self._retry(lambda: runtime.remove(info.name, {}), self.settings.backoff)
        self._emit(OrphanRemoved(info.session_id or info.name, info.name, reason))
        log.warning("orphan removed name=%s session=%s: %s", info.name, info.session_id, reason)
        return True
