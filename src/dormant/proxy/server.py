"""The session proxy: ``DORMANT_PROXY_PORT`` serves every session's own traffic, wakes sleeping
sessions on request, counts traffic as activity, and admits only holders of a session's cookie.

One asyncio server in the ``dormant serve`` process; per connection a loop of requests (HTTP/1.1
keep-alive). What the proxy answers itself (errors, the waiting page, redirects) is written by
:meth:`SessionProxy._reply`; everything else is forwarded by :mod:`dormant.proxy.forwarding`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request as StarletteRequest
from starlette.responses import Response

from dormant.engine import Engine
from dormant.errors import DormantError
from dormant.proxy.access import CookieSigner
from dormant.proxy.directory import SessionDirectory
from dormant.proxy.forwarding import Exchange, Forwarded
from dormant.proxy.gate import Gate, GateAnswer
from dormant.proxy.http1 import (
    MAX_HEAD,
    BadMessage,
    Head,
    Request,
    encode_head,
    parse_request,
    read_head,
)
from dormant.proxy.pages import error_body, reason
from dormant.proxy.routing import RESERVED, Redirect, resolve
from dormant.proxy.upstream import UpstreamError, UpstreamPool

log = logging.getLogger("dormant.proxy")


@dataclass(frozen=True, slots=True)
class ProxySettings:
    host: str = "127.0.0.1"
    port: int = 8081
    #: Route by host too: ``{session}.{domain}``.
    domain: str | None = None
    #: How clients reach the proxy (links and the API's ``url``); default ``http://host:port``.
    public_url: str | None = None
    connect_timeout: float = 5.0
    read_timeout: float = 300.0
    #: A kept-alive client connection idle this long is closed; a head must arrive within it.
    idle_timeout: float = 75.0
    cookie_ttl: float = 86400.0
    #: Believe ``X-Forwarded-For``/``-Proto`` from these peers (a TLS terminator in front).
    trusted_peers: frozenset[str] = frozenset({"127.0.0.1", "::1"})
    max_connections: int = 10_000

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")


class SessionProxy:
    def __init__(self, engine: Engine, signer: CookieSigner, settings: ProxySettings) -> None:
        self.engine = engine
        self.settings = settings
        self.directory = SessionDirectory(engine)
        self.pool = UpstreamPool(settings.connect_timeout)
        self.directory.on_gone.append(lambda e: self.pool.drop(e.host, e.port))
        self.gate = Gate(engine, self.directory, signer, settings.cookie_ttl)
        self.gate.domain = settings.domain
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()
        #: Requests by how they ended (see :data:`OUTCOMES`), for the metrics.
        self.outcomes: dict[str, int] = dict.fromkeys(OUTCOMES, 0)

    async def start(self, sock: socket.socket | None = None) -> None:
        if sock is None:
            self._server = await asyncio.start_server(
                self._client,
                self.settings.host,
                self.settings.port,
                limit=MAX_HEAD,
                backlog=1024,
            )
        else:
            self._server = await asyncio.start_server(
                self._client, sock=sock, limit=MAX_HEAD, backlog=1024
            )
        log.info("session proxy listening on %s:%d", self.settings.host, self.settings.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._clients):
            task.cancel()
        for task in list(self._clients):
            with contextlib.suppress(BaseException):
                await task
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
        self.pool.close()
        self.directory.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._clients) >= self.settings.max_connections:
            writer.close()
            return
        self._clients.add(task)
        peer = writer.get_extra_info("peername")
        client = peer[0] if isinstance(peer, tuple) else "unknown"
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            exchange = Exchange(self.pool, self.settings.read_timeout, reader, writer)
            while True:
                try:
                    data = await asyncio.wait_for(read_head(reader), self.settings.idle_timeout)
                    if data is None:
                        break
                    request = parse_request(data)
                except TimeoutError:
                    break
                except BadMessage as exc:
                    status = 431 if "larger than" in str(exc) else 400
                    await self._reply(writer, None, status, "bad_request", str(exc), close=True)
                    break
                try:
                    keep = await self._handle(request, client, exchange, writer)
                except BadMessage as exc:
                    await self._reply(writer, request, 400, "bad_request", str(exc), close=True)
                    break
                except DormantError as exc:  # the store, say, cannot answer now
                    log.warning("session proxy: %s %s: %s", request.method, request.target, exc)
                    await self._reply(
                        writer,
                        request,
                        503,
                        "unavailable",
                        f"dormant cannot answer this now: {exc}",
                        [("retry-after", "5")],
                        close=True,
                    )
                    break
                if not keep:
                    break
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        except Exception:
            log.exception("session proxy: a connection failed")
        finally:
            self._clients.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    def _forwarded(self, request: Request, client: str, prefix: str) -> Forwarded:
        proto = "http"
        if client in self.settings.trusted_peers:
            claimed = (request.head.get("x-forwarded-proto") or "").lower()
            if claimed in ("http", "https"):
                proto = claimed
        trusted = client in self.settings.trusted_peers
        return Forwarded(client, proto, request.head.get("host") or "", prefix or None, trusted)

    async def _handle(
        self, request: Request, client: str, exchange: Exchange, writer: asyncio.StreamWriter
    ) -> bool:
        """Serve one request; whether the connection may serve another."""
        path = request.target.partition("?")[0]
        if path == "/v1/forward-auth":
            answer = await self.gate.forward_auth(request, self._forwarded(request, client, ""))
            return await self._send(writer, request, answer)
        resolved = resolve(request.target, request.head.get("host"), self.settings.domain)
        if resolved is None:
            return await self._reply(
                writer, request, 404, "not_found", "no session at this address"
            )
        if isinstance(resolved, Redirect):
            answer = GateAnswer(308, headers=[("location", resolved.location)])
            return await self._send(writer, request, answer)
        fwd = self._forwarded(request, client, resolved.prefix)
        decision = await self.gate.admit(request, resolved, fwd)
        if decision.answer is not None:
            if resolved.path.startswith(RESERVED) and decision.answer.status == 200:
                self.outcomes["waiting"] += 1
                return await self.gate.progress(writer, decision.route)
            return await self._send(writer, request, decision.answer)
        route = decision.route
        assert route is not None and route.endpoint is not None
        try:
            result = await exchange.forward(
                request,
                route.endpoint,
                resolved.upstream_target,
                fwd,
                on_stream=self.gate.streaming_hook(route),
                on_message=self.gate.message_hook(route),
            )
        except UpstreamError as exc:
            # Stopped or moved meanwhile: read it again next time, drop its idle connections.
            self.directory.forget(resolved.session_id)
            self.pool.drop(route.endpoint.host, route.endpoint.port)
            status = 504 if exc.timeout else 502
            code = "gateway_timeout" if exc.timeout else "bad_gateway"
            return await self._reply(writer, request, status, code, str(exc))
        self.outcomes["forwarded"] += 1
        return result.keep_alive

    async def _send(
        self, writer: asyncio.StreamWriter, request: Request, answer: GateAnswer
    ) -> bool:
        if answer.body is None and answer.status >= 400:
            return await self._reply(
                writer, request, answer.status, answer.code, answer.message, answer.headers
            )
        body = answer.body or b""
        headers = list(answer.headers)
        if answer.content_type:
            headers.append(("content-type", answer.content_type))
        self._count(answer.status, answer.code)
        return await self._write(writer, request, answer.status, headers, body, close=False)

    async def _reply(
        self,
        writer: asyncio.StreamWriter,
        request: Request | None,
        status: int,
        code: str,
        message: str,
        headers: list[tuple[str, str]] | None = None,
        *,
        close: bool = False,
    ) -> bool:
        self._count(status, code)
        content_type, body = error_body(request, status, code, message)
        out = [*(headers or []), ("content-type", content_type), ("cache-control", "no-store")]
        return await self._write(writer, request, status, out, body, close=close)

    def stats(self) -> dict[str, Any]:
        return {"outcomes": dict(self.outcomes), "wakes": self.directory.wakes_started}

    def _count(self, status: int, code: str) -> None:
        self.outcomes[_outcome(status, code)] += 1

    async def _write(
        self,
        writer: asyncio.StreamWriter,
        request: Request | None,
        status: int,
        headers: list[tuple[str, str]],
        body: bytes,
        *,
        close: bool,
    ) -> bool:
        """Write a whole answer; whether the connection may serve another request."""
        keep = not close and request is not None and request.keep_alive
        if request is not None and request.has_body:
            # Not forwarded: its body is left unread, so this connection cannot carry another.
            keep = False
        head = encode_head(
            f"HTTP/1.1 {status} {reason(status)}",
            [
                *headers,
                ("content-length", str(len(body))),
                ("connection", "keep-alive" if keep else "close"),
            ],
        )
        if request is not None and request.method == "HEAD":
            body = b""
        writer.write(head + body)
        await writer.drain()
        return keep


#: How a request to the proxy ended: passed to the session; answered by the proxy itself with
#: 2xx (forward-auth allowed it), a redirect, a refusal (401/403), 404, the waiting page or a
#: hold that ran out (503 waking), another 503, 502/504, or 400/431.
OUTCOMES = (
    "forwarded",
    "allowed",
    "redirected",
    "refused",
    "not_found",
    "waiting",
    "unavailable",
    "bad_gateway",
    "bad_request",
)


def _outcome(status: int, code: str) -> str:
    if status < 300:
        return "allowed"
    if status < 400:
        return "redirected"
    if status in (401, 403):
        return "refused"
    if status == 404:
        return "not_found"
    if status == 503:
        return "waiting" if code in ("", "waking") else "unavailable"
    if status in (502, 504):
        return "bad_gateway"
    return "bad_request"


def forward_auth_route(proxy: SessionProxy) -> Callable[[StarletteRequest], Awaitable[Response]]:
    """``GET /v1/forward-auth`` on the API's port too (the proxy's port answers it faster)."""

    async def forward_auth(request: StarletteRequest) -> Response:
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw]
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        ours = Request("GET", target, "HTTP/1.1", Head(("GET", target, "HTTP/1.1"), headers))
        client = request.client.host if request.client else "unknown"
        answer = await proxy.gate.forward_auth(ours, proxy._forwarded(ours, client, ""))
        if answer.body is None and answer.status >= 400:
            content_type, body = error_body(ours, answer.status, answer.code, answer.message)
        else:
            content_type, body = answer.content_type or "text/plain", answer.body or b""
        return Response(body, answer.status, headers=dict(answer.headers), media_type=content_type)

    return forward_auth
