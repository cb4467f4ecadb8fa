"""The console's own JSON: a page of the sessions table, the live stream of changes (SSE), and
a session's presence. Everything is scoped like the REST API (``Who``: admin sees all)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dormant.api.console.mirror import MAX_PER_PAGE, SORTS, SessionMirror
from dormant.api.console.mirror import Query as TableQuery
from dormant.api.principal import Who
from dormant.api.routes import session_out
from dormant.engine import Engine
from dormant.errors import InvalidInput
from dormant.policy import Level
from dormant.store.records import SessionRecord

#: Set in the ASGI scope of a response that never ends by itself (the event stream): the
#: server closes such connections at once on shutdown instead of waiting for them.
ENDLESS = "dormant.endless"
#: A stream says it is alive this often (proxies drop silent connections).
KEEPALIVE = 15.0
STATES = ("queued", "creating", "starting", "running", "stopping", "sleeping", "deleting", "failed")


#: API calls that change a session without a transition (so without an engine event).
_QUIET_CHANGE = re.compile(r"^/v1/sessions/([A-Za-z0-9_-]{1,64})/(?:keepalive|busy)$")


class RereadAfterChange:
    """After a successful keepalive or busy call, the mirror reads that session's row again
    (those change a session without a transition, so without an engine event)."""

    def __init__(self, app: ASGIApp, mirror: SessionMirror) -> None:
        self.app = app
        self.mirror = mirror

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = None
        if scope["type"] == "http" and scope["method"] == "POST":
            match = _QUIET_CHANGE.match(scope["path"])
        if match is None:
            await self.app(scope, receive, send)
            return
        status = 0

        async def sent(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        await self.app(scope, receive, sent)
        if 200 <= status < 300:
            self.mirror.changed_by_request(match.group(1))


def live_router(
    engine: Engine,
    mirror: SessionMirror,
    session_url: Callable[[str], str] | None = None,
) -> APIRouter:
    router = APIRouter(prefix="/ui/api")

    def render(request: Request, record: SessionRecord) -> dict[str, Any]:
        out = session_out(engine, record, "127.0.0.1", session_url)
        gateway = getattr(request.app.state, "realtime", None)
        if gateway is not None:
            out.connection_quality = gateway.connection_quality(record.id)
        return out.model_dump(mode="json")

    @router.get("/sessions")
    async def table(
        who: Who,
        request: Request,
        state: Annotated[str | None, Query(max_length=20)] = None,
        level: Annotated[str | None, Query(max_length=20)] = None,
        template: Annotated[str | None, Query(max_length=100)] = None,
        tenant: Annotated[str | None, Query(max_length=100)] = None,
        q: Annotated[str | None, Query(max_length=200)] = None,
        sort: Annotated[str, Query(max_length=20)] = "created",
        order: Literal["asc", "desc"] = "desc",
        page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
        per_page: Annotated[int, Query(ge=1, le=MAX_PER_PAGE)] = 50,
    ) -> dict[str, Any]:
        """A page of the sessions table, filtered, searched and sorted on the server."""
        if state and state not in STATES:
            raise InvalidInput(f"state must be one of: {', '.join(STATES)}")
        if level and level not in {lvl.value for lvl in Level}:
            raise InvalidInput(f"level must be one of: {', '.join(v.value for v in Level)}")
        if sort not in SORTS:
            raise InvalidInput(f"sort must be one of: {', '.join(SORTS)}")
        await mirror.current()
        found = mirror.query(
            who.scope,
            TableQuery(
                state=state or None,
                level=level or None,
                template=template or None,
                tenant=tenant or None,
                search=(q or "").strip() or None,
                sort=sort,
                descending=order == "desc",
                page=page,
                per_page=per_page,
            ),
        )
        return {
            "items": [render(request, r) for r in found.rows],
            "total": found.total,
            "page": found.page,
            "pages": found.pages,
            "per_page": per_page,
            "facets": {
                **found.facets,
                "states": list(STATES),
                "levels": [lvl.value for lvl in Level],
            },
        }

    @router.get("/stream")
    async def stream(
        who: Who,
        request: Request,
        session: Annotated[str | None, Query(max_length=64)] = None,
    ) -> StreamingResponse:
        """Server-sent events: ``sessions`` with ``{"changed": [session...], "removed":
        [id...]}`` whenever sessions this caller may see change (``session``: only that one)."""
        await mirror.current()
        request.scope[ENDLESS] = True
        watcher = mirror.watch(who.scope, session)

        async def events() -> AsyncIterator[bytes]:
            try:
                yield b"retry: 2000\nevent: hello\ndata: {}\n\n"
                while True:
                    try:
                        await asyncio.wait_for(watcher.ready.wait(), KEEPALIVE)
                    except TimeoutError:
                        yield b": alive\n\n"
                        continue
                    changed = watcher.take()
                    body = {
                        "changed": [render(request, r) for r in changed.values() if r is not None],
                        "removed": [sid for sid, r in changed.items() if r is None],
                    }
                    yield f"event: sessions\ndata: {json.dumps(body)}\n\n".encode()
            finally:
                mirror.unwatch(watcher)

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    @router.get("/sessions/{session_id}/presence")
    async def presence(session_id: str, who: Who, request: Request) -> dict[str, Any]:
        """Who is connected to the session through this server's real-time gateway, and how
        well (the other replicas' participants are counted, not listed)."""
        record = await engine.get(session_id, who.scope)
        gateway = getattr(request.app.state, "realtime", None)
        people: list[dict[str, Any]] = []
        quality = None
        if gateway is not None:
            quality = gateway.connection_quality(session_id)
            room = gateway.rooms.get(session_id)
            if room is not None:
                people = gateway.presence.people(room, gateway.clock.monotonic())
        return {
            "session_id": session_id,
            "connections": record.connections,
            "connections_by_instance": record.connections_by_instance,
            "quality": quality,
            "participants": people,
        }

    return router
