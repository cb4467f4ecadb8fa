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

    async def get(self, host: str, port: int, *, fresh: bool = False) -> Upstream:
        key = (host, port)
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle and not fresh:
            conn = idle.pop()
            if now - conn.idle_since < IDLE_SECONDS and not conn.reader.at_eof():
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
        """Keep a connection whose last response was read in full for the next request."""
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) >= MAX_IDLE or conn.reader.at_eof():
            conn.close()
            return
        conn.idle_since = time.monotonic()
        idle.append(conn)

    def drop(self, host: str, port: int) -> None:
        """Forget an endpoint's idle connections (its session stopped or moved)."""
        for conn in self._idle.pop((host, port), []):
            conn.close()

    def close(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()
