"""A running session's live CPU and memory for the console's session page:
``GET /ui/api/sessions/{id}/usage`` answers ``{"cpu_percent", "memory_bytes",
"memory_limit_bytes", "at"}`` read from its runtime now (``Runtime.stats``), scoped like the REST
API (another tenant's session is 404), 409 when it is not running. ``static/usage.js`` asks
every few seconds while the page is visible and draws the numbers and a sparkline."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response

from dormant.api.console.wiring import services
from dormant.api.principal import Who
from dormant.errors import Conflict
from dormant.policy import State

SessionId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


def usage_router() -> APIRouter:
    router = APIRouter(prefix="/ui/api", include_in_schema=False)

    @router.get("/sessions/{session_id}/usage")
    async def usage(
        session_id: SessionId, who: Who, request: Request, response: Response
    ) -> dict[str, Any]:
        engine = services(request).engine
        record = await engine.get(session_id, who.scope)  # NotFound: 404, also for others'
        runtime = engine.runtimes.get(record.runtime)
        if record.state is not State.RUNNING or runtime is None:
            raise Conflict(
                f"session {session_id} is {record.state.value}: "
                "live usage is read only while it runs"
            )
        stats = await runtime.stats(record.container_name, dict(record.runtime_state))
        if stats is None:  # it stopped (or vanished) since the store said it runs
            raise Conflict(f"session {session_id} has no running container now")
        response.headers["Cache-Control"] = "no-store"
        return stats.as_dict()

    return router
