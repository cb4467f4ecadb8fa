"""Counts ``/v1/stats`` reads, kept cheap at 100,000 sessions (SQL store).

- Transitions by action and code are counted as they are written (``transition_counts``, in
  the writing transaction) instead of grouping every timeline at each read.
- Running sessions by level are counted in SQL from stored fields, by the same rule as
  :func:`dormant.policy.levels.level`: ``disconnected`` when it had connections and has none,
  else by the age of its last meaningful activity (its creation if none) against the
  session's own ``active_within`` and ``idle_within`` (kept beside the row). Activity not yet
  flushed (at most a flush interval, 1 s) is not seen.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from dormant.policy import Level, State
from dormant.store.records import NewEvent, SessionRecord, level_thresholds
from dormant.store.schema import sessions, transition_counts


def level_columns(record: SessionRecord) -> dict[str, float]:
    active, idle = level_thresholds(record.policy)
    return {"active_within": active, "idle_within": idle}


async def count_transitions(conn: AsyncConnection, tenant: str, events: Sequence[NewEvent]) -> None:
    """Add the counted transitions among ``events`` to ``transition_counts`` (in the
    caller's transaction; rows in key order, so concurrent writers never deadlock)."""
    counted = Counter((e.action or "", e.code or "") for e in events if e.counted)
    if not counted:
        return
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    for (action, code), n in sorted(counted.items()):
        stmt = insert(transition_counts).values(tenant=tenant, action=action, code=code, n=n)
        stmt = stmt.on_conflict_do_update(
            index_elements=["tenant", "action", "code"],
            set_={"n": transition_counts.c.n + stmt.excluded.n},
        )
        await conn.execute(stmt)


async def transitions_by_reason(
    conn: AsyncConnection, tenant: str | None
) -> dict[str, dict[str, int]]:
    query = select(
        transition_counts.c.action, transition_counts.c.code, func.sum(transition_counts.c.n)
    ).group_by(transition_counts.c.action, transition_counts.c.code)
    if tenant is not None:
        query = query.where(transition_counts.c.tenant == tenant)
    out: dict[str, dict[str, int]] = {}
    for action, code, n in (await conn.execute(query)).all():
        out.setdefault(str(action), {})[str(code)] = int(n)
    return out


async def levels(conn: AsyncConnection, tenant: str | None, now: datetime) -> dict[str, int]:
    """Running sessions by level: one pass per distinct pair of thresholds (nearly always
    one: the presets share theirs), each on the ``(state, active_within, idle_within)``
    index."""
    running: list[Any] = [sessions.c.state == State.RUNNING.value]
    if tenant is not None:
        running.append(sessions.c.tenant == tenant)
    pairs_query = (
        select(sessions.c.active_within, sessions.c.idle_within)
        .where(*running)
        .group_by(sessions.c.active_within, sessions.c.idle_within)
    )
    out = {lvl.value: 0 for lvl in Level}
    disconnected = and_(sessions.c.ever_connected, sessions.c.connections == 0)
    anchor = func.coalesce(sessions.c.last_activity_at, sessions.c.created_at)
    for active_within, idle_within in (await conn.execute(pairs_query)).all():
        active_cut = now - timedelta(seconds=float(active_within))
        idle_cut = now - timedelta(seconds=float(idle_within))
        bucket = case(
            (disconnected, Level.DISCONNECTED.value),
            (anchor > active_cut, Level.ACTIVE.value),
            (anchor > idle_cut, Level.IDLE.value),
            else_=Level.BACKGROUND.value,
        )
        query = (
            select(bucket, func.count())
            .where(
                *running,
                sessions.c.active_within == active_within,
                sessions.c.idle_within == idle_within,
            )
            .group_by(bucket)
        )
        for name, n in (await conn.execute(query)).all():
            out[str(name)] += int(n)
    return out


__all__ = [
    "count_transitions",
    "level_columns",
    "levels",
    "transitions_by_reason",
]
