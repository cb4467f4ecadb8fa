"""The engine's shared state and plumbing: settings, per-session locks, background tasks
(operations marked in flight, retried through store outages), events to listeners, retries.

The engine is built in stages, each a module and a class on top of the one before:
:class:`EngineCore` (here) -> ``writer.SessionWriter`` (fresh reads, versioned writes,
transitions) -> ``runner.OperationRunner`` (intent row, runtime call, transition) ->
``activity.ActivityBuffer`` (coalescing and flush) -> ``scheduler.Scheduler`` (deadlines) ->
``recovery.Recovery`` (resume, vanished, strays, instances, purge) -> ``lifecycle.Engine``
(the commands signals call).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from dormant.clock import Clock
from dormant.engine.deadlines import Deadlines
from dormant.engine.limits import Limits
from dormant.engine.notify import EngineEvent, Listener
from dormant.engine.outcome import Waiters
from dormant.engine.ports import PortAllocator
from dormant.engine.retry import Backoff, call_with_retry
from dormant.engine.templates import Catalog
from dormant.errors import (
    RuntimeUnavailable,
    TemporaryError,
)
from dormant.policy import (
    ActivityTimes,
    State,
)
from dormant.policy.adaptive import GapModel, Learner
from dormant.runtimes import Runtime
from dormant.store.base import Store
from dormant.store.records import NewEvent, SessionRecord

log = logging.getLogger("dormant.engine")
T = TypeVar("T")

#: Set inside background operations: their store calls wait out a store outage (up to
#: ``store_outage_patience``) instead of failing, because the runtime step they follow or precede
#: has been acknowledged. Request handlers leave it unset and fail fast (503).
_PATIENT: contextvars.ContextVar[bool] = contextvars.ContextVar("dormant_patient", default=False)

#: Set while handling a claimed due session: ``(session id, fence)``. That session's writes
#: carry the fence, so an instance that lost its claim (paused past its lease) cannot write.
_FENCE: contextvars.ContextVar[tuple[str, int] | None] = contextvars.ContextVar(
    "dormant_fence", default=None
)


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
    #: Seconds between heartbeats (the instance's lease is three of them).
    instance_heartbeat: float = 5.0
    #: How long a claim on a due session lasts, how many are claimed at once, and how often
    #: the store is asked for due sessions this instance's heap does not know (another's).
    claim_lease: float = 60.0
    claim_batch: int = 64
    claim_poll: float = 1.0
    #: After the retry budget is spent on an unreachable runtime (RuntimeUnavailable), keep
    #: waiting this long (probing at the backoff cap) before failing the operation.
    outage_patience: float = 0.0
    #: How long background operations wait for an unreachable store before giving up (the
    #: reconciler then finishes them); a store error never turns a runtime success into failure.
    store_outage_patience: float = 300.0
    #: Deleted sessions (rows, timelines, operations) are purged this long after deletion.
    retention: float = 30 * 86400.0
    purge_interval: float = 3600.0
    #: Admission (``[limits]``): none set, nothing is ever queued.
    limits: Limits = field(default_factory=Limits)


class EngineCore:
    """State every stage shares, and the plumbing they all use."""

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
        #: The batch a flush is writing: until that write is done the store may not show it.
        self._flushing: dict[str, ActivityTimes] = {}
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
        #: Callers waiting for sessions to settle (``Engine.wait_for``).
        self._waiters = Waiters()
        #: Instances with a live lease (refreshed by each heartbeat): their claims stand.
        self._live_instances: list[str] = []
        #: The last claim took all that was due (else look again at once).
        self._claimed_all = True
        #: Operations this process began: id -> (session, kind, when its intent was written),
        #: to tell listeners how each ended and how long it took (OperationFinished).
        self._ops_begun: dict[int, tuple[str, str, datetime | None]] = {}
        #: Activity samples for timelines: when each session's last was taken, and those not
        #: yet written (the activity flush writes them).
        self._sampled: dict[str, datetime] = {}
        self._samples: list[tuple[str, NewEvent]] = []

    async def drain(self) -> None:
        """Wait for every operation in flight (tests and graceful shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _arm(self, sid: str, at: datetime | None) -> None:
        """Set a session's deadline; wake the scheduler if it is now the earliest."""
        if self.deadlines.set(sid, at):
            self._wakeup.set()

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

    def _spawn(self, coro: Awaitable[None]) -> None:
        async def guarded() -> None:
            try:
                await coro
            except Exception:
                log.exception("session operation failed")

        task = asyncio.create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
        # A failure and a container that vanished behind dormant's back need someone's eyes.
        bad = new is State.FAILED or code == "container_exited"
        log.log(
            logging.WARNING if bad else logging.INFO,
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


def instance_ttl(settings: EngineSettings) -> timedelta:
    """An instance that has not beaten its heart for this long is gone."""
    return timedelta(seconds=settings.instance_heartbeat * 3)
