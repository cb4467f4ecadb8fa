"""Level-triggered reconciliation: the runtime's labelled containers against the store's sessions.

``plan`` is pure: given both views it lists the steps that make them agree. ``Reconciler.run``
gathers the views, plans, and applies the steps through the engine (or only prints them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from dormant.engine import Engine
from dormant.engine.outcome import OperationKind
from dormant.errors import DormantError
from dormant.policy import State
from dormant.runtimes import ContainerInfo, ContainerStatus, Runtime
from dormant.runtimes.base import CREATED_LABEL, DEPLOYMENT_LABEL, INSTANCE_LABEL
from dormant.store.records import OperationRecord, SessionRecord

log = logging.getLogger("dormant.reconciler")

#: A container is judged an orphan only this long after it was made and after its session was
#: deleted: what happened moments ago may not be visible in both views yet.
SETTLE = timedelta(seconds=30)


@dataclass(frozen=True, slots=True)
class Step:
    """``kind``: ``remove-orphan``, ``mark-vanished``, ``stop-stray``, ``repair-failed``,
    ``resume``, ``delete``, ``sleep``, ``wake`` (requests accepted before a crash),
    ``close-operation``. ``version`` is the session's version the step was judged on."""

    kind: str
    target: str
    reason: str
    runtime: str = ""
    container: ContainerInfo | None = None
    operation_id: int | None = None
    version: int | None = None

    def describe(self) -> str:
        return f"{self.kind:16} {self.target:40} {self.reason}"


@dataclass(frozen=True, slots=True)
class Plan:
    """The steps, and what the sweep saw but would not judge: containers of other deployments
    (``foreign``), containers from before deployment ids whose session is not here
    (``unadopted``), and runtimes whose listing failed (``skipped``: unknown is not absent)."""

    steps: list[Step]
    foreign: int = 0
    unadopted: int = 0
    skipped: tuple[str, ...] = ()

    def summary(self) -> str:
        parts = [f"ignored {self.foreign} container(s) of other deployments"]
        if self.unadopted:
            parts.append(f"left {self.unadopted} unlabelled container(s) with no session here")
        if self.skipped:
            parts.append(f"skipped runtime(s) {', '.join(self.skipped)}: listing failed")
        return "; ".join(parts)


def _created(info: ContainerInfo) -> datetime | None:
    raw = info.labels.get(CREATED_LABEL)
    if raw:
        try:
            return datetime.fromisoformat(raw)
        except ValueError:
            return info.created_at
    return info.created_at


