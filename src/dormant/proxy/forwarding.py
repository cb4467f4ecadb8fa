"""Moving one request to a session's endpoint and its answer back: heads rewritten (hop-by-hop
fields dropped, ``X-Forwarded-*`` set, dormant's access cookie removed), bodies streamed both
ways, keep-alive to the upstream, WebSocket upgrades turned into a tunnel."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from dormant.proxy.access import COOKIE
from dormant.proxy.http1 import (
    HOP_BY_HOP,
    BadMessage,
    Request,
    Response,
    copy_body,
    encode_head,
    parse_response,
    read_head,
)
from dormant.proxy.pages import reason
from dormant.proxy.traffic import FrameWatcher
from dormant.proxy.upstream import Upstream, UpstreamError, UpstreamPool
from dormant.runtimes import Endpoint


@dataclass(frozen=True, slots=True)
class Forwarded:
    """What the client is told about the hop: who it is, how it came, which prefix was cut;
    ``trusted``: the peer is a proxy dormant believes (its ``X-Forwarded-For`` is kept)."""

    client: str
    proto: str
    host: str
    prefix: str | None
    trusted: bool = False


@dataclass(slots=True)
class Result:
    """How a forwarded exchange ended."""

    status: int
    #: The client connection may serve another request.
    keep_alive: bool


#: Never removed because a peer named them in ``Connection``: a message's framing and host.
_FRAMING = frozenset({"content-length", "transfer-encoding", "host"})
#: Never passed to the client from a session (path mode: one origin for all sessions).
_SHARED_ORIGIN_UNSAFE = frozenset({"service-worker-allowed"})


def _strip_cookie(value: str) -> str | None:
    parts = [p for p in value.split(";") if p.strip().partition("=")[0] != COOKIE]
    joined = ";".join(parts).strip()
    return joined or None


def _scoped_cookie(value: str, prefix: str) -> str | None:
    """A session's ``Set-Cookie`` kept to its own path prefix (path mode), or None for one
    that would replace dormant's access cookie."""
    name = value.partition("=")[0].strip()
    if name == COOKIE:
        return None
    parts = [p.strip() for p in value.split(";")]
    path = "/"
    kept = [parts[0]]
    for attribute in parts[1:]:
        key, _, val = attribute.partition("=")
        if key.strip().lower() == "path":
            path = val.strip() or "/"
        elif attribute:
            kept.append(attribute)
    if not path.startswith("/"):
        path = "/"
    kept.insert(1, f"Path={prefix}{path}")
    return "; ".join(kept)


def upstream_head(request: Request, target: str, fwd: Forwarded) -> bytes:
    named = request.head.connection - _FRAMING  # fields the client marked as hop-by-hop
    headers: list[tuple[str, str]] = []
    prior_for: str | None = None
    for name, value in request.head.headers:
        if name == "x-forwarded-for" and fwd.trusted:
            prior_for = value
        if (
            name in HOP_BY_HOP
            or name in named
            or name.startswith("x-forwarded-")
            or name in ("expect", "content-length")
        ):
            continue
        if name == "cookie":
            stripped = _strip_cookie(value)
            if stripped is None:
                continue
            value = stripped
        headers.append((name, value))
    headers.append(("x-forwarded-for", f"{prior_for}, {fwd.client}" if prior_for else fwd.client))
    headers.append(("x-forwarded-proto", fwd.proto))
    headers.append(("x-forwarded-host", fwd.host))
    if fwd.prefix:
        headers.append(("x-forwarded-prefix", fwd.prefix))
    # The framing is written from what was parsed, never copied.
    if request.head.chunked:
        headers.append(("transfer-encoding", "chunked"))
    elif request.head.length is not None:
        headers.append(("content-length", str(request.head.length)))
    if request.wants_upgrade:
        headers.append(("connection", "upgrade"))
        headers.append(("upgrade", "websocket"))
    else:
        headers.append(("connection", "keep-alive"))
    return encode_head(f"{request.method} {target} HTTP/1.1", headers)


