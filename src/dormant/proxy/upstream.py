"""Connections to sessions' endpoints, kept alive between requests (a small idle pool per
endpoint), opened within the connect timeout."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

from dormant.proxy.http1 import MAX_HEAD

#: Idle connections kept per endpoint, and for how long.
MAX_IDLE = 32
IDLE_SECONDS = 30.0


class UpstreamError(Exception):
    """The session's endpoint could not be reached: ``timeout`` or refused/reset."""

    def __init__(self, message: str, *, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout


@dataclass(slots=True)
class Upstream:
    key: tuple[str, int]
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    #: Served a request before: a failure on it may be a keep-alive race, worth one retry.
    reused: bool = False
    idle_since: float = 0.0

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


@dataclass
class UpstreamPool:
    connect_timeout: float = 5.0
    _idle: dict[tuple[str, int], list[Upstream]] = field(default_factory=dict)
    _swept: float = 0.0

    async def get(self, host: str, port: int, *, fresh: bool = False) -> Upstream:
        key = (host, port)
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle and not fresh:
            conn = idle.pop()
            if now - conn.idle_since < IDLE_SECONDS and _clean(conn):
                conn.reused = True
                return conn
            conn.close()
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, limit=MAX_HEAD), self.connect_timeout
            )
        except TimeoutError:
            raise UpstreamError(
                f"the session did not accept a connection within {self.connect_timeout:g}s",
                timeout=True,
            ) from None
        except OSError as exc:
            raise UpstreamError(
                f"the session refused the connection: {exc.strerror or exc}"
            ) from None
        return Upstream(key, reader, writer)

    def put(self, conn: Upstream) -> None:
        """Keep a connection whose last response was read in full for the next request (not
        one that holds bytes nobody asked for: the next answer would not be its own)."""
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) >= MAX_IDLE or not _clean(conn):
            conn.close()
            return
        now = time.monotonic()
        conn.idle_since = now
        idle.append(conn)
        if now - self._swept > IDLE_SECONDS:
            self.sweep(now)

    def sweep(self, now: float) -> None:
        """Close connections idle too long (their session may have moved or stopped)."""
        self._swept = now
        for key in list(self._idle):
            kept = []
            for conn in self._idle[key]:
                if now - conn.idle_since < IDLE_SECONDS and _clean(conn):
                    kept.append(conn)
                else:
                    conn.close()
            if kept:
                self._idle[key] = kept
            else:
                del self._idle[key]

    def drop(self, host: str, port: int) -> None:
        """Forget an endpoint's idle connections (its session stopped or moved)."""
        for conn in self._idle.pop((host, port), []):
            conn.close()

    def close(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()


def _clean(conn: Upstream) -> bool:
    """Open, and nothing unread waiting on it."""
    buffered = getattr(conn.reader, "_buffer", b"")
    return not conn.reader.at_eof() and not buffered and not conn.writer.is_closing()
