"""The scheduler: the deadline heap says when to look; a due session is re-decided from fresh
state under its lock and acted on; a failed attempt is re-armed with backoff, never dropped.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from datetime import timedelta

from dormant.engine.activity import ActivityBuffer
from dormant.engine.notify import EngineEvent
from dormant.errors import (
    DormantError,
)
from dormant.policy import (
    Action,
    Decision,
    decide,
)
from dormant.store.records import NewEvent, SessionRecord

log = logging.getLogger("dormant.engine")


class Scheduler(ActivityBuffer):
    async def tick(self) -> int:
        """Handle everything due now; returns how many sessions were due."""
        now = self.clock.now()
        due = self.deadlines.pop_due(now)
        for sid, at in due:
            self._emit(EngineEvent("due", sid, None, seconds=(now - at).total_seconds()))
            self._spawn_op(sid, None, functools.partial(self._due_guarded, sid))
        return len(due)

    async def _due_guarded(self, sid: str, attempt: int = 1) -> None:
        """Bounded concurrency, and a deadline is never dropped: if handling fails (store busy,
        runtime down) it is re-armed with backoff and tried again."""
        try:
            async with self._due_slots:
                await self._due(sid)
        except DormantError as exc:
            delay = self.settings.backoff.delay(min(attempt, 10))
            log.warning("due session %s not handled (%s); again in %.2fs", sid, exc, delay)
            if sid in self._state:
                self._arm(sid, self.clock.now() + timedelta(seconds=delay))

    async def _schedule_loop(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # the scheduler must outlive any one bad session
                log.exception("scheduler tick failed")
            next_at = self.deadlines.next_at()
            self._wakeup.clear()
            wait = None if next_at is None else (next_at - self.clock.now()).total_seconds()
            if wait is not None and wait <= 0:
                await asyncio.sleep(0)
                continue
            waiter = asyncio.create_task(self._wakeup.wait())
            sleeper = asyncio.create_task(self.clock.sleep(wait if wait is not None else 3600))
            try:
                await asyncio.wait({waiter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
                sleeper.cancel()

    async def _due(self, sid: str) -> None:
        async with self._session_lock(sid):
            record = await self._fresh(sid)
            if record is None or not record.state.live:
                self._forget(sid)
                return
            now = self.clock.now()
            policy = self.policy_of(record)
            decision = decide(record.view(), policy, now)
            if not decision.due(now):
                await self._persist_decision(record, decision)
                return
            log.info(
                "decision session=%s action=%s code=%s reason=%s",
                sid,
                decision.action.value,
                decision.code,
                decision.reason,
                extra={"session": sid, "action": decision.action.value, "code": decision.code},
            )
            if decision.action is Action.WARN:
                updated = await self._save(
                    record.replace(warned_at=now),
                    [
                        NewEvent(
                            "decision", decision.reason, decision.code, action=Action.WARN.value
                        )
                    ],
                )
                self._warned.add(sid)
                self._emit(
                    EngineEvent(
                        "warning", sid, updated, decision.code, decision.reason, decision=decision
                    )
                )
                return
        if decision.action is Action.SLEEP:
            await self._run_stop(sid, decision.code, decision.reason)
        elif decision.action is Action.DELETE:
            await self._run_delete(sid, decision.code, decision.reason)

    async def _persist_decision(self, record: SessionRecord, decision: Decision) -> None:
        if record.next_action != decision.action.value or record.next_action_at != decision.at:
            await self._save(record, [])
        else:
            self._arm(record.id, decision.at)