def plan(
    containers: dict[str, list[ContainerInfo]],
    sessions: dict[str, SessionRecord],
    operations: Iterable[OperationRecord],
    *,
    busy: set[str],
    instance_id: str,
    live_instances: set[str],
    sweep_started: datetime,
    deployment_id: str | None = None,
    ended: Mapping[str, SessionRecord | None] | None = None,
    settle: timedelta = SETTLE,
    skipped: Iterable[str] = (),
    inflight_ops: set[int] | None = None,
) -> Plan:
    """What to do so that containers and sessions agree.

    ``containers`` is per runtime name, listed *before* ``sessions`` (every live session) and
    ``operations`` were read, starting at ``sweep_started``. ``busy`` are sessions with an
    operation in flight in this process (left alone). ``ended`` holds, for the session ids of
    containers with no live session, the session's row as read after the listing (deleted) or
    ``None`` (no row). A container is an orphan only when that read is positive and settled:
    the session is gone, or deleted for longer than ``settle``, and the container was made
    before ``sweep_started - settle``. Nothing that changed after the listing began is judged
    by it. Only containers labelled with ``deployment_id`` are this deployment's."""
    steps: list[Step] = []
    seen: set[str] = set()
    foreign = unadopted = 0
    skipped = tuple(skipped)
    ended = ended or {}
    settled = sweep_started - settle
    for runtime, infos in containers.items():
        for info in infos:
            sid = info.session_id
            record = sessions.get(sid) if sid else None
            owner = info.labels.get(DEPLOYMENT_LABEL)
            if deployment_id is not None and owner and owner != deployment_id:
                foreign += 1  # another deployment's: never touched, whatever its scope
                continue
            mine = record is not None and record.container_name == info.name
            if deployment_id is not None and not owner and not mine:
                unadopted += 1  # from before deployment ids, not ours to judge
                continue
            if mine:
                assert record is not None
                seen.add(record.id)
                if sid in busy or record.state_since > sweep_started:
                    continue  # changed after the listing began: the listing says nothing
                if record.state is State.SLEEPING and info.status is ContainerStatus.RUNNING:
                    steps.append(
                        Step(
                            "stop-stray",
                            record.id,
                            "session sleeps but its container runs",
                            runtime,
                            info,
                            version=record.version,
                        )
                    )
                elif record.state is State.RUNNING and info.status is not ContainerStatus.RUNNING:
                    steps.append(
                        Step(
                            "mark-vanished",
                            record.id,
                            f"container is {info.status.value}",
                            runtime,
                            info,
                            version=record.version,
                        )
                    )
                elif record.state is State.FAILED and info.status is ContainerStatus.RUNNING:
                    steps.append(
                        Step(
                            "repair-failed",
                            record.id,
                            "session failed but its container runs",
                            runtime,
                            info,
                            version=record.version,
                        )
                    )
                continue
            if sid in busy:
                continue
            inst = info.labels.get(INSTANCE_LABEL)
            if inst and inst != instance_id and inst in live_instances:
                continue  # another live instance converges its own containers
            created = _created(info)
            if created is None or created > settled:
                continue  # made after (or just before) this sweep began: not judged by it
            if record is not None:
                why = "session has another container"
            elif sid and sid in ended:
                gone = ended[sid]
                if gone is not None and (gone.deleted_at or gone.state_since) > settled:
                    continue  # deleted moments ago: its own delete is removing it
                why = "session deleted" if gone is not None else "no session"
            elif sid:
                continue  # its session was not read after the listing: unknown, not absent
            else:
                why = "no session label"
            steps.append(
                Step("remove-orphan", info.name, f"orphan: {why} (session {sid})", runtime, info)
            )
    operations = list(operations)
    # A live replica's (or a running server's, seen from `dormant reconcile`) operations.
    held = {
        op.session_id
        for op in operations
        if op.instance_id != instance_id and op.instance_id in live_instances
    }
    for sid, record in sessions.items():
        if sid in busy or sid in held or record.state_since > sweep_started:
            continue
        if record.state.transitional and record.queued_at is None:
            # (a queued create is ``creating`` with nothing started: admission's, not ours)
            steps.append(
                Step(
                    "resume",
                    sid,
                    f"left {record.state.value} by an interrupted operation",
                    version=record.version,
                )
            )
        elif record.state is State.RUNNING and sid not in seen and record.runtime not in skipped:
            steps.append(Step("mark-vanished", sid, "container is missing", version=record.version))
    for op in operations:
        if op.session_id in busy or op.id in (inflight_ops or set()):
            continue
        if op.created_at > sweep_started:
            continue  # started after the listing began
        if op.instance_id != instance_id and op.instance_id in live_instances:
            continue  # a live replica's operation is its own business
        record = sessions.get(op.session_id)
        if (
            op.kind == OperationKind.REMOVE
            and record is not None
            and record.state is not State.DELETING
        ):
            steps.append(
                Step(
                    "delete",
                    op.session_id,
                    f"deletion acknowledged (operation {op.id}) but interrupted by a crash",
                    operation_id=op.id,
                )
            )
            continue
        if record is not None and (
            (op.kind == OperationKind.STOP and record.state is State.RUNNING)
            or (op.kind == OperationKind.START and record.state in (State.SLEEPING, State.FAILED))
        ):
            verb = "sleep" if op.kind == OperationKind.STOP else "wake"
            steps.append(
                Step(
                    verb,
                    op.session_id,
                    f"{verb} accepted (operation {op.id}) but interrupted by a crash",
                    operation_id=op.id,
                )
            )
            continue
        steps.append(
            Step(
                "close-operation",
                op.session_id,
                f"{op.kind} operation {op.id} interrupted; session converged instead",
                operation_id=op.id,
            )
        )
    return Plan(steps, foreign, unadopted, skipped)


