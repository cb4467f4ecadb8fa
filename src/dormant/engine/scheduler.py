"""The scheduler: the deadline heap says when to look; a due session is re-decided from fresh
state under its lock and acted on; a failed attempt is re-armed with backoff, never dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from datetime import datetime, timedelta

from dormant.engine.activity import ActivityBuffer
from dormant.engine.core import _FENCE
from dormant.engine.notify import DeadlineDue, Warned
from dormant.errors import (
    DormantError,
)
from dormant.policy import (
    Action,
    Decision,
    decide,
)
from dormant.store.records import Claim, NewEvent, SessionRecord

log = logging.getLogger("dormant.engine")


class Scheduler(ActivityBuffer):
    async def tick(self) -> int:
        """Claim what is due now and handle it; returns how many sessions were claimed.

        The heap is a hint: its due sessions are named in the claim, and the store adds every
        other due session nobody holds (another instance's, a dead instance's). Each claim
        carries a fencing token; the session's writes while handling it must still match."""
        now = self.clock.now()
        hints = dict(self.deadlines.pop_due(now))
        lease = now + timedelta(seconds=self.settings.claim_lease)
        try:
            claims = await self.store.claim_due(
                self.settings.instance_id,
                now,
                lease,
                live_instances=self._live_instances,
                ids=list(hints),
                limit=self.settings.claim_batch,
            )
        except DormantError:
            # Look again soon, not in a tight loop: the store is in trouble.
            retry = now + timedelta(seconds=self.settings.claim_poll)
            for sid in hints:
                self.deadlines.set(sid, retry)
            raise
        for claim in claims:
            at = hints.get(claim.session_id) or claim.due_at or now
            seconds = max(0.0, (now - at).total_seconds())
            self._emit(DeadlineDue(claim.session_id, seconds))
            self._spawn_op(
                claim.session_id,
                None,
                functools.partial(self._due_guarded, claim.session_id, claim),
            )
        self._claimed_all = len(claims) < self.settings.claim_batch
        return len(claims)

    async def _due_guarded(self, sid: str, claim: Claim | None = None, attempt: int = 1) -> None:
        """Bounded concurrency, and a deadline is never dropped: if handling fails (store busy,
        runtime down) it is re-armed with backoff and tried again; the claim is kept until
        then, so no other instance jumps in, and given back when done."""
        token = _FENCE.set((sid, claim.fence) if claim is not None else None)
        keep_until: datetime | None = None
        try:
            async with self._due_slots:
                await self._due(sid)
        except DormantError as exc:
            delay = self.settings.backoff.delay(min(attempt, 10))
            log.warning("due session %s not handled (%s); again in %.2fs", sid, exc, delay)
            keep_until = self.clock.now() + timedelta(seconds=delay)
            if sid in self._state:
                self._arm(sid, keep_until)
        finally:
            _FENCE.reset(token)
        if claim is not None:
            with contextlib.suppress(DormantError):  # else the lease runs out by itself
                await self.store.release_claim(
                    sid, self.settings.instance_id, claim.fence, until=keep_until
                )

    async def _schedule_loop(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # the scheduler must outlive any one bad session
                log.exception("scheduler tick failed")
            next_at = self.deadlines.next_at()
            self._wakeup.clear()
            wait = None if next_at is None else (next_at - self.clock.now()).total_seconds()
            if (wait is not None and wait <= 0) or not self._claimed_all:
                await asyncio.sleep(0)
                continue
            # Other instances' sessions are not in this heap: look at the store now and then.
            poll = self.settings.claim_poll
            wait = poll if wait is None else min(wait, poll)
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
            if record.queued_at is not None:
                # Waiting for capacity: no decision until admitted or given up (admission).
                if record.next_action_at is not None:
                    await self._save(record, [])  # written without a next action
                else:
                    self._arm(sid, None)
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
                self._emit(Warned(updated, decision))
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
