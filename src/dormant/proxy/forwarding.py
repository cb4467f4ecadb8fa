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
from dormant.proxy.traffic import FrameWatcher
from dormant.proxy.upstream import Upstream, UpstreamError, UpstreamPool
from dormant.runtimes import Endpoint

#: Not passed to the session: hop-by-hop fields, and Expect (the proxy answers it itself).
_NOT_PASSED = HOP_BY_HOP | {"expect"}


@dataclass(frozen=True, slots=True)
class Forwarded:
    """What the client is told about the hop: who it is, how it came, which prefix was cut."""

    client: str
    proto: str
    host: str
    prefix: str | None


@dataclass(slots=True)
class Result:
    """How a forwarded exchange ended."""

    status: int
    #: The client connection may serve another request.
    keep_alive: bool
    #: The answer's head reached the client (no error page can be sent any more).
    answered: bool = True


def _strip_cookie(value: str) -> str | None:
    parts = [p for p in value.split(";") if p.strip().partition("=")[0] != COOKIE]
    joined = ";".join(parts).strip()
    return joined or None


def upstream_head(request: Request, target: str, fwd: Forwarded) -> bytes:
    named = {t for t in request.head.connection}  # fields the client marked as hop-by-hop
    headers: list[tuple[str, str]] = []
    prior_for: str | None = None
    for name, value in request.head.headers:
        if (
            name in HOP_BY_HOP
            or name in named
            or name.startswith("x-forwarded-")
            or name == "expect"
        ):
            if name == "x-forwarded-for":
                prior_for = value
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
    if request.head.chunked:
        headers.append(("transfer-encoding", "chunked"))
    if request.wants_upgrade:
        headers.append(("connection", "upgrade"))
        headers.append(("upgrade", "websocket"))
    else:
        headers.append(("connection", "keep-alive"))
    return encode_head(f"{request.method} {target} HTTP/1.1", headers)


def client_head(response: Response, *, keep_alive: bool, upgrade: bool) -> bytes:
    named = set(response.head.connection)
    headers = [(n, v) for n, v in response.head.headers if n not in HOP_BY_HOP and n not in named]
    if upgrade:
        headers += [("connection", "upgrade"), ("upgrade", response.head.get("upgrade") or "")]
    else:
        if response.head.chunked:
            headers.append(("transfer-encoding", "chunked"))
        headers.append(("connection", "keep-alive" if keep_alive else "close"))
    return encode_head(f"HTTP/1.1 {response.status} {response.reason}".rstrip(), headers)


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
        await self.writer.drain()

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
        return await self._answer(request, conn, response, on_stream)

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
            except (ConnectionError, OSError) as exc:
                raise UpstreamError(f"the connection to the session broke: {exc}") from None
        try:
            await conn.writer.drain()
            while True:
                data = await asyncio.wait_for(read_head(conn.reader), self.read_timeout)
                if data is None:
                    if conn.reused and not request.has_body:
                        raise _Stale()
                    raise UpstreamError("the session closed the connection without answering")
                response = parse_response(data)
                if 100 <= response.status < 200 and response.status != 101:
                    await self._write_client(data)  # 100 Continue, 103 Early Hints
                    continue
                return response
        except TimeoutError:
            conn.close()
            raise UpstreamError(
                f"the session did not answer within {self.read_timeout:g}s", timeout=True
            ) from None
        except (ConnectionError, OSError) as exc:
            if conn.reused and not request.has_body:
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
    ) -> Result:
        has_body = response.has_body(request.method)
        until_close = has_body and not response.head.chunked and response.head.length is None
        keep = request.keep_alive and not until_close
        reusable = response.keep_alive and not until_close
        await self._write_client(client_head(response, keep_alive=keep, upgrade=False))
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
            return await self._answer(request, conn, response, None)
        await self._write_client(client_head(response, keep_alive=False, upgrade=True))
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
