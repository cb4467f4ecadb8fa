"""The console's Overview: ``/ui/overview`` (a page whose script draws charts with the vendored
uPlot) and ``GET /ui/api/overview?hours=24``, its JSON, scoped like the REST API.

Everything over time is computed from the sessions' timelines (``Store.window_events``) by the
pure functions of :mod:`dormant.api.console.history`; the answer carries their inputs
(``inputs.sessions``: each session's run and always-on seconds) so that a reader can check the
saved-hours figure against the timelines. Instances and orphans removed are the deployment's,
shown to admin keys only.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import HTMLResponse

from dormant.api.console import history
from dormant.api.console.history import Change, Timeline
from dormant.api.console.pages import render_page
from dormant.api.console.wiring import services
from dormant.api.principal import Who
from dormant.engine import Engine
from dormant.policy import ActivityKind, Category, Level, State
from dormant.store.records import EventRecord

#: At most this many timeline rows are read for one answer (``inputs.truncated`` says so).
MAX_EVENTS = 200_000
#: Points of the state and level series.
POINTS = 48
_MEANINGFUL = frozenset(k.value for k in ActivityKind if k.category is Category.MEANINGFUL)

OVERVIEW_MAIN = """
<link rel="stylesheet" href="/ui/static/vendor/uPlot.min.css">
<link rel="stylesheet" href="/ui/static/overview.css">
<div class="head"><h1>Overview</h1>
<label class="muted">Window <select id="ov-hours" aria-label="Window">
<option value="1">1 h</option><option value="6">6 h</option>
<option value="24" selected>24 h</option><option value="168">7 days</option></select></label>
<span id="ov-updated" class="muted"></span></div>
<section class="card ov-saved" id="ov-saved" aria-live="polite">
<h2>What dormant saved</h2>
<p class="big"><span id="saved-hours">…</span> container-hours
(<span id="saved-money">…</span>)</p>
<p class="muted">Ran <span id="run-hours">…</span> h of an always-on
<span id="always-hours">…</span> h for <span id="saved-sessions">…</span> sessions, at
<span id="price">…</span> per container-hour.</p></section>
<div class="grid">
<section class="card"><h2>Now</h2><dl id="ov-now" class="facts"></dl></section>
<section class="card"><h2>Wake latency</h2><dl id="ov-wake" class="facts"></dl></section>
<section class="card" id="ov-admin-card"><h2>Deployment</h2><dl id="ov-admin" class="facts">
</dl><ul id="ov-instances" class="plain"></ul></section>
</div>
<section class="card"><h2>Sessions by state</h2><div class="chart" id="chart-states"></div>
</section>
<section class="card"><h2>Running sessions by level</h2>
<div class="chart" id="chart-levels"></div></section>
<section class="card"><h2>Sleeps, wakes and deletes per hour, by reason</h2>
<div class="chart" id="chart-hourly"></div></section>
"""


def overview_router() -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/ui/overview")
    async def overview_page() -> HTMLResponse:
        return render_page(
            "Overview",
            OVERVIEW_MAIN,
            ["vendor/uPlot.iife.min.js", "overview.js"],
            active="overview",
        )

    @router.get("/ui/api/overview")
    async def overview(
        who: Who,
        request: Request,
        response: Response,
        hours: Annotated[int, Query(ge=1, le=24 * 31)] = 24,
    ) -> dict[str, Any]:
        found = services(request)
        engine = found.engine
        end = engine.clock.now()
        start = end - timedelta(hours=hours)
        rows = await engine.store.window_events(
            start, start - history.IDLE_WITHIN, who.scope, MAX_EVENTS
        )
        timelines = timelines_of(rows)
        settings = found.settings
        saved = history.savings(
            timelines, start, end, settings.price_per_container_hour, settings.currency
        )
        times = history.buckets(start, end, max((end - start) / POINTS, timedelta(minutes=1)))
        first_hour = start.replace(minute=0, second=0, microsecond=0)
        hourly = int((end - first_hour) / timedelta(hours=1)) + 1
        hour_marks = [first_hour + timedelta(hours=i) for i in range(hourly)]
        latencies = history.wake_latencies(timelines, start, end)
        response.headers["Cache-Control"] = "no-store"
        answer: dict[str, Any] = {
            "window": {"start": _iso(start), "end": _iso(end), "hours": hours},
            "now": await _now(engine, who.scope),
            "series": {
                "times": [_iso(t) for t in times],
                "states": history.states_over_time(timelines, times),
                "levels": history.levels_over_time(timelines, times),
            },
            "per_hour": {
                "hours": [_iso(h) for h in hour_marks],
                **history.per_hour(timelines, hour_marks),
            },
            "wake_latency": {
                "count": len(latencies),
                **{f"p{p}": history.percentile(latencies, p) for p in (50, 95, 99)},
            },
            "savings": saved.as_dict(),
            "inputs": {
                "truncated": len(rows) >= MAX_EVENTS,
                "sessions": [
                    {
                        "id": t.session_id,
                        "run_seconds": round(t.seconds_in(history.RUN_STATES, start, end), 3),
                        "always_on_seconds": round(t.lifetime_seconds(start, end), 3),
                    }
                    for t in timelines
                    if t.lifetime_seconds(start, end) > 0
                ],
            },
            "instances": None,
            "orphans_removed": None,
        }
        if who.admin:
            answer["instances"] = [
                {
                    "id": i.id,
                    "host": i.host,
                    "pid": i.pid,
                    "started_at": _iso(i.started_at),
                    "heartbeat_at": _iso(i.heartbeat_at),
                    "this": i.id == engine.settings.instance_id,
                }
                for i in await engine.live_instances()
            ]
            answer["orphans_removed"] = found.reconciler.orphans_removed
        return answer

    return router


def timelines_of(rows: list[EventRecord]) -> list[Timeline]:
    """The store's rows (session, then event order) as timelines: transitions, and the times
    of meaningful activity samples (connects and presence are not activity)."""
    changes: dict[str, list[Change]] = defaultdict(list)
    activity: dict[str, list[datetime]] = defaultdict(list)
    for row in rows:
        if row.type == "transition" and row.to_state is not None:
            changes[row.session_id].append(Change(row.at, row.from_state, row.to_state, row.code))
        elif row.type == "activity" and row.code in _MEANINGFUL:
            activity[row.session_id].append(row.at)
    return [
        Timeline(sid, tuple(found), tuple(activity.get(sid, ()))) for sid, found in changes.items()
    ]


async def _now(engine: Engine, scope: str | None) -> dict[str, Any]:
    """Counts as they are now: by state, running ones by level, and the admission queue."""
    by_level = {level.value: 0 for level in Level}
    queued = 0
    after = None
    while True:
        page = await engine.list_sessions(tenant=scope, after_id=after, limit=1000)
        for record in page:
            if record.queued_at is not None:
                queued += 1
            if record.state is State.RUNNING:
                by_level[engine.describe(record)[0].value] += 1
        if len(page) < 1000:
            break
        after = page[-1].id
    return {
        "by_state": await engine.counts_by_state(scope),
        "by_level": by_level,
        "queue_length": queued,
    }


def _iso(value: datetime) -> str:
    return value.isoformat()
