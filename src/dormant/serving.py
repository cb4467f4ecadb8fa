"""The HTTP server's bounds: read timeouts, a connection cap, file descriptors, accept errors.

uvicorn's h11 protocol times out neither slow request headers nor slow request bodies, and a few
hundred clients sending a byte every few seconds hold every file descriptor the process has. Its
``limit_concurrency`` only answers (plain text) once a request's headers are in. So ``dormant
serve`` runs uvicorn with :class:`GuardedH11Protocol`, which:

- gives a request ``header_timeout`` seconds to finish its headers, counted from its first byte
  (from the connection, for a new one), and ``body_timeout`` seconds from the end of its headers
  to finish its body; past either it answers 408 ``request_timeout`` (when the client has sent
  something) and closes the connection. Idle keep-alive connections keep uvicorn's own timeout.
- caps open connections (HTTP and WebSocket) at ``max_connections``. At the cap a new connection
  takes the place of the one that has waited longest for its request headers (a slow or idle
  client) if that one has waited at least ``EVICT_AFTER`` seconds; otherwise the new one is
  answered 503 ``capacity_exhausted`` with ``Retry-After`` once its headers are in (within
  ``REFUSE_TIMEOUT``), and closed.

:func:`raise_open_files` raises ``RLIMIT_NOFILE`` to its hard limit, and :func:`connection_cap`
keeps the cap under it. :class:`AcceptErrorFilter` lets asyncio's "socket.accept() out of system
resource" (EMFILE) through at most once a second: on Python 3.11 a listening socket that runs
out of descriptors logs it up to ``backlog`` times per attempt, hundreds of thousands of lines.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, ClassVar

import h11
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from dormant.api.console.live import ENDLESS
from dormant.errors import InvalidInput

log = logging.getLogger("dormant.serving")

#: A connection waiting for its headers at least this long may be closed to make room.
EVICT_AFTER = 1.0
#: How long a connection refused at the cap has to send its headers and read the 503.
REFUSE_TIMEOUT = 2.0
#: ``Retry-After`` of the 503 answered at the connection cap (seconds).
RETRY_AFTER = 5
#: Below this many open files, ``serve`` warns at start.
LOW_NOFILE = 4096
ACCEPT_ERROR = "socket.accept() out of system resource"


@dataclass(frozen=True, slots=True)
class HttpLimits:
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_connections: int = 2000

    def __post_init__(self) -> None:
        if not (0 < self.header_timeout <= 3600 and 0 < self.body_timeout <= 3600):
            raise ValueError("header and body timeouts must be between 0 and 3600 seconds")
        if self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")


def error_bytes(
    status: int, code: str, message: str, headers: tuple[tuple[str, str], ...] = ()
) -> bytes:
    """A whole HTTP/1.1 response in dormant's error shape, for the protocol to write itself."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    lines = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
        *(f"{name}: {value}" for name, value in headers),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


_OVER_CAPACITY_MESSAGE = "the server is at its connection limit; try again shortly"
_OVER_CAPACITY = error_bytes(
    503,
    "capacity_exhausted",
    _OVER_CAPACITY_MESSAGE,
    (("retry-after", str(RETRY_AFTER)),),
)


