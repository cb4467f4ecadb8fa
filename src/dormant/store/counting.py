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

from sqlalchemy import case, func, literal, literal_column, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from dormant.policy import Level, State
from dormant.store.records import NewEvent, SessionRecord, level_thresholds
from dormant.store.schema import DISCONNECTED, UTCDateTime, sessions, transition_counts


def minute_of(at: datetime) -> datetime:
    return at.replace(second=0, microsecond=0)


def level_columns(record: SessionRecord) -> dict[str, Any]:
    """The level columns of a new row (an update keeps the later activity: ``anchor_kept``)."""
    active, idle = level_thresholds(record.policy)
    anchor = record.last_activity_at or record.created_at
    return {"active_within": active, "idle_within": idle, "anchor_minute": minute_of(anchor)}


def anchor_kept(later: Any, at: datetime | None) -> Any:
    """``anchor_minute`` of an update: the written activity's minute when it is later than
    the stored one (``later``), else as stored."""
    if at is None:
        return sessions.c.anchor_minute
    return case((later, literal(minute_of(at), UTCDateTime())), else_=sessions.c.anchor_minute)


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
    """Running sessions by level, reading only the rows that can be above ``background``.

    1. One row of counts: running sessions (``ix_sessions_state``), the disconnected ones
       (the partial ``ix_sessions_disconnected``) and the longest ``idle_within`` among them
       (``ix_sessions_state_idle``).
    2. The connected-or-never-connected ones active within that span (``anchor_minute`` on
       ``ix_sessions_state_anchor``), each judged exactly by its own thresholds.
    3. Every other running session is ``background``.
    """
    running: list[Any] = [sessions.c.state == State.RUNNING.value]
    if tenant is not None:
        running.append(sessions.c.tenant == tenant)
    disconnected = text(DISCONNECTED)
    totals = select(
        select(func.count()).where(*running).scalar_subquery(),
        select(func.count()).where(*running, disconnected).scalar_subquery(),
        select(func.max(sessions.c.idle_within)).where(*running).scalar_subquery(),
    )
    total, lost, longest = (await conn.execute(totals)).one()
    out = {lvl.value: 0 for lvl in Level}
    out[Level.DISCONNECTED.value] = int(lost)
    if not total:
        return out
    since = minute_of(now - timedelta(seconds=float(longest or 0)))
    anchor = func.coalesce(sessions.c.last_activity_at, sessions.c.created_at)
    bucket = case(
        (_within(conn, anchor, sessions.c.active_within, now), Level.ACTIVE.value),
        (_within(conn, anchor, sessions.c.idle_within, now), Level.IDLE.value),
        else_=Level.BACKGROUND.value,
    )
    recent = (
        select(bucket, func.count())
        .where(*running, sessions.c.anchor_minute >= since, text(f"NOT ({DISCONNECTED})"))
        .group_by(bucket)
    )
    for name, n in (await conn.execute(recent)).all():
        out[str(name)] += int(n)
    out[Level.BACKGROUND.value] = int(total) - sum(
        n for name, n in out.items() if name != Level.BACKGROUND.value
    )
    return out


def _within(conn: AsyncConnection, anchor: Any, seconds: Any, now: datetime) -> Any:
    """``now - anchor < seconds``, with each row's own ``seconds`` (the rule of
    :func:`dormant.policy.levels.level`), in the database's own date arithmetic."""
    at = literal(now, UTCDateTime())
    if conn.dialect.name == "postgresql":
        return anchor > at - literal_column("interval '1 second'") * seconds
    return func.julianday(anchor) > func.julianday(at) - seconds / 86400.0


__all__ = [
    "count_transitions",
    "level_columns",
    "levels",
    "transitions_by_reason",
]
