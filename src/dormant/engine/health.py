"""Health: every running session is probed every ``health_interval``; after ``health_failures``
misses in a row it is restarted (up to the template's ``restart`` times within an hour) or
failed with the probe's output, and the timeline says which and why.

Probes are spread over the interval (each session at its own offset, from its id), run at most
:attr:`HealthMonitor.concurrency` at once, and each instance probes only its share of the
sessions (by a hash of the id over the live instances), so several replicas do not probe one
session several times. The list of running sessions is read once per interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from dormant.engine.endpoints import endpoint_of
from dormant.engine.lifecycle import Engine
from dormant.engine.probes import ProbeResult, run_probe
from dormant.engine.templates import Template
from dormant.errors import DormantError
from dormant.policy import State
from dormant.store.records import SessionRecord

log = logging.getLogger("dormant.health")

#: Restarts are counted over this window; more than ``restart`` of them fail the session.
RESTART_WINDOW = 3600.0
#: How often the list of running sessions is read (and probes due within it scheduled).
ROUND = 10.0


@dataclass(slots=True)
class _Watch:
    misses: int = 0
    restarts: list[float] = field(default_factory=list)


class HealthMonitor:
    def __init__(self, engine: Engine, *, concurrency: int = 32, round_seconds: float = ROUND):
        self.engine = engine
        self.concurrency = concurrency
        self.round_seconds = round_seconds
        self._slots = asyncio.Semaphore(concurrency)
        self._watch: dict[str, _Watch] = {}
        #: session id -> when (monotonic) it is probed next
        self._next: dict[str, float] = {}
        self._actions: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self.probes_run = 0
        self.restarts = 0
        self.failed = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="dormant-health")

    async def stop(self) -> None:
        for action in list(self._actions):
            action.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _template(self, record: SessionRecord) -> Template | None:
        return self.engine.catalog.templates.get(record.template)

    async def _running(self) -> list[SessionRecord]:
        records: list[SessionRecord] = []
        after: str | None = None
        while True:
            page = await self.engine.store.list_sessions(
                state=State.RUNNING, after_id=after, limit=500
            )
            if not page:
                return records
            records += page
            after = page[-1].id

    async def _mine(self, records: list[SessionRecord]) -> list[SessionRecord]:
        instances = [i.id for i in await self.engine.live_instances()]
        me = self.engine.settings.instance_id
        if me not in instances:
            instances.append(me)
        instances.sort()
        index = instances.index(me)
        return [r for r in records if _bucket(r.id, len(instances)) == index]

    async def _loop(self) -> None:
        """Rounds of :data:`ROUND` seconds: read the running sessions, probe those due within
        the round at their time (each keeps its own offset within its interval)."""
        while True:
            started = time.monotonic()
            try:
                await self._round(started, started + self.round_seconds)
            except asyncio.CancelledError:
                raise
            except DormantError as exc:
                log.warning("health round skipped: %s", exc)
            except Exception:
                log.exception("health round failed")
            await asyncio.sleep(max(0.0, started + self.round_seconds - time.monotonic()))

    async def _round(self, now: float, until: float) -> None:
        records = await self._mine(await self._running())
        live = {r.id for r in records}
        for sid in list(self._next):
            if sid not in live:
                self._next.pop(sid, None)
                self._watch.pop(sid, None)
        due: list[tuple[float, str, SessionRecord]] = []
        for record in records:
            template = self._template(record)
            if template is None or template.health_interval <= 0:
                continue
            interval = template.health_interval
            at = self._next.get(record.id)
            if at is None:  # first seen: its own offset within the interval
                at = now + _bucket(record.id, 10_000) / 10_000 * interval
            at = max(at, now)
            while at < until:  # every probe of it due within this round
                heapq.heappush(due, (at, record.id, record))
                at += interval
            self._next[record.id] = at
        tasks: list[asyncio.Task[None]] = []
        while due:
            at, _, record = heapq.heappop(due)
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            await self._slots.acquire()
            tasks.append(asyncio.create_task(self._probe(record)))
        if tasks:
            await asyncio.gather(*tasks)

    async def _probe(self, record: SessionRecord) -> None:
        try:
            template = self._template(record)
            runtime = self.engine.runtimes.get(record.runtime)
            if template is None or runtime is None:
                return
            fresh = await self.engine.store.get_session(record.id)
            if fresh is None or fresh.state is not State.RUNNING:
                return  # changed meanwhile: not this round's business
            result = await run_probe(
                template.ready, endpoint_of(fresh), runtime, fresh.container_name
            )
            self.probes_run += 1
            await self._judge(fresh, template, result)
        except DormantError as exc:
            log.warning("health probe of %s could not run: %s", record.id, exc)
        finally:
            self._slots.release()

    async def _judge(self, record: SessionRecord, template: Template, result: ProbeResult) -> None:
        watch = self._watch.setdefault(record.id, _Watch())
        if result.ok:
            watch.misses = 0
            return
        watch.misses += 1
        log.warning(
            "health probe of %s failed (%d of %d): %s",
            record.id,
            watch.misses,
            template.health_failures,
            result.detail,
        )
        if watch.misses < template.health_failures:
            return
        watch.misses = 0
        now = time.monotonic()
        watch.restarts = [t for t in watch.restarts if now - t < RESTART_WINDOW]
        what = f"health check failed {template.health_failures} times: {result.detail}"
        if len(watch.restarts) < template.restart:
            watch.restarts.append(now)
            self.restarts += 1
            n = len(watch.restarts)
            self._spawn(
                self.engine.restart(record.id, f"{what}; restarting ({n} of {template.restart})")
            )
        else:
            self.failed += 1
            limit = template.restart
            self._spawn(
                self.engine.fail_running(
                    record.id, f"{what}; {limit} restart(s) within the hour did not help"
                )
            )
            del self._watch[record.id]

    def _spawn(self, action: Coroutine[Any, Any, None]) -> None:
        """Restarts and failures run beside the probes (a round does not wait for them)."""
        task = asyncio.create_task(action)
        self._actions.add(task)
        task.add_done_callback(self._action_done)

    def _action_done(self, task: asyncio.Task[None]) -> None:
        self._actions.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("health action failed: %s", exc)


def _bucket(session_id: str, n: int) -> int:
    digest = hashlib.blake2b(session_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % n
