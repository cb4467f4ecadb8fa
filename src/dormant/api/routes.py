"""REST routes under ``/v1`` (see DESIGN.md, Interfaces)."""

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Annotated, Any, Protocol, TypeVar

from fastapi import APIRouter, Header, Path, Query, Request, Response

from dormant.api.audit import log_action, requested_by
from dormant.api.catalog import build_catalog_router
from dormant.api.errors import ApiError
from dormant.api.observe import build_observe_router
from dormant.api.principal import Who
from dormant.api.schemas import (
    IDEMPOTENCY_KEY_PATTERN,
    NAME_PATTERN,
    USER_ID_PATTERN,
    Accepted,
    ActivityIn,
    BroadcastIn,
    BroadcastOut,
    CreateSession,
    LastActivity,
    LinkIn,
    LinkOut,
    LogoutOut,
    NextAction,
    OutcomeOut,
    SessionList,
    SessionOut,
    SessionSpec,
    TokenIn,
    TokenOut,
    UntilIn,
    check_label_key,
)
from dormant.engine import Engine
from dormant.engine.lifecycle import Idempotency
from dormant.engine.limits import QUEUE_TIMEOUT
from dormant.errors import InvalidInput, QueueTimedOut, TemporaryError
from dormant.policy import Action, Decision, Level, State, parse_kind
from dormant.policy.why import Extra, why
from dormant.reconciler import Reconciler
from dormant.store.records import SessionRecord

E = TypeVar("E", State, Level)
MAX_ACTIVITY_AGE = timedelta(hours=24)
#: ``?wait=N``: answer once the operation ended (at most N seconds), with its outcome.
Wait = Annotated[
    float | None,
    Query(ge=0, le=120, description="Seconds to wait for the outcome (0-120); none: answer now"),
]
SessionName = Annotated[
    str,
    Path(
        min_length=1,
        max_length=63,
        pattern=NAME_PATTERN,
        description="1-63 of a-z 0-9 . _ -, starting with a letter or digit",
    ),
]
UserId = Annotated[str, Path(min_length=1, max_length=200, pattern=USER_ID_PATTERN)]
IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        pattern=IDEMPOTENCY_KEY_PATTERN,
        description="Retries with the same key (and the same body) within 24 h answer the "
        "session the first request made; the same key with another body is refused (422).",
    ),
]
#: The query parameters ``GET /v1/sessions`` knows; any other is refused (422).
LIST_QUERY = frozenset(
    {"user_id", "state", "level", "name", "template", "label", "cursor", "limit"}
)


def _only_known(request: Request, known: frozenset[str]) -> None:
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        raise ApiError(
            422,
            "unknown_field",
            f"unknown query parameter(s): {', '.join(repr(u[:64]) for u in unknown[:5])}; "
            f"known: {', '.join(sorted(known))}",
        )


def _label_filter(labels: list[str] | None) -> dict[str, str]:
    """``label=KEY=VALUE`` (repeatable: all must match) as a mapping."""
    wanted: dict[str, str] = {}
    for item in labels or []:
        key, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError(f"label {item[:80]!r} must be KEY=VALUE")
            check_label_key(key)
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
        if wanted.get(key, value) != value:
            raise InvalidInput(f"label {key!r} is asked with two values; none can match both")
        wanted[key] = value
    return wanted


class Realtime(Protocol):
    """The real-time gateway as the API sees it (wired in by the server as app.state.realtime)."""

    def mint_token(
        self, record: SessionRecord, name: str | None, ttl: float | None, *, key_id: str
    ) -> tuple[str, datetime]: ...

    async def broadcast(self, session_id: str, type_: str, data: Any) -> int: ...

    def connection_quality(self, session_id: str) -> str | None: ...


class LinkMaker(Protocol):
    """The session proxy's links as the API sees them (``app.state.links``)."""

    def session_url(self, session_id: str) -> str: ...

    async def create(self, session_id: str, ttl: float | None) -> tuple[str, datetime]: ...


def _realtime(request: Request) -> Realtime:
    gateway: Realtime | None = getattr(request.app.state, "realtime", None)
    if gateway is None:
        raise TemporaryError("the real-time gateway is not running in this server")
    return gateway


