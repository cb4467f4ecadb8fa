"""HTTP/1.1 framing for the session proxy: heads parsed strictly, bodies streamed, never whole.

Everything here reads from a client or a session's container, both untrusted: a head is at
most :data:`MAX_HEAD` bytes, a request with both ``Content-Length`` and ``Transfer-Encoding``
(or any coding but ``chunked``) is refused (request smuggling), header names and values are
checked byte by byte, and chunk sizes are bounded.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from dormant.errors import DormantError

MAX_HEAD = 32 * 1024
MAX_HEADERS = 100
#: How much of a body is moved at once.
CHUNK = 64 * 1024
_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_HEX = re.compile(rb"^[0-9a-fA-F]{1,12}$")
_METHOD = re.compile(r"^[A-Z]{1,20}$")
#: Headers that describe one hop, never forwarded as they are (RFC 9110 7.6.1).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
    }
)


class BadMessage(DormantError):
    """A head or body that is not valid HTTP/1.1: the connection cannot be trusted any more."""

    code = "bad_request"
    status = 400


@dataclass(slots=True)
class Head:
    """A request or response head; header names are kept lower-case, in order."""

    first: tuple[str, str, str]
    headers: list[tuple[str, str]]
    #: ``Content-Length``, or None; ``chunked`` when the body is chunked.
    length: int | None = None
    chunked: bool = False
    connection: set[str] = field(default_factory=set)

    def get(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def get_all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]


@dataclass(slots=True)
class Request:
    method: str
    target: str
    version: str
    head: Head

    @property
    def keep_alive(self) -> bool:
        if "close" in self.head.connection:
            return False
        return self.version == "HTTP/1.1" or "keep-alive" in self.head.connection

    @property
    def wants_upgrade(self) -> bool:
        upgrade = (self.head.get("upgrade") or "").lower()
        return "upgrade" in self.head.connection and upgrade == "websocket"

    @property
    def has_body(self) -> bool:
        return self.head.chunked or bool(self.head.length)


@dataclass(slots=True)
class Response:
    version: str
    status: int
    reason: str
    head: Head

    def has_body(self, method: str) -> bool:
        return not (method == "HEAD" or self.status in (204, 304) or 100 <= self.status < 200)

    @property
    def keep_alive(self) -> bool:
        if "close" in self.head.connection:
            return False
        return self.version == "HTTP/1.1" or "keep-alive" in self.head.connection


async def read_head(reader: asyncio.StreamReader) -> bytes | None:
    """The bytes of one head (up to the blank line), None at a clean end of the stream."""
    try:
        data = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial.strip():
            return None
        raise BadMessage("the connection closed in the middle of a head") from None
    except asyncio.LimitOverrunError:
        raise BadMessage(f"the head is larger than {MAX_HEAD} bytes") from None
    if len(data) > MAX_HEAD:
        raise BadMessage(f"the head is larger than {MAX_HEAD} bytes")
    return data


def _parse_fields(lines: list[bytes]) -> Head:
    if len(lines) > MAX_HEADERS:
        raise BadMessage(f"more than {MAX_HEADERS} header fields")
    headers: list[tuple[str, str]] = []
    for line in lines:
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.match(name):
            raise BadMessage("a header field is malformed")
        value = value.strip(b" \t")
        if _BAD_VALUE.search(value):
            raise BadMessage("a header value holds control characters")
        headers.append((name.decode("ascii").lower(), value.decode("latin-1")))
    head = Head(("", "", ""), headers)
    lengths = {v.strip() for k, v in headers if k == "content-length"}
    codings = [c.strip().lower() for v in head.get_all("transfer-encoding") for c in v.split(",")]
    if codings:
        if lengths:
            raise BadMessage("both Content-Length and Transfer-Encoding")
        if codings != ["chunked"]:
            raise BadMessage("only the chunked transfer coding is accepted")
        head.chunked = True
    elif lengths:
        if len(lengths) > 1 or not all(
            x.isascii() and x.isdigit() and len(x) <= 15 for x in lengths
        ):
            raise BadMessage("Content-Length is not one non-negative number")
        head.length = int(lengths.pop())
    for text in head.get_all("connection"):
        head.connection.update(t.strip().lower() for t in text.split(",") if t.strip())
    return head


def parse_request(data: bytes) -> Request:
    lines = data[:-4].split(b"\r\n")
    try:
        method, target, version = lines[0].decode("ascii").split(" ")
    except (UnicodeDecodeError, ValueError):
        raise BadMessage("the request line is malformed") from None
    if not _METHOD.match(method) or version not in ("HTTP/1.1", "HTTP/1.0"):
        raise BadMessage("the request line is malformed")
    if not target.startswith("/") or any(c <= " " or c == "\x7f" for c in target):
        raise BadMessage("the request target must be an absolute path")
    head = _parse_fields(lines[1:])
    head.first = (method, target, version)
    if version == "HTTP/1.1" and len(head.get_all("host")) != 1:
        raise BadMessage("an HTTP/1.1 request needs exactly one Host header")
    return Request(method, target, version, head)


def parse_response(data: bytes) -> Response:
    lines = data[:-4].split(b"\r\n")
    try:
        version, status, *rest = lines[0].decode("latin-1").split(" ", 2)
        code = int(status)
    except ValueError:
        raise BadMessage("the status line is malformed") from None
    if version not in ("HTTP/1.1", "HTTP/1.0") or not 100 <= code <= 599:
        raise BadMessage("the status line is malformed")
    head = _parse_fields(lines[1:])
    head.first = (version, status, rest[0] if rest else "")
    return Response(version, code, rest[0] if rest else "", head)


def encode_head(first_line: str, headers: list[tuple[str, str]]) -> bytes:
    parts = [first_line]
    parts += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(parts) + "\r\n\r\n").encode("latin-1")


async def copy_body(
    reader: asyncio.StreamReader,
    write: Callable[[bytes], Awaitable[None]],
    head: Head,
    *,
    until_close: bool = False,
    timeout: float | None = None,
    dechunk: bool = False,
) -> None:
    """Move one message body from ``reader`` to ``write`` as it arrives: ``Content-Length``
    bytes; chunked framing checked and written again (or, ``dechunk``, only the data: for an
    HTTP/1.0 client); or (a response without either) everything until the sender closes."""
    if head.chunked:
        await _copy_chunked(reader, write, timeout, dechunk)
        return
    if head.length is not None:
        await _copy_exactly(reader, write, head.length, timeout, "the body ended early")
        return
    if until_close:
        while data := await asyncio.wait_for(reader.read(CHUNK), timeout):
            await write(data)


async def _copy_exactly(
    reader: asyncio.StreamReader,
    write: Callable[[bytes], Awaitable[None]],
    size: int,
    timeout: float | None,
    early: str,
) -> None:
    """``size`` bytes, as they arrive; ``early`` is the complaint if the stream ends first."""
    left = size
    while left:
        data = await asyncio.wait_for(reader.read(min(CHUNK, left)), timeout)
        if not data:
            raise BadMessage(early)
        left -= len(data)
        await write(data)


async def _copy_chunked(
    reader: asyncio.StreamReader,
    write: Callable[[bytes], Awaitable[None]],
    timeout: float | None,
    dechunk: bool,
) -> None:
    """Chunks are written again from what was parsed (size in hex, data, CRLF): extensions and
    trailers are dropped, so nothing the sender framed oddly reaches the other side as is."""
    while True:
        line = await asyncio.wait_for(_line(reader), timeout)
        size_text, _, extension = line[:-2].partition(b";")
        size_text = size_text.strip(b" \t")
        if not _HEX.match(size_text) or _BAD_VALUE.search(extension):
            raise BadMessage("a chunk size line is malformed")
        size = int(size_text, 16)
        if size == 0:
            break
        if not dechunk:
            await write(b"%x\r\n" % size)
        await _copy_exactly(reader, write, size, timeout, "a chunk ended early")
        try:
            end = await asyncio.wait_for(reader.readexactly(2), timeout)
        except asyncio.IncompleteReadError:
            raise BadMessage("a chunk ended early") from None
        if end != b"\r\n":
            raise BadMessage("a chunk's data is not followed by CRLF")
        if not dechunk:
            await write(b"\r\n")
    for _ in range(MAX_HEADERS + 1):  # trailers: checked, then dropped
        line = await asyncio.wait_for(_line(reader), timeout)
        if line == b"\r\n":
            if not dechunk:
                await write(b"0\r\n\r\n")
            return
        name, sep, value = line[:-2].partition(b":")
        if not sep or not _TOKEN.match(name) or _BAD_VALUE.search(value):
            raise BadMessage("a trailer field is malformed")
    raise BadMessage(f"more than {MAX_HEADERS} trailer fields")


async def _line(reader: asyncio.StreamReader) -> bytes:
    try:
        line = await reader.readuntil(b"\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        raise BadMessage("a chunked body is malformed") from None
    if len(line) > 4096:
        raise BadMessage("a chunk line is too long")
    return line