def client_head(
    response: Response,
    *,
    keep_alive: bool,
    upgrade: bool,
    prefix: str | None,
    chunked: bool,
) -> bytes:
    """The session's answer head as the client gets it: hop-by-hop fields dropped, framing
    written from what was parsed, the reason phrase dormant's own, and (path mode) its cookies
    kept to its prefix."""
    named = response.head.connection - _FRAMING
    headers: list[tuple[str, str]] = []
    for name, value in response.head.headers:
        if name in HOP_BY_HOP or name in named or name == "content-length":
            continue
        if prefix is not None:
            if name in _SHARED_ORIGIN_UNSAFE:
                continue
            if name == "set-cookie":
                scoped = _scoped_cookie(value, prefix)
                if scoped is None:
                    continue
                value = scoped
        elif name == "set-cookie" and value.partition("=")[0].strip() == COOKIE:
            continue
        headers.append((name, value))
    if upgrade:
        headers += [("connection", "upgrade"), ("upgrade", response.head.get("upgrade") or "")]
    else:
        if chunked:
            headers.append(("transfer-encoding", "chunked"))
        elif response.head.length is not None:
            headers.append(("content-length", str(response.head.length)))
        headers.append(("connection", "keep-alive" if keep_alive else "close"))
    return encode_head(f"HTTP/1.1 {response.status} {reason(response.status)}", headers)


