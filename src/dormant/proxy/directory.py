"""Where each session is and whether it serves, from memory where that is safe, and its wake.

Running sessions are answered from memory: an entry is replaced by every transition this
process makes (the engine's ``Transitioned`` events carry the record) and re-read from the store
once it is :data:`RUNNING_TTL` old, so a transition made by another replica is seen within that;
a connection the endpoint refuses drops the entry at once. Other states are re-read after
:data:`OTHER_TTL` (a wake's progress is seen promptly).

A request for a sleeping session starts one wake, shared by every request that arrives while it
runs (also across replicas: the engine's transition from ``sleeping`` happens once).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from dormant.engine import Engine, EngineEvent, Template, endpoint_of
from dormant.engine.notify import Transitioned
from dormant.engine.outcome import Outcome
from dormant.errors import Conflict, DormantError, NotFound
from dormant.policy import State
from dormant.runtimes import Endpoint
from dormant.store.records import SessionRecord

log = logging.getLogger("dormant.proxy")

RUNNING_TTL = 2.0
OTHER_TTL = 0.25
#: Entries kept at most (the least recently read go first).
MAX_ENTRIES = 100_000


@dataclass(frozen=True, slots=True)
class Route:
    """A session as the proxy needs it."""

    session_id: str
    tenant: str
    state: State
    template: Template
    endpoint: Endpoint | None
    error: str | None
    read_at: float
    #: The policy's bound on background work (streaming responses count as such), and its
    #: inactivity window (a response streaming for half of it counts as such work).
    max_busy: float = 0.0
    sleep_after: float = 0.0

    @property
    def serving(self) -> bool:
        return self.state is State.RUNNING and self.endpoint is not None


class SessionDirectory:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._routes: dict[str, Route] = {}
        self._wakes: dict[str, asyncio.Task[Outcome | None]] = {}
        #: Wakes this proxy started (requests that found their session asleep share one).
        self.wakes_started = 0
        #: Called with a session's old endpoint when it stops serving.
        self.on_gone: list[Callable[[Endpoint], None]] = []
        engine.listeners.append(self._on_event)

    def _route(self, record: SessionRecord) -> Route:
        policy = self.engine.policy_of(record)
        template = self.engine.catalog.templates.get(record.template) or Template(
            name=record.template
        )
        route = Route(
            record.id,
            record.tenant,
            record.state,
            template,
            endpoint_of(record) if record.state is State.RUNNING else None,
            record.error,
            time.monotonic(),
            policy.max_busy,
            policy.sleep_after,
        )
        if len(self._routes) >= MAX_ENTRIES:
            self._routes.pop(next(iter(self._routes)))
        self._routes[record.id] = route
        return route

    def _on_event(self, event: EngineEvent) -> None:
        if isinstance(event, Transitioned):
            before = self._routes.get(event.session_id)
            route = self._route(event.session)
            if before is not None and before.endpoint is not None and not route.serving:
                for hook in self.on_gone:  # its kept-alive connections lead nowhere now
                    hook(before.endpoint)

    def forget(self, session_id: str) -> None:
        self._routes.pop(session_id, None)

    async def lookup(self, session_id: str) -> Route | None:
        """The session's route; None if it does not exist or is deleted."""
        route = self._routes.get(session_id)
        if route is not None:
            ttl = RUNNING_TTL if route.state is State.RUNNING else OTHER_TTL
            if time.monotonic() - route.read_at < ttl:
                return None if route.state in (State.DELETED, State.DELETING) else route
        try:
            record = await self.engine.get(session_id)
        except NotFound:
            self._routes.pop(session_id, None)
            return None
        return self._route(record)

    async def wake(self, route: Route, timeout: float) -> Outcome | None:
        """Wake the session (one wake for all callers) and wait until it serves or ends
        otherwise; None if it is still on its way after ``timeout`` seconds."""
        task = self._wakes.get(route.session_id)
        if task is None or task.done():
            task = asyncio.create_task(self._wake(route.session_id))
            self.wakes_started += 1
            self._wakes[route.session_id] = task
            task.add_done_callback(functools.partial(self._done, route.session_id))
        try:
            return await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            return None

    def _done(self, session_id: str, task: asyncio.Task[Outcome | None]) -> None:
        if self._wakes.get(session_id) is task:
            del self._wakes[session_id]
        if not task.cancelled() and task.exception() is not None:
            log.warning("wake of %s through the proxy failed: %s", session_id, task.exception())

    async def _wake(self, session_id: str) -> Outcome | None:
        # Long enough for any start; each caller applies its own (shorter) timeout.
        horizon = 600.0
        while True:
            try:
                record = await self.engine.wake(
                    session_id, None, code="request", reason="woken by a request through the proxy"
                )
            except Conflict:  # stopping: wake it once it sleeps
                await self.engine.wait_for(session_id, State.SLEEPING, 30.0)
                continue
            except DormantError:
                raise
            if record.state is State.FAILED:
                return Outcome(session_id, State.RUNNING, State.FAILED, record.error)
            outcome = await self.engine.wait_for(session_id, State.RUNNING, horizon)
            fresh = await self.lookup_fresh(session_id)
            if outcome is not None and outcome.ok and fresh is not None and not fresh.serving:
                continue  # put to sleep again at once: wake once more
            return outcome

    async def lookup_fresh(self, session_id: str) -> Route | None:
        self._routes.pop(session_id, None)
        return await self.lookup(session_id)

    def state_of(self, session_id: str) -> Route | None:
        """The last known route, without reading the store."""
        return self._routes.get(session_id)

    def close(self) -> None:
        for task in self._wakes.values():
            task.cancel()
        if self._on_event in self.engine.listeners:
            self.engine.listeners.remove(self._on_event)