def session_out(
    engine: Engine,
    record: SessionRecord,
    public_host: str,
    session_url: Callable[[str], str] | None = None,
) -> SessionOut:
    """``url``: through the proxy (the same across sleeps) when it runs, else the session's
    own endpoint while it runs."""
    now = engine.clock.now()
    lvl, decision = engine.describe(record, now)
    queued = record.queued_at is not None
    told = why(
        record.view(),
        decision,
        now,
        Extra(record.error, record.queued_at, record.queue_limit, record.end_reason),
    )
    if queued:
        decision = Decision(
            Action.NONE, None, f"queued for capacity ({record.queue_limit})", "queued"
        )
    running = record.state is State.RUNNING and record.port is not None
    if session_url is not None:
        url: str | None = session_url(record.id) if record.state.live else None
    else:
        url = f"http://{public_host}:{record.port}/" if running else None
    return SessionOut(
        id=record.id,
        tenant=record.tenant,
        user_id=record.user_id,
        template=record.template,
        name=record.name,
        policy=record.policy_name,
        state="queued" if queued else record.state.value,
        level=lvl.value,
        url=url,
        port=record.port,
        connections=record.connections,
        created_at=record.created_at,
        state_since=record.state_since,
        last_activity=LastActivity(
            at=record.last_activity_at,
            kind=record.last_activity_kind,
            source=record.last_activity_source,
        ),
        last_seen_at=record.last_seen_at,
        keepalive_until=record.keepalive_until,
        busy_until=record.busy_until,
        next_action=NextAction(
            action=decision.action.value, at=decision.at, reason=decision.reason
        ),
        labels=record.labels,
        error=record.error,
        why=told,
        queue_limit=record.queue_limit if queued else None,
        queue_kind=record.queue_kind if queued else None,
    )


