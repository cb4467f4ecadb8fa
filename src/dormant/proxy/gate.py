"""The proxy's decisions about one request: who may pass (links, cookies, ``public``), whether
the session serves or must be woken first (held, or a waiting page for browsers), what counts
as activity, and the same answers for another proxy asking (forward-auth)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import quote

from dormant.engine import Engine
from dormant.errors import DormantError
from dormant.policy import ActivityKind, State
from dormant.proxy.access import CookieSigner, Verdict, set_cookie, token_hash
from dormant.proxy.directory import Route, SessionDirectory
from dormant.proxy.forwarding import Forwarded
from dormant.proxy.http1 import Head, Request, encode_head
from dormant.proxy.pages import is_navigation, waiting_page
from dormant.proxy.routing import RESERVED, Target, resolve
from dormant.proxy.traffic import IgnoreRule, counts_as_activity

#: A response streaming longer than this (or half the policy's ``sleep_after``, if shorter)
#: counts as background work (``proxy_activity.streaming``).
STREAMING_AFTER = 10.0
#: How far ahead each streaming refresh marks the session busy, and how often it refreshes.
BUSY_WINDOW = 120.0
BUSY_REFRESH = 60.0
UPSTREAM_HEADER = "x-dormant-upstream"


@dataclass(frozen=True, slots=True)
class GateAnswer:
    """An answer the proxy gives itself; with no ``body`` and status >= 400, an error."""

    status: int
    code: str = ""
    message: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes | None = None
    content_type: str | None = None


@dataclass(frozen=True, slots=True)
class Admission:
    route: Route | None
    #: None: forward the request to ``route.endpoint``.
    answer: GateAnswer | None = None


def _rules(route: Route) -> tuple[IgnoreRule, ...]:
    return tuple(IgnoreRule.parse(text) for text in route.template.proxy_ignore)


class Gate:
    def __init__(
        self, engine: Engine, directory: SessionDirectory, signer: CookieSigner, cookie_ttl: float
    ) -> None:
        self.engine = engine
        self.directory = directory
        self.signer = signer
        self.cookie_ttl = cookie_ttl
        self.domain: str | None = None
        self._rules: dict[str, tuple[IgnoreRule, ...]] = {}
        self._tasks: set[asyncio.Task[object]] = set()
        #: Whether a request without a cookie can be let through (``public``) or redirected
        #: (``login_url``) by some template; if not, it is refused without a look-up.
        self._anonymous_matter = any(
            t.public or t.login_url for t in engine.catalog.templates.values()
        )

    # -- admission --------------------------------------------------------------------------

    async def admit(self, request: Request, target: Target, fwd: Forwarded) -> Admission:
        token = target.link_token()
        verdict = self.signer.verdict(
            request.head.get("cookie"), target.session_id, self.engine.clock.now()
        )
        if token is None and verdict is not Verdict.ALLOWED and not self._anonymous_matter:
            # Refused from memory, before any store read: requests without a valid cookie
            # cannot make dormant read the store, nor learn whether a session exists.
            return Admission(None, _refusal(verdict, target.session_id))
        route = await self.directory.lookup(target.session_id)
        if route is None or route.state in (State.DELETED, State.DELETING):
            if token is not None:  # a link to nothing: as for a used one (nothing learnt)
                return Admission(None, _LINK_GONE)
            if verdict is not Verdict.ALLOWED:
                return Admission(None, _refusal(verdict, target.session_id))  # nothing learnt
            return Admission(None, GateAnswer(404, "not_found", "no such session"))
        if token is not None:
            return Admission(route, await self._exchange(token, target, fwd))
        refused = self._access(request, route, target, fwd)
        if refused is not None:
            return Admission(route, refused)
        if target.path.startswith(RESERVED):
            if target.path == RESERVED + "wait":
                return Admission(route, GateAnswer(200))
            return Admission(route, GateAnswer(404, "not_found", "no such dormant page"))
        if route.serving:
            self._activity(route, request.method, target.path)
            return Admission(route)
        if route.state is State.FAILED:
            return Admission(route, self._failed(route.error))
        if is_navigation(request):
            self._spawn(self.directory.wake(route, 0))
            events = f"{target.prefix}{RESERVED}wait"
            return Admission(
                route,
                GateAnswer(
                    503,
                    headers=[("retry-after", "5"), ("cache-control", "no-store")],
                    body=waiting_page(route.session_id, events, route.state.value),
                    content_type="text/html; charset=utf-8",
                ),
            )
        return await self._hold(request, route, target)

    async def _hold(self, request: Request, route: Route, target: Target) -> Admission:
        """Hold a request until the session serves, within the template's ``wake_timeout``."""
        timeout = route.template.wake_timeout
        outcome = await self.directory.wake(route, timeout)
        if outcome is None:
            return Admission(
                route,
                GateAnswer(
                    503,
                    "waking",
                    f"the session is still starting after {timeout:g}s; retry shortly",
                    headers=[("retry-after", "5")],
                ),
            )
        if outcome.state is State.DELETED:
            return Admission(None, GateAnswer(404, "not_found", "no such session"))
        if outcome.state is State.SLEEPING:  # the wake was refused (no free port, say)
            return Admission(
                route,
                GateAnswer(
                    503,
                    "unavailable",
                    f"the session cannot be woken now: {outcome.error or 'refused'}",
                    headers=[("retry-after", "30")],
                ),
            )
        if not outcome.ok:
            return Admission(route, self._failed(outcome.error, woke=True))
        fresh = await self.directory.lookup_fresh(route.session_id)
        if fresh is None or not fresh.serving:
            return Admission(
                fresh,
                GateAnswer(
                    503,
                    "waking",
                    "the session is not serving yet; retry shortly",
                    headers=[("retry-after", "2")],
                ),
            )
        self._activity(fresh, request.method, target.path)
        return Admission(fresh)

    def _failed(self, error: str | None, *, woke: bool = False) -> GateAnswer:
        what = "the wake failed" if woke else "the session failed and is not woken by traffic"
        return GateAnswer(502, "session_failed", f"{what}: {error or 'no error recorded'}")

    def _access(
        self, request: Request, route: Route, target: Target, fwd: Forwarded
    ) -> GateAnswer | None:
        if route.template.public:
            return None
        now = self.engine.clock.now()
        verdict = self.signer.verdict(request.head.get("cookie"), route.session_id, now)
        if verdict is Verdict.ALLOWED:
            return None
        login = route.template.login_url
        if verdict is Verdict.MISSING and login and is_navigation(request):
            here = f"{fwd.proto}://{fwd.host}{target.public_path()}"
            sep = "&" if "?" in login else "?"
            return GateAnswer(
                302, headers=[("location", f"{login}{sep}next={quote(here, safe='')}")]
            )
        return _refusal(verdict, route.session_id)

    async def _exchange(self, token: str, target: Target, fwd: Forwarded) -> GateAnswer:
        """A one-time link: its token becomes this session's cookie, then the clean URL."""
        now = self.engine.clock.now()
        try:
            owner = await self.engine.store.consume_link(token_hash(token), now)
        except DormantError as exc:
            return GateAnswer(503, "unavailable", f"the link cannot be checked now: {exc}")
        if owner != target.session_id:
            return _LINK_GONE
        expires = now + timedelta(seconds=self.cookie_ttl)
        cookie = set_cookie(
            self.signer.issue(target.session_id, expires),
            path=f"{target.prefix}/" if target.prefix else "/",
            max_age=int(self.cookie_ttl),
            secure=fwd.proto == "https",
        )
        return GateAnswer(
            302,
            headers=[
                ("location", target.without_token()),
                ("set-cookie", cookie),
                ("cache-control", "no-store"),
            ],
        )

    # -- activity ---------------------------------------------------------------------------

    def _activity(self, route: Route, method: str, path: str) -> None:
        rules = self._rules.get(route.template.name)
        if rules is None:
            rules = self._rules[route.template.name] = _rules(route)
        if rules and not counts_as_activity(rules, method, path):
            return
        with contextlib.suppress(DormantError):
            self.engine.record_activity(route.session_id, ActivityKind.REQUEST, source="proxy")

    def message_hook(self, route: Route) -> Callable[[], None]:
        """Client messages on a WebSocket: activity, at most once a second per connection."""
        last = 0.0

        def seen() -> None:
            nonlocal last
            now = time.monotonic()
            if now - last >= 1.0:
                last = now
                with contextlib.suppress(DormantError):
                    self.engine.record_activity(
                        route.session_id, ActivityKind.REQUEST, source="proxy-websocket"
                    )

        return seen

    def streaming_hook(self, route: Route) -> Callable[[float], None] | None:
        """A long response (a video, an SSE stream) to an open client marks the session busy,
        refreshed while it streams, up to the policy's ``max_busy``."""
        if not route.template.proxy_streaming:
            return None
        next_at = min(STREAMING_AFTER, route.sleep_after / 2)

        def streaming(elapsed: float) -> None:
            nonlocal next_at
            if elapsed < next_at or elapsed > route.max_busy:
                return
            next_at = elapsed + BUSY_REFRESH
            window = min(BUSY_WINDOW, route.max_busy - 1)
            until = self.engine.clock.now() + timedelta(seconds=window)
            self._spawn(self.engine.keepalive(route.session_id, until, busy=True))

        return streaming

    def _spawn(self, coro: Coroutine[Any, Any, object]) -> None:
        task: asyncio.Task[object] = asyncio.ensure_future(coro)
        self._tasks.add(task)

        def done(t: asyncio.Task[object]) -> None:
            self._tasks.discard(t)
            if not t.cancelled():
                t.exception()  # retrieved: logged by the directory where it matters

        task.add_done_callback(done)

    # -- the waiting page's progress --------------------------------------------------------

    async def progress(self, writer: asyncio.StreamWriter, route: Route | None) -> bool:
        """Server-sent events: the session's state as the wake goes on, then ``ready`` (or
        ``failed``). Pushed as it changes, not polled by the browser."""
        assert route is not None
        writer.write(
            encode_head(
                "HTTP/1.1 200 OK",
                [
                    ("content-type", "text/event-stream"),
                    ("cache-control", "no-store"),
                    ("connection", "close"),
                ],
            )
        )
        sid = route.session_id
        last: State | None = None
        quiet = 0
        for _ in range(900):
            current = await self.directory.lookup(sid)
            if current is None:
                writer.write(_event("failed", {"message": "the session was deleted"}))
                break
            if current.serving:
                writer.write(_event("ready", {"state": "running"}))
                break
            if current.state is State.FAILED:
                writer.write(_event("failed", {"message": current.error or "failed"}))
                break
            if current.state is not last or quiet >= 15:
                last, quiet = current.state, 0
                message = _MESSAGES.get(current.state, current.state.value)
                writer.write(_event("state", {"state": current.state.value, "message": message}))
            quiet += 1
            await writer.drain()
            outcome = await self.directory.wake(current, 1.0)
            if outcome is not None and not outcome.ok:
                # Refused (no capacity) or failed: say so once, do not try again in a loop.
                message = outcome.error or f"the session is {outcome.state.value}"
                writer.write(_event("failed", {"message": message}))
                break
            if outcome is not None:
                self.directory.forget(sid)
            else:
                await asyncio.sleep(0)
        await writer.drain()
        return False

    # -- forward-auth -----------------------------------------------------------------------

    async def forward_auth(self, request: Request, fwd: Forwarded) -> GateAnswer:
        """For nginx ``auth_request``, Caddy ``forward_auth``, Traefik ``ForwardAuth``: the
        session from the original host or URI; 200 with the upstream when it serves; else
        what dormant's proxy would answer (a waiting page with 503, 401, 403, 404), or, with
        ``?delegate=1`` (nginx, which passes on only 2xx, 401 and 403), 401 for all of them
        so that ``error_page 401`` hands the request to dormant's proxy."""
        query = request.target.partition("?")[2]
        delegate = "delegate=1" in query.split("&")
        # Traefik and Caddy set X-Forwarded-Uri (over the client's) but pass a client's
        # X-Original-URI along: theirs comes first. nginx sets X-Original-URI (see the example,
        # which also blanks X-Forwarded-Uri).
        uri = request.head.get("x-forwarded-uri") or request.head.get("x-original-uri") or "/"
        host = request.head.get("x-forwarded-host") or request.head.get("host")
        method = (
            request.head.get("x-original-method") or request.head.get("x-forwarded-method") or "GET"
        ).upper()
        if not uri.startswith("/"):
            return GateAnswer(400, "bad_request", "the original URI must be an absolute path")
        target = resolve(uri, host, self.domain)
        if not isinstance(target, Target):
            return GateAnswer(401 if delegate else 404, "not_found", "no session at this address")
        original = Request(method, uri, "HTTP/1.1", Head(("", "", ""), request.head.headers))
        if delegate:
            cookie = request.head.get("cookie")
            now = self.engine.clock.now()
            if (
                not self._anonymous_matter
                and self.signer.verdict(cookie, target.session_id, now) is not Verdict.ALLOWED
            ):
                return GateAnswer(401, "delegated", "dormant's proxy answers this request")
            route = await self.directory.lookup(target.session_id)
            if (
                route is None
                or not route.serving
                or target.link_token() is not None
                or target.path.startswith(RESERVED)
                or self._access(original, route, target, fwd) is not None
            ):
                return GateAnswer(401, "delegated", "dormant's proxy answers this request")
            self._activity(route, method, target.path)
            return self._upstream(route)
        if target.link_token() is None and not target.path.startswith(RESERVED):
            route = await self.directory.lookup(target.session_id)
            allowed = route is not None and self._access(original, route, target, fwd) is None
            if route is not None and allowed and route.serving:
                self._activity(route, method, target.path)
                return self._upstream(route)
            if route is not None and allowed and route.state is not State.FAILED:
                # Not serving: wake it now, and tell the caller at once rather than hold it.
                self._spawn(self.directory.wake(route, 0))
                if not is_navigation(original):
                    return GateAnswer(
                        503,
                        "waking",
                        "the session is starting; retry shortly",
                        headers=[("retry-after", "5")],
                    )
        admission = await self.admit(original, target, fwd)
        if admission.answer is None:
            assert admission.route is not None
            return self._upstream(admission.route)
        return admission.answer

    def _upstream(self, route: Route) -> GateAnswer:
        assert route.endpoint is not None
        return GateAnswer(
            200,
            headers=[
                (UPSTREAM_HEADER, f"{route.endpoint.host}:{route.endpoint.port}"),
                ("x-dormant-session", route.session_id),
            ],
            body=b"",
        )

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()


def _refusal(verdict: Verdict, session_id: str) -> GateAnswer:
    if verdict is Verdict.OTHER_SESSION:
        return GateAnswer(403, "forbidden", "this access cookie is for another session")
    return GateAnswer(
        401,
        "unauthorized",
        "this session needs its access cookie: open a link made by "
        f"POST /v1/sessions/{session_id}/links",
    )


_LINK_GONE = GateAnswer(401, "unauthorized", "this link was used already, or has expired")

_MESSAGES = {
    State.SLEEPING: "The session is asleep; waking it.",
    State.STOPPING: "The session was going to sleep; it will start again.",
    State.STARTING: "Starting the session…",
    State.CREATING: "Creating the session…",
}


def _event(name: str, data: object) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