class Reconciler:
    """Sweeps at start, every ``interval``, soon after a runtime's change event, and when a
    runtime becomes reachable again. Events only wake it: every sweep compares full views.
    A burst of events costs one sweep (``debounce``), and sweeps are ``min_gap`` apart."""

    def __init__(
        self,
        engine: Engine,
        *,
        debounce: float = 0.5,
        min_gap: float = 2.0,
        settle: timedelta = SETTLE,
    ) -> None:
        self.engine = engine
        self.settle = settle
        self.last_plan = Plan([])
        self.skipped_reads = 0
        self.orphans_removed = 0
        self.last_run: datetime | None = None
        self.debounce = debounce
        self.min_gap = min_gap
        self.wakeups = 0
        self._poked = asyncio.Event()
        self._sweeping = asyncio.Lock()

    def poke(self, why: str) -> None:
        """Sweep soon (a runtime event, a runtime reachable again)."""
        log.debug("reconcile poked: %s", why)
        self._poked.set()

    async def gather_plan(self) -> Plan:
        """List every runtime's containers first, then read the store: a session or operation
        that changes after the listing began is never judged by it."""
        engine = self.engine
        deployment_id = await engine.ensure_deployment()
        started = engine.clock.now()
        containers: dict[str, list[ContainerInfo]] = {}
        skipped: list[str] = []
        for name, runtime in engine.runtimes.items():
            try:
                containers[name] = await runtime.list_managed()
            except DormantError as exc:
                skipped.append(name)
                self.skipped_reads += 1
                log.warning("reconcile skips runtime %s: listing failed: %s", name, exc)
        sessions: dict[str, SessionRecord] = {}
        after: str | None = None
        while True:
            page = await engine.list_sessions(after_id=after, limit=1000)
            if not page:
                break
            sessions.update((r.id, r) for r in page)
            after = page[-1].id
        # Containers whose session is not live: read their rows now, after the listing.
        ended: dict[str, SessionRecord | None] = {}
        for infos in containers.values():
            for info in infos:
                sid = info.session_id
                owner = info.labels.get(DEPLOYMENT_LABEL)
                if sid and sid not in sessions and owner == deployment_id and sid not in ended:
                    ended[sid] = await engine.session_row(sid)
        # In flight before the operations are read, and after: an operation that ended in
        # between is not judged from its stale row.
        busy = engine.busy_sessions()
        inflight = engine.inflight_operations()
        operations = await engine.pending_operations()
        live = await engine.instances_since(started - _instance_ttl(engine))
        result = plan(
            containers,
            sessions,
            operations,
            busy=busy | engine.busy_sessions(),
            instance_id=engine.settings.instance_id,
            live_instances={i.id for i in live},
            sweep_started=started,
            deployment_id=deployment_id,
            ended=ended,
            settle=self.settle,
            skipped=skipped,
            inflight_ops=inflight | engine.inflight_operations(),
        )
        if result.foreign or result.unadopted:
            log.info("reconcile: %s", result.summary())
        return result

    async def run(self, dry_run: bool = False) -> list[Step]:
        async with self._sweeping:  # one sweep at a time
            self.last_plan = await self.gather_plan()
            steps = self.last_plan.steps
            self.last_run = self.engine.clock.now()
            if dry_run:
                return steps
            await asyncio.gather(*(self._apply(step) for step in steps))
            return steps

    async def _apply(self, step: Step) -> None:
        engine = self.engine
        try:
            acted = True
            if step.kind == "remove-orphan" and step.container is not None:
                acted = await engine.remove_container(step.runtime, step.container, step.reason)
                if acted:
                    self.orphans_removed += 1
            elif step.kind == "mark-vanished":
                acted = await engine.mark_vanished(step.target, step.reason)
            elif step.kind == "stop-stray":
                acted = await engine.stop_stray(step.target)
            elif step.kind == "repair-failed":
                acted = await engine.repair_failed(step.target)
            elif step.kind == "resume":
                acted = await engine.resume(step.target, step.version)
            elif step.kind in ("sleep", "wake") and step.operation_id is not None:
                kind = "stop" if step.kind == "sleep" else "start"
                engine.resume_intent(step.target, kind, step.operation_id, step.reason)
            elif step.kind == "delete" and step.operation_id is not None:
                engine.resume_delete(step.target, step.operation_id, step.reason)
            elif step.kind == "close-operation" and step.operation_id is not None:
                await engine.close_operation(step.operation_id, step.reason)
            if acted:
                # Dormant's view and the runtime's disagreed: somebody should know.
                noisy = step.kind in ("mark-vanished", "stop-stray", "repair-failed")
                log.log(
                    logging.WARNING if noisy else logging.INFO,
                    "reconcile %s %s: %s",
                    step.kind,
                    step.target,
                    step.reason,
                )
            else:
                log.debug("reconcile %s %s: nothing to do on a fresh look", step.kind, step.target)
        except DormantError as exc:
            log.warning("reconcile step %s %s failed: %s", step.kind, step.target, exc)

    async def loop(self, interval: float) -> None:
        watchers = [
            asyncio.create_task(self.watch(name, runtime), name=f"dormant-watch-{name}")
            for name, runtime in self.engine.runtimes.items()
        ]
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._poked.wait(), interval)
                if self._poked.is_set():
                    await asyncio.sleep(self.debounce)  # one sweep for a burst of events
                    self._poked.clear()
                    self.wakeups += 1
                try:
                    await self.run()
                except DormantError as exc:
                    log.warning("reconcile sweep failed: %s", exc)
                except Exception:
                    log.exception("reconcile sweep failed")
                await asyncio.sleep(self.min_gap)
        finally:
            for task in watchers:
                task.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)

    async def watch(self, name: str, runtime: Runtime) -> None:
        """Poke the loop on the runtime's events, and once it is reachable after an outage."""
        reachable, delay = True, 0.5
        while True:
            try:
                if not reachable:
                    await runtime.ping()
                    reachable, delay = True, 0.5
                    log.info("runtime %s is reachable again; reconciling", name)
                    self.poke(f"{name} reconnected")
                await runtime.watch(lambda what: self.poke(f"{name}: {what}"))
            except DormantError as exc:
                if reachable:
                    log.warning("runtime %s unreachable: %s", name, exc)
                reachable = False
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)


def _instance_ttl(engine: Engine) -> timedelta:
    return timedelta(seconds=engine.settings.instance_heartbeat * 3)
