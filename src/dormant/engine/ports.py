"""Host ports from ``DORMANT_PORT_RANGE``: never handed out twice, released on delete and, for
runtimes that bind the port at start (``Runtime.ports_follow_start``), while a session sleeps or
has failed; a wake takes a free one again."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
from collections.abc import Awaitable, Callable

from dormant.errors import CapacityExhausted, Conflict, InvalidInput

log = logging.getLogger("dormant.engine")

#: Writes racing other instances for the same port try this many ports.
PORT_ATTEMPTS = 5


class PortTaken(Conflict):
    """The port picked was taken by another instance's session meanwhile."""


def parse_port_range(text: str) -> range:
    try:
        low_s, high_s = text.split("-", 1)
        low, high = int(low_s), int(high_s)
    except ValueError:
        raise InvalidInput(f"port range must look like 8000-8100, got {text!r}") from None
    if not 1024 <= low <= high <= 65535:
        raise InvalidInput(f"port range {text!r} must lie within 1024-65535, low <= high")
    return range(low, high + 1)


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with contextlib.suppress(OSError):
            sock.bind(("127.0.0.1", port))
            return True
    return False


class PortAllocator:
    def __init__(self, ports: range, used: Callable[[], Awaitable[set[int]]]) -> None:
        self.ports = ports
        self._used = used
        self._lock = asyncio.Lock()
        self._reserved: set[int] = set()
        # Start anywhere: replicas starting together then rarely pick the same port.
        self._next = random.randrange(len(ports)) if len(ports) else 0

    async def allocate(self) -> int:
        """A port no live session holds and nothing else on this host listens on.

        The port stays reserved in memory until :meth:`settle` (the session row holds it then)."""
        async with self._lock:
            taken = await self._used() | self._reserved
            n = len(self.ports)
            for i in range(n):
                port = self.ports[(self._next + i) % n]
                if port not in taken and _bindable(port):
                    # Round-robin so a port just freed is not reused at once by another user.
                    self._next = (self._next + i + 1) % n
                    self._reserved.add(port)
                    return port
        message = (
            f"no free port in {self.ports.start}-{self.ports.stop - 1}: "
            f"{len(taken)} held by sessions; delete sessions or widen DORMANT_PORT_RANGE"
        )
        log.warning("refused: %s", message)  # the caller answers 503: say why, here, once
        raise CapacityExhausted(message)

    def settle(self, port: int) -> None:
        self._reserved.discard(port)
