"""Read-only views of what happened: a session's timeline, the deployment's counts
(``/v1/stats``) and its live instances."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from dormant.api.auth import Forbidden
from dormant.api.principal import Who
from dormant.api.schemas import EventList, EventOut, InstanceList, InstanceOut, Stats
from dormant.engine import Engine
from dormant.reconciler import Reconciler


def build_observe_router(engine: Engine, reconciler: Reconciler) -> APIRouter:
    router = APIRouter()

    @router.get("/sessions/{session_id}/events", response_model=EventList)
    async def events(session_id: str, who: Who) -> EventList:
        """The newest 500 entries of the session's timeline, oldest first: transitions,
        decisions, operations and activity samples (at most one a minute). Deleted sessions
        keep theirs until purged. Errors: 404 (unknown or another tenant's)."""
        await engine.get_any(session_id, who.scope)
        rows = await engine.timeline(session_id)
        return EventList(
            session_id=session_id,
            items=[
                EventOut(
                    at=e.at,
                    type=e.type,
                    from_state=e.from_state,
                    to_state=e.to_state,
                    action=e.action,
                    code=e.code,
                    reason=e.reason,
                    kind=e.code if e.type == "activity" and e.source else None,
                    source=e.source,
                )
                for e in rows
            ],
        )

    @router.get("/instances", response_model=InstanceList)
    async def instances(who: Who) -> InstanceList:
        if not who.admin:
            raise Forbidden("the instances of a deployment are shown to admin keys only")
        lease = engine.instance_lease()
        return InstanceList(
            items=[
                InstanceOut(
                    id=i.id,
                    host=i.host,
                    pid=i.pid,
                    started_at=i.started_at,
                    heartbeat_at=i.heartbeat_at,
                    lease_until=i.heartbeat_at + lease,
                    this=i.id == engine.settings.instance_id,
                )
                for i in await engine.live_instances()
            ]
        )

    @router.get("/stats", response_model=Stats)
    async def stats(who: Who) -> Stats:
        """Counts from the shared store (the same on every replica), each a query on an
        index or a kept count: never a walk over sessions."""
        # Three independent reads, side by side (each on its own store connection).
        by_state, by_level, by_reason = await asyncio.gather(
            engine.counts_by_state(who.scope),
            engine.counts_by_level(who.scope),
            engine.transition_counts(who.scope),
        )
        return Stats(
            sessions_by_state=by_state,
            sessions_by_level=by_level,
            transitions_by_reason=by_reason,
            orphans_removed=reconciler.orphans_removed,
        )

    return router
