"""The activity buffer: events update memory at once; the store gets at most one write per
session per flush interval, ``last_activity_at = max(old, new)``.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta

from dormant.engine.notify import ActivitySeen, WarningCancelled
from dormant.engine.runner import OperationRunner
from dormant.errors import (
    InvalidInput,
    NotFound,
)
from dormant.policy import (
    ActivityKind,
    ActivityTimes,
    Category,
    State,
    apply_activity,
)
from dormant.policy.activity import merge_times
from dormant.store.records import NewEvent

log = logging.getLogger("dormant.engine")

#: Activity stamped this far in the future is a client clock error, not a plan.
MAX_CLOCK_SKEW = timedelta(seconds=60)
#: At most one activity sample per session this often goes into its timeline (per replica).
SAMPLE_EVERY = timedelta(minutes=1)
#: Samples held while the store cannot take them; beyond this the oldest are dropped.
MAX_HELD_SAMPLES = 10_000


class ActivityBuffer(OperationRunner):
    def record_activity(
        self,
        session_id: str,
        kind: ActivityKind,
        at: datetime | None = None,
        source: str = "api",
    ) -> None:
        """Apply activity in memory now; the store gets it at the next flush (coalesced)."""
        state = self._state.get(session_id)
        if state is None or session_id in self._delete_requested:
            raise NotFound(f"session {session_id} not found")
        now = self.clock.now()
        if at is None or at > now:
            if at is not None and at > now + MAX_CLOCK_SKEW:
                raise InvalidInput("activity 'at' is in the future; check the client's clock")
            at = now
        previous = self._pending.get(session_id, _EMPTY)
        self._pending[session_id] = apply_activity(previous, kind, at, source)
        if session_id in self._learners and kind.category is Category.MEANINGFUL:
            self._learn(session_id, at, now)
        self.events_applied += 1
        if kind.category is not Category.MEANINGFUL:
            return
        self._sample(session_id, kind, at, source, now)
        self._emit(ActivitySeen(session_id, kind, source))
        if session_id in self._warned:
            self._warned.discard(session_id)
            self.deadlines.set(session_id, now)  # re-decide at once: the warning is void
            self._wakeup.set()
            self._emit(WarningCancelled(session_id, kind))
        if state is State.SLEEPING:
            self._spawn_op(session_id, None, lambda: self._wake_on_activity(session_id, kind))

    def _sample(
        self, sid: str, kind: ActivityKind, at: datetime, source: str, now: datetime
    ) -> None:
        """Keep this activity in the timeline if the session has no sample from the last
        minute, so that why a session still ran at 10:30 can be answered afterwards."""
        last = self._sampled.get(sid)
        if last is not None and now - last < SAMPLE_EVERY:
            return
        self._sampled[sid] = now
        reason = f"{kind.value} activity via {source}"
        self._samples.append((sid, NewEvent("activity", reason, kind.value, at=at, source=source)))

    async def flush_samples(self) -> int:
        """Write the activity samples taken since the last flush, in one transaction."""
        if not self._samples:
            return 0
        batch, self._samples = self._samples, []
        try:
            await self.store.add_samples(batch, self.clock.now())
        except BaseException:  # kept for the next flush (cancellation at shutdown too)
            self._samples = (batch + self._samples)[-MAX_HELD_SAMPLES:]
            raise
        return len(batch)

    async def flush(self) -> int:
        """Write buffered activity: one write per session, ``max(old, new)``; and the
        activity samples."""
        await self.save_models()
        await self.flush_samples()
        if not self._pending:
            return 0
        batch, self._pending = self._pending, {}
        self._flushing = batch  # still seen by reads and decisions while it is written
        try:
            await self.store.flush_activity(batch)
        except BaseException:  # also cancellation at shutdown: keep them for the next flush
            for sid, times in batch.items():
                self._pending[sid] = merge_times(times, self._pending.get(sid))
            raise
        finally:
            self._flushing = {}
        return len(batch)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.flush_interval)
            try:
                await self.flush()
            except Exception:
                log.exception("activity flush failed; will retry")


_EMPTY = ActivityTimes()
