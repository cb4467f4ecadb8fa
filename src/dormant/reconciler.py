"""Level-triggered reconciliation: the runtime's labelled containers against the store's sessions.

``plan`` is pure: given both views it lists the steps that make them agree. ``Reconciler.run``
gathers the views, plans, and applies the steps through the engine (or only prints them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from dormant.engine import Engine
from dormant.errors import DormantError
from dormant.policy import State
from dormant.runtimes import ContainerInfo, ContainerStatus, Runtime
from dormant.runtimes.base import CREATED_LABEL, INSTANCE_LABEL
from dormant.store.records import OperationRecord, SessionRecord

log = logging.getLogger("dormant.reconciler")


@dataclass(frozen=True, slots=True)
class Step:
    """``kind``: ``remove-orphan``, ``mark-vanished``, ``stop-stray``, ``resume``, ``delete``,
    ``sleep``, ``wake`` (requests accepted before a crash), ``close-operation``."""

    kind: str
    target: str
    reason: str
    runtime: str = ""
    container: ContainerInfo | None = None
    operation_id: int | None = None

    def describe(self) -> str:
        return f"{self.kind:16} {self.target:40} {self.reason}"


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
) -> list[Step]:
    """What to do so that containers and sessions agree. ``containers`` is per runtime name;
    ``sessions`` holds every live session; ``busy`` are sessions with an operation in flight
    in this process (left alone)."""
    steps: list[Step] = []
    seen: set[str] = set()
    for runtime, infos in containers.items():
        for info in infos:
            sid = info.session_id
            record = sessions.get(sid) if sid else None
            if record is not None and record.container_name == info.name:
                seen.add(record.id)
                if sid in busy:
                    continue
                if record.state is State.SLEEPING and info.status is ContainerStatus.RUNNING:
                    steps.append(
                        Step(
                            "stop-stray",
                            record.id,
                            "session sleeps but its container runs",
                            runtime,
                            info,
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
                        )
                    )
                continue
            owner = info.labels.get(INSTANCE_LABEL)
            if owner and owner != instance_id and owner in live_instances:
                continue  # another live instance converges its own containers
            created = _created(info)
            if created is not None and created > sweep_started:
                continue  # made after this sweep began: its session may not be visible yet
            why = "no session" if record is None else "session has another container"
            steps.append(
                Step("remove-orphan", info.name, f"orphan: {why} (session {sid})", runtime, info)
            )
    for sid, record in sessions.items():
        if sid in busy:
            continue
        if record.state.transitional:
            steps.append(
                Step("resume", sid, f"left {record.state.value} by an interrupted operation")
            )
        elif record.state is State.RUNNING and sid not in seen:
            steps.append(Step("mark-vanished", sid, "container is missing"))
    for op in operations:
        if op.session_id in busy:
            continue
        record = sessions.get(op.session_id)
        if op.kind == "remove" and record is not None and record.state is not State.DELETING:
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
            (op.kind == "stop" and record.state is State.RUNNING)
            or (op.kind == "start" and record.state in (State.SLEEPING, State.FAILED))
        ):
            verb = "sleep" if op.kind == "stop" else "wake"
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
    return steps


class Reconciler:
    """Sweeps at start, every ``interval``, soon after a runtime's change event, and when a
    runtime becomes reachable again. Events only wake it: every sweep compares full views.
    A burst of events costs one sweep (``debounce``), and sweeps are ``min_gap`` apart."""

    def __init__(self, engine: Engine, *, debounce: float = 0.5, min_gap: float = 2.0) -> None:
        self.engine = engine
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

    async def gather_plan(self) -> list[Step]:
        engine = self.engine
        started = engine.clock.now()
        containers: dict[str, list[ContainerInfo]] = {}
        for name, runtime in engine.runtimes.items():
            containers[name] = await runtime.list_managed()
        sessions: dict[str, SessionRecord] = {}
        after: str | None = None
        while True:
            page = await engine.store.list_sessions(after_id=after, limit=1000)
            if not page:
                break
            sessions.update((r.id, r) for r in page)
            after = page[-1].id
        operations = await engine.store.pending_operations()
        live = await engine.store.live_instances(since=started - _instance_ttl(engine))
        return plan(
            containers,
            sessions,
            operations,
            busy=engine.busy_sessions(),
            instance_id=engine.settings.instance_id,
            live_instances={i.id for i in live},
            sweep_started=started,
        )

    async def run(self, dry_run: bool = False) -> list[Step]:
        async with self._sweeping:  # one sweep at a time
            steps = await self.gather_plan()
            self.last_run = self.engine.clock.now()
            if dry_run:
                return steps
            await asyncio.gather(*(self._apply(step) for step in steps))
            return steps

    async def _apply(self, step: Step) -> None:
        engine = self.engine
        log.info("reconcile %s %s: %s", step.kind, step.target, step.reason)
        try:
            if step.kind == "remove-orphan" and step.container is not None:
                await engine.remove_container(step.runtime, step.container, step.reason)
                self.orphans_removed += 1
            elif step.kind == "mark-vanished":
                await engine.mark_vanished(step.target, step.reason)
            elif step.kind == "stop-stray":
                await engine.stop_stray(step.target)
            elif step.kind == "resume":
                await engine.resume(step.target)
            elif step.kind in ("sleep", "wake") and step.operation_id is not None:
                kind = "stop" if step.kind == "sleep" else "start"
                engine.resume_intent(step.target, kind, step.operation_id, step.reason)
            elif step.kind == "delete" and step.operation_id is not None:
                engine.resume_delete(step.target, step.operation_id, step.reason)
            elif step.kind == "close-operation" and step.operation_id is not None:
                await engine.store.finish_operation(
                    step.operation_id, "interrupted", 0, step.reason, engine.clock.now()
                )
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