def build_router(
    engine: Engine,
    reconciler: Reconciler,
    public_host: str = "127.0.0.1",
    session_url: Callable[[str], str] | None = None,
) -> APIRouter:
    router = APIRouter(prefix="/v1")

    def out(record: SessionRecord) -> SessionOut:
        return session_out(engine, record, public_host, session_url)

    async def settled(sid: str, wanted: State, wait: float | None) -> OutcomeOut | None:
        """With ``?wait=N``: wait up to N seconds for the operation's outcome."""
        if not wait:
            return None
        outcome = await engine.wait_for(sid, wanted, wait)
        if outcome is None:
            return None
        if not outcome.ok and (outcome.error or "").startswith(QUEUE_TIMEOUT):
            raise QueueTimedOut(outcome.error or QUEUE_TIMEOUT)
        return OutcomeOut(state=outcome.state.value, ok=outcome.ok, error=outcome.error)

    @router.post("/sessions", status_code=201, response_model=SessionOut)
    async def create_session(
        body: CreateSession,
        who: Who,
        response: Response,
        wait: Wait = None,
        idempotency_key: IdempotencyKeyHeader = None,
    ) -> SessionOut:
        once = (
            None
            if idempotency_key is None
            else Idempotency(idempotency_key, Idempotency.hash_of(body.model_dump(mode="json")))
        )
        record = await engine.create_session(
            tenant=who.tenant,
            user_id=body.user_id,
            template=body.template,
            policy=body.policy,
            labels=body.labels,
            env=body.env,
            idempotency=once,
            reason=requested_by("create", who),
        )
        log_action("create", who, record.id, user=body.user_id)
        response.headers["Location"] = f"/v1/sessions/{record.id}"
        if await settled(record.id, State.RUNNING, wait) is not None:
            fresh = await engine.session_row(record.id)
            record = fresh or record
        made = out(record)
        made.queue_position = await engine.queue_position(record)
        return made

    @router.put(
        "/users/{user_id}/sessions/{name}",
        response_model=SessionOut,
        responses={201: {"model": SessionOut, "description": "Created"}},
    )
    async def ensure_session(
        user_id: UserId,
        name: SessionName,
        who: Who,
        request: Request,
        response: Response,
        body: SessionSpec | None = None,
        wake: bool = Query(default=False, description="Wake the session if it sleeps"),
        wait: Wait = None,
    ) -> SessionOut:
        """Get or create the user's live session of this name (per template): 200 with the
        existing one (the body is then not applied), 201 with a new one. Concurrent calls make
        one session."""
        _only_known(request, frozenset({"wake", "wait"}))
        spec = body or SessionSpec()
        record, created = await engine.ensure_session(
            tenant=who.tenant,
            user_id=user_id,
            name=name,
            template=spec.template,
            policy=spec.policy,
            labels=spec.labels,
            env=spec.env,
            wake=wake,
            reason=requested_by("get-or-create", who),
        )
        log_action("ensure", who, record.id, user=user_id, name=name, created=created)
        response.status_code = 201 if created else 200
        response.headers["Location"] = f"/v1/sessions/{record.id}"
        if (created or wake) and await settled(record.id, State.RUNNING, wait) is not None:
            fresh = await engine.session_row(record.id)
            record = fresh or record
        return out(record)

    @router.get("/sessions", response_model=SessionList)
    async def list_sessions(
        who: Who,
        request: Request,
        user_id: str | None = None,
        state: str | None = None,
        level: str | None = None,
        name: str | None = Query(default=None, max_length=63),
        template: str | None = Query(default=None, max_length=100),
        label: list[str] | None = Query(
            default=None,
            max_length=32,
            description="KEY=VALUE; repeat it and every label must match",
        ),
        cursor: str | None = Query(default=None, max_length=64),
        limit: int = Query(default=100, ge=1, le=500),
    ) -> SessionList:
        _only_known(request, LIST_QUERY)
        want_state = _enum(State, state, "state")
        want_level = _enum(Level, level, "level")
        want_labels = _label_filter(label)
        items: list[SessionOut] = []
        after = cursor
        more = False
        while len(items) < limit:
            page = await engine.list_sessions(
                tenant=who.scope,
                user_id=user_id,
                state=want_state,
                after_id=after,
                limit=limit,
                name=name,
                template=template,
                labels=want_labels,
            )
            for record in page:
                after = record.id
                if record.state is State.DELETING and want_state is None:
                    continue  # being deleted: GET already answers 404
                session = out(record)
                if want_level is None or session.level == want_level.value:
                    items.append(session)
                    if len(items) == limit:
                        break
            more = len(page) == limit
            if not more:
                break
        return SessionList(items=items, next_cursor=after if more and items else None)

    @router.get("/sessions/{session_id}", response_model=SessionOut)
    async def get_session(session_id: str, who: Who, request: Request) -> SessionOut:
        record = await engine.get(session_id, who.scope)
        session = out(record)
        session.queue_position = await engine.queue_position(record)
        gateway = getattr(request.app.state, "realtime", None)
        if gateway is not None:
            session.connection_quality = gateway.connection_quality(session_id)
        return session

    @router.post("/sessions/{session_id}/activity", status_code=202, response_model=Accepted)
    async def activity(session_id: str, body: ActivityIn, who: Who) -> Accepted:
        record = await engine.get(session_id, who.scope)
        if body.at is not None and body.at < engine.clock.now() - MAX_ACTIVITY_AGE:
            raise InvalidInput("activity 'at' is more than 24h old; send activity as it happens")
        engine.record_activity(session_id, parse_kind(body.kind), body.at, source="api")
        return Accepted(id=session_id, state=record.state.value, accepted="activity")

    @router.post("/sessions/{session_id}/sleep", status_code=202, response_model=Accepted)
    async def sleep(session_id: str, who: Who, wait: Wait = None) -> Accepted:
        record = await engine.sleep(session_id, who.scope, reason=requested_by("sleep", who))
        log_action("sleep", who, session_id)
        outcome = await settled(session_id, State.SLEEPING, wait)
        state = outcome.state if outcome else record.state.value
        return Accepted(id=session_id, state=state, accepted="sleep", outcome=outcome)

    @router.post("/sessions/{session_id}/wake", status_code=202, response_model=Accepted)
    async def wake(session_id: str, who: Who, wait: Wait = None) -> Accepted:
        record = await engine.wake(session_id, who.scope, reason=requested_by("wake", who))
        log_action("wake", who, session_id)
        outcome = await settled(session_id, State.RUNNING, wait)
        asked = "queued" if record.queued_at is not None else record.state.value
        state = outcome.state if outcome else asked
        return Accepted(id=session_id, state=state, accepted="wake", outcome=outcome)

    @router.post("/sessions/{session_id}/keepalive", status_code=202, response_model=SessionOut)
    async def keepalive(session_id: str, body: UntilIn, who: Who) -> SessionOut:
        record = await engine.keepalive(
            session_id, body.until, who.scope, busy=False, by=who.describe()
        )
        log_action("keepalive", who, session_id, until=body.until.isoformat())
        return out(record)

    @router.post("/sessions/{session_id}/busy", status_code=202, response_model=SessionOut)
    async def busy(session_id: str, body: UntilIn, who: Who) -> SessionOut:
        record = await engine.keepalive(
            session_id, body.until, who.scope, busy=True, by=who.describe()
        )
        log_action("busy", who, session_id, until=body.until.isoformat())
        return out(record)

    @router.delete("/sessions/{session_id}", status_code=202, response_model=Accepted)
    async def delete(session_id: str, who: Who, wait: Wait = None) -> Accepted:
        await engine.delete(session_id, who.scope, reason=requested_by("delete", who))
        log_action("delete", who, session_id)
        outcome = await settled(session_id, State.DELETED, wait)
        state = outcome.state if outcome else State.DELETING.value
        return Accepted(id=session_id, state=state, accepted="delete", outcome=outcome)

    @router.post("/sessions/{session_id}/links", status_code=201, response_model=LinkOut)
    async def link(
        session_id: str, who: Who, request: Request, body: LinkIn | None = None
    ) -> LinkOut:
        """A one-time link that opens the session in a browser through dormant's proxy."""
        await engine.get(session_id, who.scope)
        links: LinkMaker | None = getattr(request.app.state, "links", None)
        if links is None:
            raise TemporaryError("the session proxy is off in this server (DORMANT_PROXY_PORT=0)")
        url, expires_at = await links.create(session_id, body.ttl if body else None)
        log_action("link", who, session_id)
        return LinkOut(url=url, expires_at=expires_at, session_id=session_id)

    @router.post("/sessions/{session_id}/tokens", status_code=201, response_model=TokenOut)
    async def token(
        session_id: str, who: Who, request: Request, body: TokenIn | None = None
    ) -> TokenOut:
        record = await engine.get(session_id, who.scope)
        # The token is only as good as the key that minted it: revoking the key refuses it.
        token, expires_at = _realtime(request).mint_token(
            record, body.name if body else None, body.ttl if body else None, key_id=who.key_id
        )
        log_action("token", who, session_id)
        return TokenOut(token=token, expires_at=expires_at, session_id=session_id)

    @router.post("/sessions/{session_id}/broadcast", status_code=202, response_model=BroadcastOut)
    async def broadcast(
        session_id: str, body: BroadcastIn, who: Who, request: Request
    ) -> BroadcastOut:
        await engine.get(session_id, who.scope)
        delivered = await _realtime(request).broadcast(session_id, body.type, body.data)
        log_action("broadcast", who, session_id, type=body.type, delivered=delivered)
        return BroadcastOut(id=session_id, type=body.type, delivered=delivered)

    @router.post("/users/{user_id}/logout", response_model=LogoutOut)
    async def logout(user_id: str, who: Who) -> LogoutOut:
        deleted = await engine.logout(user_id, who.scope, reason=requested_by("logout", who))
        log_action("logout", who, None, user=user_id, deleted=len(deleted))
        return LogoutOut(user_id=user_id, deleted=deleted)

    router.include_router(build_catalog_router(engine))
    router.include_router(build_observe_router(engine, reconciler))
    return router


def _enum(cls: type[E], value: str | None, name: str) -> E | None:
    if value is None:
        return None
    try:
        return cls(value)
    except ValueError:
        raise InvalidInput(f"{name} must be one of: {', '.join(v.value for v in cls)}") from None
