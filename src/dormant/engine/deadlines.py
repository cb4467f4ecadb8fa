"""A heap of deadlines: tells the scheduler exactly when the next session is due."""

from __future__ import annotations

import heapq
from datetime import UTC, datetime


class Deadlines:
    """At most one live deadline per session; superseded heap entries are skipped lazily."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, str]] = []
        self._wanted: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._wanted)

    def set(self, session_id: str, at: datetime | None) -> bool:
        """Set (or with ``None`` clear) a session's deadline; True if it is now the earliest."""
        if at is None:
            self._wanted.pop(session_id, None)
            return False
        ts = at.timestamp()
        if self._wanted.get(session_id) == ts:
            return False
        self._wanted[session_id] = ts
        heapq.heappush(self._heap, (ts, session_id))
        if len(self._heap) > 64 and len(self._heap) > 4 * len(self._wanted):
            self._compact()
        return self._heap[0] == (ts, session_id)

    def discard(self, session_id: str) -> None:
        self._wanted.pop(session_id, None)

    def next_at(self) -> datetime | None:
        while self._heap:
            ts, sid = self._heap[0]
            if self._wanted.get(sid) == ts:
                return datetime.fromtimestamp(ts, UTC)
            heapq.heappop(self._heap)
        return None

    def pop_due(self, now: datetime) -> list[tuple[str, datetime]]:
        """Remove and return ``(session_id, deadline)`` for everything due at ``now``."""
        limit = now.timestamp()
        due = []
        while self._heap and self._heap[0][0] <= limit:
            ts, sid = heapq.heappop(self._heap)
            if self._wanted.get(sid) == ts:
                del self._wanted[sid]
                due.append((sid, datetime.fromtimestamp(ts, UTC)))
        return due

    def _compact(self) -> None:
        self._heap = [(ts, sid) for sid, ts in self._wanted.items()]
        heapq.heapify(self._heap)