async def over_capacity(scope: Any, receive: Any, send: Any) -> None:
    """The ASGI app a connection refused at the cap gets instead of dormant's."""
    body = json.dumps(
        {"error": {"code": "capacity_exhausted", "message": _OVER_CAPACITY_MESSAGE}}
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", str(RETRY_AFTER).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with header and body timeouts and a connection cap.

    Use :func:`protocol_for`: each server needs its own subclass (limits and waiting list).
    """

    limits: ClassVar[HttpLimits] = HttpLimits()
    #: Connections waiting for request headers, oldest first, with the loop time they started.
    waiting: ClassVar[dict[GuardedH11Protocol, float]] = {}
    #: Connections refused at the cap, waiting for their headers to be answered 503.
    refusing: ClassVar[set[GuardedH11Protocol]] = set()

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._got_bytes = False  # of the request whose headers we wait for
        self._refusing = False
        self._upgraded = False  # to a WebSocket: the connection is no longer ours to time

    # uvicorn's protocol interface ----------------------------------------------------------

    def connection_made(  # type: ignore[override]
        self, transport: asyncio.Transport
    ) -> None:
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections and not self._evict_oldest():
            if len(self.refusing) >= max(8, self.limits.max_connections // 8):
                # Even the refusals are at their bound: no descriptor to spare for waiting.
                transport.write(_OVER_CAPACITY)
                transport.close()
                return
            self._refusing = True
            self.refusing.add(self)
            self.app = over_capacity
            self._header_timer = self.loop.call_later(
                min(REFUSE_TIMEOUT, self.limits.header_timeout), self._headers_late
            )
            return
        self._await_headers()
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:
            self._got_bytes = True
            self._arm_header_timer()
        super().data_received(data)
        self._sync()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.transport.is_closing():
            return
        if self.conn.their_state is h11.IDLE and not self._refusing:
            self._await_headers()
            if self.conn.trailing_data[0]:  # part of a pipelined request is already here
                self._got_bytes = True
                self._arm_header_timer()
        self._sync()

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        self._upgraded = True
        self._stop_timers()
        if self._refusing:
            self.transport.write(_OVER_CAPACITY)
            self.transport.close()
            return
        super().handle_websocket_upgrade(event)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timers()
        super().connection_lost(exc)

    def shutdown(self) -> None:
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and cycle.scope.get(ENDLESS):
            # An endless response (the console's event stream) would hold a graceful shutdown
            # for its whole timeout: close it now (the app sees the client leave; browsers
            # reconnect to whichever server answers next).
            self.transport.close()
            return
        super().shutdown()

    # timers ----------------------------------------------------------------------------------

    def _await_headers(self) -> None:
        self._got_bytes = False
        self.waiting.pop(self, None)
        self.waiting[self] = self.loop.time()

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(
                self.limits.header_timeout, self._headers_late
            )

    def _sync(self) -> None:
        """Follow the request's progress: headers in, body in."""
        state = self.conn.their_state
        if state is h11.IDLE or self._upgraded or self.transport.is_closing():
            return
        self.waiting.pop(self, None)
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        if state is h11.SEND_BODY:
            if self._body_timer is None:
                self._body_timer = self.loop.call_later(self.limits.body_timeout, self._body_late)
        elif self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _stop_timers(self) -> None:
        self.waiting.pop(self, None)
        self.refusing.discard(self)
        for timer in (self._header_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._header_timer = self._body_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.conn.their_state is not h11.IDLE or self._upgraded:
            return
        self._close_waiting(f"request headers not received within {self.limits.header_timeout:g}s")

    def _close_waiting(self, message: str) -> None:
        self._stop_timers()
        if self.transport.is_closing():
            return
        if self._got_bytes:
            self.transport.write(error_bytes(408, "request_timeout", message))
        self.transport.close()

    def _body_late(self) -> None:
        self._body_timer = None
        state = self.conn.their_state
        if self._upgraded or self.transport.is_closing() or state is not h11.SEND_BODY:
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_started:
            # The app is waiting in receive(): it gets a disconnect and its answer goes nowhere.
            cycle.disconnected = True
            cycle.message_event.set()
            message = f"request body not received within {self.limits.body_timeout:g}s"
            self.transport.write(error_bytes(408, "request_timeout", message))
        self._stop_timers()
        self.transport.close()

    def _evict_oldest(self) -> bool:
        """Close the connection that has waited longest for its headers, if it waited enough."""
        for other, since in self.waiting.items():
            if self.loop.time() - since < EVICT_AFTER:
                return False
            other._close_waiting("closed to make room: the server is at its connection limit")
            return True
        return False


def protocol_for(limits: HttpLimits) -> type[GuardedH11Protocol]:
    """A protocol class for one server: its limits and its own waiting list."""

    class Protocol(GuardedH11Protocol):
        pass

    Protocol.limits = limits
    Protocol.waiting = {}
    Protocol.refusing = set()
    return Protocol


# file descriptors and accept errors ---------------------------------------------------------


def raise_open_files(wanted: int | None = None) -> tuple[int, int]:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit (or ``wanted``); (soft, hard) after."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if wanted is not None:
        target = min(target, wanted)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit to %d: %s", target, exc)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft, hard


def connection_cap(wanted: int, open_files: int) -> int:
    """The connection cap under an open-file limit: a quarter (at least 64) stays for the
    database, the runtimes, session processes and logs."""
    spare = max(64, open_files // 4)
    return min(wanted, max(16, open_files - spare))


class AcceptErrorFilter(logging.Filter):
    """Lets asyncio's accept error (EMFILE, ENFILE, ENOBUFS, ENOMEM) through at most once per
    ``interval``, with how many were held back since, and without the repeated traceback."""

    def __init__(self, interval: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.interval = interval
        self.clock = clock
        self.suppressed = 0
        self._last: float | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if not isinstance(record.msg, str) or not record.msg.startswith(ACCEPT_ERROR):
            return True
        now = self.clock()
        if self._last is not None and now - self._last < self.interval:
            self.suppressed += 1
            return False
        self._last = now
        detail = record.exc_info[1] if record.exc_info else None
        record.msg = f"{ACCEPT_ERROR}: {detail}" if detail is not None else ACCEPT_ERROR
        record.args = ()
        record.exc_info = None
        record.exc_text = None
        record.suppressed = self.suppressed  # how many were held back since the last one
        self.suppressed = 0
        return True


def install_accept_error_filter(interval: float = 1.0) -> AcceptErrorFilter:
    logger = logging.getLogger("asyncio")
    for existing in logger.filters:
        if isinstance(existing, AcceptErrorFilter):
            return existing
    accept_filter = AcceptErrorFilter(interval)
    logger.addFilter(accept_filter)
    return accept_filter


def bind_listener(host: str, port: int) -> socket.socket:
    """The API's listening socket, bound now: ``serve`` binds before anything else happens
    (migrations, reconciling containers), so a second server on a taken port leaves no trace."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise InvalidInput(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def serve_http(
    app: Any, host: str, port: int, limits: HttpLimits, sock: socket.socket | None = None
) -> None:
    """Run ``app`` with uvicorn within ``limits``, after raising the open-file limit, on
    ``sock`` (bound by :func:`bind_listener`) or a socket bound now."""
    import uvicorn

    soft, hard = raise_open_files()
    cap = connection_cap(limits.max_connections, soft)
    if hard < LOW_NOFILE:
        log.warning(
            "the open-file limit is low (%d, hard limit %d): serving at most %d connections; "
            "raise it (ulimit -n, LimitNOFILE=) for more",
            soft,
            hard,
            cap,
        )
    elif cap < limits.max_connections:
        log.warning(
            "the open-file limit (%d) allows %d connections, not %d",
            soft,
            cap,
            limits.max_connections,
        )
    limits = HttpLimits(limits.header_timeout, limits.body_timeout, cap)
    install_accept_error_filter()
    log.info(
        "http limits: %d connections, headers within %gs, bodies within %gs, %d open files",
        limits.max_connections,
        limits.header_timeout,
        limits.body_timeout,
        soft,
    )
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol_for(limits),
        # Also how many connections asyncio accepts in one go: under a low open-file limit, a
        # burst of connections must not take every descriptor before any of them is looked at.
        backlog=min(2048, cap),
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
    )
    uvicorn.Server(config).run(sockets=[sock or bind_listener(host, port)])
