"""The store is the truth between signals and runtimes. This is its contract."""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from dormant.errors import Conflict
from dormant.policy import ActivityTimes, State
from dormant.store.records import (
    AdmissionCounts,
    ApiKeyRecord,
    Claim,
    EventRecord,
    IdempotencyKey,
    IdempotencyRecord,
    InstanceRecord,
    NewEvent,
    OperationRecord,
    SessionRecord,
)


class NameTaken(Conflict):
    """A live session of the same tenant, user and template already has this name."""


class KeyTaken(Conflict):
    """The tenant's idempotency key is already held (by a row not older than its cutoff)."""


class Store(abc.ABC):
    """Durable sessions, operations (intent log), timelines, API keys and instances.

    - ``update_session`` is optimistic: it writes only if the row still has ``expected_version``
      and raises :class:`dormant.errors.Conflict` otherwise; the caller re-reads and retries.
    - A session change and its timeline entries are written in one transaction.
    - ``flush_activity`` is commutative (``last_activity_at = max(old, new)``), so it needs no
      version check and may interleave with any other write.
    - A session's ``name`` (when not ``None``) is unique per ``(tenant, user_id, template)``
      among sessions that are not ``deleted``: of concurrent inserts of one name exactly one
      wins, the others get :class:`NameTaken`; a deleted session frees its name.
    """

    @abc.abstractmethod
    async def close(self) -> None: ...

    # sessions
    @abc.abstractmethod
    async def insert_session(
        self,
        record: SessionRecord,
        event: NewEvent,
        intent: tuple[str, str] | None,
        idempotency: IdempotencyKey | None = None,
    ) -> int | None:
        """Insert a session, its first timeline entry, (optionally) an operation intent
        ``(kind, instance_id)`` and (optionally) its idempotency key (a row of the record's
        tenant, at its ``created_at``) atomically; returns the operation id. Nothing is written
        if any part is refused: :class:`NameTaken` (a live session has the name),
        :class:`KeyTaken` (the key is held by a row made at or after ``expired_before``; an
        older one is replaced), :class:`~dormant.errors.Conflict` (id or port taken)."""

    @abc.abstractmethod
    async def get_session(self, session_id: str) -> SessionRecord | None: ...

    @abc.abstractmethod
    async def update_session(
        self,
        record: SessionRecord,
        expected_version: int,
        events: Sequence[NewEvent] = (),
        now: datetime | None = None,
        fence: int | None = None,
    ) -> SessionRecord:
        """Write ``record`` if the row still has ``expected_version`` (and, when ``fence`` is
        given, that fencing token); raise Conflict otherwise. Claims are not written."""

    @abc.abstractmethod
    async def claim_due(
        self,
        instance_id: str,
        now: datetime,
        lease_until: datetime,
        *,
        live_instances: Sequence[str],
        ids: Sequence[str] = (),
        limit: int = 100,
    ) -> list[Claim]:
        """Claim up to ``limit`` live sessions that are due (``next_action_at <= now``) or
        named in ``ids``, and that nobody holds: no claim, an expired one, or one of an
        instance not in ``live_instances``. Each claim bumps the session's fence. Concurrent
        callers never claim the same session (``FOR UPDATE SKIP LOCKED`` on PostgreSQL)."""

    @abc.abstractmethod
    async def release_claim(
        self, session_id: str, instance_id: str, fence: int, until: datetime | None = None
    ) -> None:
        """Give the claim back (``until`` None), or keep it until ``until`` (a retry later);
        only if it is still ``instance_id``'s with ``fence``."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise TemporaryError if the store cannot be reached."""

    @abc.abstractmethod
    async def list_sessions(
        self,
        *,
        tenant: str | None = None,
        user_id: str | None = None,
        state: State | None = None,
        after_id: str | None = None,
        limit: int = 100,
        include_deleted: bool = False,
        name: str | None = None,
        template: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> list[SessionRecord]:
        """Sessions in id order after ``after_id``, each filter applied when given (``labels``:
        every pair must be among the session's labels); deleted ones only with
        ``include_deleted`` or ``state=DELETED``."""

    @abc.abstractmethod
    async def live_schedule(self) -> list[tuple[str, str, datetime | None]]:
        """``(id, state, next_action_at)`` of every live session (for resuming deadlines)."""

    @abc.abstractmethod
    async def flush_activity(self, batch: dict[str, ActivityTimes]) -> None: ...

    @abc.abstractmethod
    async def used_ports(self) -> set[int]: ...

    @abc.abstractmethod
    async def count_by_state(self, tenant: str | None) -> dict[str, int]: ...

    # admission
    @abc.abstractmethod
    async def admission_counts(
        self, tenant: str, user_id: str, *, per_tenant: bool = True
    ) -> AdmissionCounts:
        """Counts the admission limits are checked against, as the store has them now.
        Holding a running slot: ``creating`` with ``queued_at`` NULL, ``starting``,
        ``running``, ``stopping`` (``running`` in all, ``tenant_running`` of ``tenant``,
        ``user_running`` of ``tenant`` and ``user_id``). ``user_sessions``: that user's
        sessions holding a running slot or ``sleeping`` (a queued create is not counted;
        ``failed``, ``deleting`` and ``deleted`` are not). ``queued``: sessions with
        ``queued_at`` set, in all (the engine clears it when a session leaves the queue, by
        admission, time-out or deletion). With ``per_tenant`` False,
        ``tenant_running`` is not counted (0): no tenant limit applies."""

    @abc.abstractmethod
    async def list_queued(self, limit: int = 10_000) -> list[SessionRecord]:
        """Live sessions with ``queued_at`` set, oldest first (``queued_at``, then ``id``):
        the admission queues in FIFO order."""

    # operations
    @abc.abstractmethod
    async def insert_operation(
        self,
        session_id: str,
        kind: str,
        container_name: str,
        labels: dict[str, str],
        instance_id: str,
        now: datetime,
    ) -> int: ...

    @abc.abstractmethod
    async def finish_operation(
        self, op_id: int, status: str, attempts: int, error: str | None, now: datetime
    ) -> None: ...

    @abc.abstractmethod
    async def pending_operations(self) -> list[OperationRecord]: ...

    # timeline
    @abc.abstractmethod
    async def add_events(
        self, session_id: str, events: Sequence[NewEvent], now: datetime
    ) -> None: ...

    @abc.abstractmethod
    async def list_events(
        self, session_id: str, limit: int = 500, *, newest: bool = False
    ) -> list[EventRecord]:
        """A session's timeline in order: its first ``limit`` entries, or with ``newest``
        its last ``limit``."""

    @abc.abstractmethod
    async def event_counts(self, tenant: str | None) -> dict[str, dict[str, int]]:
        """``{action: {code: n}}`` over transitions caused by decisions and requests
        (:attr:`NewEvent.counted`), counted as written by ``insert_session`` and
        ``update_session``: all-time, purging a deleted session does not lower them."""

    @abc.abstractmethod
    async def count_by_level(self, tenant: str | None, now: datetime) -> dict[str, int]:
        """Running sessions by level at ``now`` (every level present, 0 if none), by
        :func:`dormant.policy.level` with each session's ``active_within`` and ``idle_within``
        and its stored (flushed) activity; without reading every row's policy."""

    @abc.abstractmethod
    async def add_samples(self, samples: Sequence[tuple[str, NewEvent]], now: datetime) -> None:
        """Timeline entries of many sessions at once (activity samples: each with its own
        ``at``, else ``now``), in one transaction."""

    # api keys
    @abc.abstractmethod
    async def insert_key(self, record: ApiKeyRecord) -> None: ...

    @abc.abstractmethod
    async def get_key(self, key_id: str) -> ApiKeyRecord | None: ...

    @abc.abstractmethod
    async def list_keys(self) -> list[ApiKeyRecord]: ...

    @abc.abstractmethod
    async def revoke_key(self, key_id: str, now: datetime) -> bool: ...

    # idempotency keys (POST /v1/sessions with Idempotency-Key; written by insert_session)
    @abc.abstractmethod
    async def get_idempotency(
        self, tenant: str, key: str, since: datetime
    ) -> IdempotencyRecord | None:
        """The tenant's row of ``key`` if it was made at or after ``since``."""

    @abc.abstractmethod
    async def purge_idempotency(self, before: datetime) -> int:
        """Remove idempotency rows made before ``before``; returns how many."""

    # access links (one-time tokens of the session proxy)
    @abc.abstractmethod
    async def insert_link(self, token_hash: str, session_id: str, expires_at: datetime) -> None:
        """Keep a link's token hash until it is used or expires."""

    @abc.abstractmethod
    async def consume_link(self, token_hash: str, now: datetime) -> str | None:
        """Mark the link used and return its session id, atomically: of concurrent calls for
        one token at most one gets the id; a used, expired or unknown token gives None."""

    @abc.abstractmethod
    async def purge_links(self, before: datetime) -> int:
        """Remove links that expired before ``before``; returns how many."""

    @abc.abstractmethod
    async def sessions_with_connections(self) -> list[SessionRecord]:
        """Live sessions whose connection count is not zero (to drop a dead instance's)."""

    @abc.abstractmethod
    async def purge_deleted(self, before: datetime, limit: int) -> int:
        """Remove up to ``limit`` sessions deleted before ``before``, with their timelines and
        operations, each in one transaction; returns how many sessions were removed."""

    # deployment
    @abc.abstractmethod
    async def deployment_id(self, candidate: str, now: datetime) -> str:
        """This deployment's id: the stored one, else ``candidate``, stored now (first start).
        Concurrent first starts agree on one id."""

    # instances
    @abc.abstractmethod
    async def heartbeat_instance(self, record: InstanceRecord) -> None: ...

    @abc.abstractmethod
    async def live_instances(self, since: datetime) -> list[InstanceRecord]: ...

    @abc.abstractmethod
    async def remove_instance(self, instance_id: str) -> None: ...

    # adaptive policy: learned models (JSON documents by key, last write wins)
    @abc.abstractmethod
    async def load_adaptive(self, keys: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
        """The stored models with these keys (all of them with ``None``)."""

    @abc.abstractmethod
    async def save_adaptive(self, models: Mapping[str, dict[str, Any]], now: datetime) -> None:
        """Insert or replace each model (``{"observations", "weights", ...}``) by key."""

    # the console's overview (read only)
    @abc.abstractmethod
    async def window_events(
        self, since: datetime, activity_since: datetime, tenant: str | None, limit: int
    ) -> list[EventRecord]:
        """The timelines the overview draws from, ordered by session then event id: every
        ``transition`` of the sessions (of ``tenant``, all with ``None``) not deleted before
        ``since`` (their earlier ones too: the state at ``since`` follows from them), and their
        ``activity`` entries at or after ``activity_since``; at most ``limit`` rows."""
