"""Which traffic counts as a user's activity: requests (minus the template's ignore rules, for
polling and health checks) and a WebSocket's client messages (not its pings, pongs or close)."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

#: Client-to-server frame opcodes that carry a message (continuation, text, binary).
_DATA_OPCODES = frozenset({0x0, 0x1, 0x2})


@dataclass(frozen=True, slots=True)
class IgnoreRule:
    """``"GET /api/status"`` (one method) or ``"/metrics"`` (any); ``*`` matches anything."""

    method: str | None
    pattern: str

    @classmethod
    def parse(cls, text: str) -> IgnoreRule:
        method, sep, path = text.strip().partition(" ")
        if not sep:
            return cls(None, method)
        return cls(method.upper(), path.strip())

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method != method:
            return False
        return fnmatch.fnmatchcase(path, self.pattern)


def counts_as_activity(rules: tuple[IgnoreRule, ...], method: str, path: str) -> bool:
    return not any(rule.matches(method, path) for rule in rules)


class FrameWatcher:
    """Follows the frames of a WebSocket's client-to-server byte stream (without copying them)
    and counts the ones that carry a message. Frames may span reads; headers may too."""

    __slots__ = ("_header", "_skip", "messages")

    def __init__(self) -> None:
        self._skip = 0  # payload bytes of the current frame still to pass
        self._header = b""  # a frame header cut by a read
        self.messages = 0

    def feed(self, data: bytes) -> int:
        """Take the next bytes; return how many messages began in them."""
        before = self.messages
        view = memoryview(data)
        i = 0
        n = len(view)
        while i < n:
            if self._skip:
                step = min(self._skip, n - i)
                self._skip -= step
                i += step
                continue
            header = self._header + bytes(view[i : i + 14])
            size = _header_size(header)
            if size is None or len(header) < size:
                self._header = header  # the rest of this read: the header continues in the next
                return self.messages - before
            consumed = size - len(self._header)
            self._header = b""
            opcode = header[0] & 0x0F
            if opcode in _DATA_OPCODES:
                self.messages += 1
            self._skip = _payload_length(header)
            i += consumed
        return self.messages - before


def _header_size(header: bytes) -> int | None:
    if len(header) < 2:
        return None
    masked = header[1] & 0x80
    length = header[1] & 0x7F
    extra = 2 if length == 126 else 8 if length == 127 else 0
    return 2 + extra + (4 if masked else 0)


def _payload_length(header: bytes) -> int:
    length = header[1] & 0x7F
    if length == 126:
        return int.from_bytes(header[2:4], "big")
    if length == 127:
        return int.from_bytes(header[2:10], "big")
    return length
