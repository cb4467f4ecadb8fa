"""The engine's read side: what the API, the reconciler and the gateway read, in one place, so
that a replica-aware read (and the console's live view) has one home and nobody above the
engine reaches into the store."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from dormant.engine.outcome import OperationStatus
from dormant.engine.recovery import Recovery
from dormant.policy import State
from dormant.store.records import (
    ApiKeyRecord,
    EventRecord,
    InstanceRecord,
    OperationRecord,
    SessionRecord,
)


class ReadSide(Recovery):
    async def list_sessions(
        self,
        *,
        tenant: str | None = None,
        user_id: str | None = None,
        state: State | None = None,
        after_id: str | None = None,
        limit: int = 100,
        name: str | None = None,
        template: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> list[SessionRecord]:
        """A page of sessions in id order (deleted ones only when ``state`` asks for them),
        filtered by each of ``name``, ``template`` and ``labels`` (all pairs) when given."""
        return await self.store.list_sessions(
            tenant=tenant,
            user_id=user_id,
            state=state,
            after_id=after_id,
            limit=limit,
            name=name,
            template=template,
            labels=labels,
        )

    async def session_row(self, session_id: str) -> SessionRecord | None:
        """The stored row as it is (deleted ones too), without unflushed activity."""
        return await self.store.get_session(session_id)

    async def timeline(self, session_id: str, limit: int = 500) -> list[EventRecord]:
        """The newest ``limit`` entries of a session's timeline (activity samples included),
        oldest first."""
        return await self.store.list_events(session_id, limit, newest=True)

    async def counts_by_state(self, tenant: str | None) -> dict[str, int]:
        return await self.store.count_by_state(tenant)

    async def counts_by_level(self, tenant: str | None) -> dict[str, int]:
        """Running sessions by level, counted by the store (every replica agrees)."""
        return await self.store.count_by_level(tenant, self.clock.now())

    async def transition_counts(self, tenant: str | None) -> dict[str, dict[str, int]]:
        return await self.store.event_counts(tenant)

    async def pending_operations(self) -> list[OperationRecord]:
        return await self.store.pending_operations()

    async def instances_since(self, since: datetime) -> list[InstanceRecord]:
        return await self.store.live_instances(since=since)

    async def close_operation(self, op_id: int, reason: str) -> None:
        """An intent the reconciler found converged without it."""
        self._ops_begun.pop(op_id, None)
        await self.store.finish_operation(
            op_id, OperationStatus.INTERRUPTED, 0, reason, self.clock.now()
        )

    async def api_key(self, key_id: str) -> ApiKeyRecord | None:
        return await self.store.get_key(key_id)

    async def api_keys(self) -> list[ApiKeyRecord]:
        return await self.store.list_keys()