#: Methods that may be sent again when a kept-alive connection turned out closed (RFC 9110 9.2.2).
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class Exchange:
    """One request forwarded on one upstream connection."""

    def __init__(
        self,
        pool: UpstreamPool,
        read_timeout: float,
        client_reader: asyncio.StreamReader,
        client_writer: asyncio.StreamWriter,
    ) -> None:
        self.pool = pool
        self.read_timeout = read_timeout
        self.reader = client_reader
        self.writer = client_writer

    async def _write_client(self, data: bytes) -> None:
        self.writer.write(data)
        # A client that stops reading does not hold its connection and the session's forever.
        await asyncio.wait_for(self.writer.drain(), self.read_timeout)

    async def forward(
        self,
        request: Request,
        endpoint: Endpoint,
        target: str,
        fwd: Forwarded,
        *,
        on_stream: Callable[[float], None] | None = None,
        on_message: Callable[[], None] | None = None,
    ) -> Result:
        """Raises :class:`UpstreamError` only before anything reached the client."""
        head = upstream_head(request, target, fwd)
        if request.wants_upgrade:
            return await self._upgrade(request, endpoint, head, on_message)
        conn = await self.pool.get(endpoint.host, endpoint.port)
        try:
            response = await self._send(conn, request, head)
        except _Stale:
            conn.close()
            conn = await self.pool.get(endpoint.host, endpoint.port, fresh=True)
            try:
                response = await self._send(conn, request, head)
            except _Stale:
                conn.close()
                raise UpstreamError("the session closed the connection without answering") from None
        except BaseException:
            conn.close()
            raise
        return await self._answer(request, conn, response, on_stream, fwd.prefix)

    def _retriable(self, conn: Upstream, request: Request) -> bool:
        return conn.reused and not request.has_body and request.method in _IDEMPOTENT

    async def _send(self, conn: Upstream, request: Request, head: bytes) -> Response:
        """Send the head and body; read the answer's head (after any 1xx)."""
        conn.writer.write(head)
        if request.has_body:
            if (request.head.get("expect") or "").lower() == "100-continue":
                # The proxy takes the body itself (the session never sees Expect): a client
                # waiting for the go-ahead gets it now rather than after its own timeout.
                await self._write_client(b"HTTP/1.1 100 Continue\r\n\r\n")
            try:  # a malformed body from the client (BadMessage) is the client's error
                await copy_body(
                    self.reader,
                    self._write_upstream(conn),
                    request.head,
                    timeout=self.read_timeout,
                )
            except TimeoutError:
                raise BadMessage(f"the request body stalled for {self.read_timeout:g}s") from None
            except (ConnectionError, OSError) as exc:
                raise UpstreamError(f"the connection to the session broke: {exc}") from None
        try:
            await conn.writer.drain()
            while True:
                data = await asyncio.wait_for(read_head(conn.reader), self.read_timeout)
                if data is None:
                    if self._retriable(conn, request):
                        raise _Stale()
                    raise UpstreamError("the session closed the connection without answering")
                response = parse_response(data)
                if 100 <= response.status < 200 and response.status != 101:
                    if request.version == "HTTP/1.1":  # 100 Continue, 103 Early Hints
                        await self._write_client(
                            client_head(
                                response,
                                keep_alive=True,
                                upgrade=False,
                                prefix=None,
                                chunked=False,
                            ).replace(b"connection: keep-alive\r\n", b"")
                        )
                    continue
                return response
        except TimeoutError:
            conn.close()
            raise UpstreamError(
                f"the session did not answer within {self.read_timeout:g}s", timeout=True
            ) from None
        except (ConnectionError, OSError) as exc:
            if self._retriable(conn, request):
                raise _Stale() from None
            raise UpstreamError(f"the connection to the session broke: {exc}") from None
        except BadMessage as exc:
            conn.close()
            raise UpstreamError(f"the session answered with invalid HTTP: {exc}") from None

    def _write_upstream(self, conn: Upstream) -> Callable[[bytes], asyncio.Future[None]]:
        async def write(data: bytes) -> None:
            conn.writer.write(data)
            await conn.writer.drain()

        return write  # type: ignore[return-value]

    async def _answer(
        self,
        request: Request,
        conn: Upstream,
        response: Response,
        on_stream: Callable[[float], None] | None,
        prefix: str | None,
    ) -> Result:
        has_body = response.has_body(request.method)
        until_close = has_body and not response.head.chunked and response.head.length is None
        # An HTTP/1.0 client cannot read chunks: it gets the data, then the end of the stream.
        dechunk = has_body and response.head.chunked and request.version != "HTTP/1.1"
        keep = request.keep_alive and not until_close and not dechunk
        reusable = response.keep_alive and not until_close
        await self._write_client(
            client_head(
                response,
                keep_alive=keep,
                upgrade=False,
                prefix=prefix,
                chunked=response.head.chunked and not dechunk,
            )
        )
        if has_body:
            started = time.monotonic()
            write = self._write_client
            if on_stream is not None:
                plain = write

                async def write(data: bytes) -> None:
                    on_stream(time.monotonic() - started)
                    await plain(data)

            try:
                await copy_body(
                    conn.reader,
                    write,
                    response.head,
                    until_close=until_close,
                    timeout=self.read_timeout,
                    dechunk=dechunk,
                )
            except BaseException:
                conn.close()
                return Result(response.status, keep_alive=False)
        if reusable:
            self.pool.put(conn)
        else:
            conn.close()
        return Result(response.status, keep_alive=keep)

    async def _upgrade(
        self,
        request: Request,
        endpoint: Endpoint,
        head: bytes,
        on_message: Callable[[], None] | None,
    ) -> Result:
        conn = await self.pool.get(endpoint.host, endpoint.port, fresh=True)
        try:
            response = await self._send(conn, request, head)
        except BaseException:
            conn.close()
            raise
        if response.status != 101:
            return await self._answer(request, conn, response, None, None)
        await self._write_client(
            client_head(response, keep_alive=False, upgrade=True, prefix=None, chunked=False)
        )
        watcher = FrameWatcher()

        async def client_to_upstream() -> None:
            while data := await self.reader.read(65536):
                if watcher.feed(data) and on_message is not None:
                    on_message()
                conn.writer.write(data)
                await conn.writer.drain()

        async def upstream_to_client() -> None:
            while data := await conn.reader.read(65536):
                await self._write_client(data)

        tasks = [
            asyncio.ensure_future(client_to_upstream()),
            asyncio.ensure_future(upstream_to_client()),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task
            conn.close()
        return Result(101, keep_alive=False)


class _Stale(Exception):
    """A kept-alive upstream connection turned out closed before it answered."""
