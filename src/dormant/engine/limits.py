"""Admission limits (``[limits]``) and the pure rules they are checked by.

A create or wake that a limit blocks waits in that limit's FIFO queue (``running``: one queue;
``running_per_tenant``: one per tenant; ``running_per_user`` and ``sessions_per_user``: one per
user) and is admitted, oldest first, as capacity frees. No limit set: nothing is ever queued.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from dormant.store.records import AdmissionCounts, SessionRecord

RUNNING = "running"
RUNNING_PER_TENANT = "running_per_tenant"
RUNNING_PER_USER = "running_per_user"
SESSIONS_PER_USER = "sessions_per_user"
#: Limits on running slots, broadest first: a request blocked by several waits in the first.
RUNNING_LIMITS = (RUNNING, RUNNING_PER_TENANT, RUNNING_PER_USER)
#: The error of an outcome whose request gave up waiting in a queue (``?wait=`` gets 503).
QUEUE_TIMEOUT = "queue timeout"


@dataclass(frozen=True, slots=True)
class Limits:
    """``None``: no such limit. ``tenants`` overrides ``running_per_tenant`` per tenant."""

    running: int | None = None
    running_per_tenant: int | None = None
    tenants: Mapping[str, int] = field(default_factory=dict)
    running_per_user: int | None = None
    sessions_per_user: int | None = None
    #: Seconds a queued create or wake waits before it gives up.
    queue_timeout: float = 300.0
    #: A full deployment first puts the idlest running session of the tenant to sleep (not a
    #: busy or kept-alive one, nor one with meaningful activity within ``active_within`` s).
    evict_idle: bool = False
    active_within: float = 120.0

    @property
    def configured(self) -> bool:
        return any(
            v is not None
            for v in (
                self.running,
                self.running_per_tenant,
                self.running_per_user,
                self.sessions_per_user,
            )
        ) or bool(self.tenants)

    def tenant_limit(self, tenant: str) -> int | None:
        return self.tenants.get(tenant, self.running_per_tenant)

    def value(self, limit: str, tenant: str) -> int | None:
        if limit == RUNNING_PER_TENANT:
            return self.tenant_limit(tenant)
        value: int | None = getattr(self, limit)
        return value


def blocking(limits: Limits, counts: AdmissionCounts, tenant: str, kind: str) -> str | None:
    """The first limit (broadest first) that a new running slot for ``tenant``'s user would
    break, or ``None``; a ``create`` also needs room under ``sessions_per_user``."""
    checks = [
        (RUNNING, limits.running, counts.running),
        (RUNNING_PER_TENANT, limits.tenant_limit(tenant), counts.tenant_running),
        (RUNNING_PER_USER, limits.running_per_user, counts.user_running),
    ]
    if kind == "create":
        checks.append((SESSIONS_PER_USER, limits.sessions_per_user, counts.user_sessions))
    for name, limit, count in checks:
        if limit is not None and count >= limit:
            return name
    return None


def queue_key(record: SessionRecord) -> tuple[str, ...]:
    """Which queue a queued session is in: its limit and that limit's scope."""
    limit = record.queue_limit or RUNNING
    if limit == RUNNING:
        return (limit,)
    if limit == RUNNING_PER_TENANT:
        return (limit, record.tenant)
    return (limit, record.tenant, record.user_id)


def positions(queued: Iterable[SessionRecord]) -> dict[str, int]:
    """1-based position of each queued session within its queue (``queued`` oldest first)."""
    seen: dict[tuple[str, ...], int] = {}
    out: dict[str, int] = {}
    for record in queued:
        key = queue_key(record)
        seen[key] = seen.get(key, 0) + 1
        out[record.id] = seen[key]
    return out


def describe(limits: Limits, limit: str, record: SessionRecord) -> str:
    """``running_per_user=1 (user alice)``: the limit named, with its value and scope."""
    value = limits.value(limit, record.tenant)
    if limit == RUNNING_PER_TENANT:
        return f"{limit}={value} (tenant {record.tenant})"
    if limit in (RUNNING_PER_USER, SESSIONS_PER_USER):
        return f"{limit}={value} (user {record.user_id})"
    return f"{limit}={value}"
