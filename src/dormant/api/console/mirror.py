"""The console's live view of every session: an in-memory mirror, kept by engine events,
queried (filter, search, sort, page) without the store, and watched by the browsers' streams.

The mirror loads the store's live sessions once (at start, or on first use). From then on the
engine's typed events keep it: a transition carries the new row, activity updates the row's
last activity, a queue move re-reads the one row, and so does a successful API call that
changes a session without a transition (keepalive, busy; see :class:`RereadAfterChange`).
What another replica changes reaches this process through the store only, so while a browser
watches (a stream is open) the mirror re-reads the store and pushes the rows that differ:
every ``refresh`` seconds when other instances are live, else every ``settle`` seconds as a
safety net (connection counts, which change without an event); never more often than ten
times the last read took, so that reading 10,000 rows (~0.5 s on SQLite) stays under a tenth
of a core. With nobody watching it re-reads lazily, when a page is asked of a stale copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from dormant.engine import Engine
from dormant.engine.notify import ActivitySeen, EngineEvent, Queued, Transitioned, Warned
from dormant.policy import Level, State
from dormant.store.records import SessionRecord

log = logging.getLogger("dormant.console")

#: Sort keys the table offers, and how each orders two rows (ties: by id).
SORTS = (
    "user",
    "tenant",
    "template",
    "state",
    "level",
    "connections",
    "activity",
    "next",
    "created",
    "id",
)
MAX_PER_PAGE = 200
_EPOCH = datetime.min.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Query:
    state: str | None = None
    level: str | None = None
    template: str | None = None
    tenant: str | None = None
    search: str | None = None
    sort: str = "created"
    descending: bool = True
    page: int = 1
    per_page: int = 50


@dataclass(frozen=True, slots=True)
class Page:
    rows: list[SessionRecord]
    total: int
    page: int
    pages: int
    facets: dict[str, list[str]]


class Watcher:
    """One open stream: the changes since it last read, one entry per session (a burst of
    activity on a session is one update), and whether it should re-read its page."""

    def __init__(self, scope: str | None, session_id: str | None) -> None:
        self.scope = scope
        self.session_id = session_id
        self.changed: dict[str, SessionRecord | None] = {}  # None: the session is gone
        self.ready = asyncio.Event()

    def wants(self, record: SessionRecord) -> bool:
        if self.scope is not None and record.tenant != self.scope:
            return False
        return self.session_id is None or record.id == self.session_id

    def take(self) -> dict[str, SessionRecord | None]:
        changed, self.changed = self.changed, {}
        self.ready.clear()
        return changed


def state_of(record: SessionRecord) -> str:
    """The state the API shows: ``queued`` while waiting for capacity."""
    return "queued" if record.queued_at is not None else record.state.value


class SessionMirror:
    def __init__(
        self,
        engine: Engine,
        *,
        refresh: float = 5.0,
        settle: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.refresh_interval = refresh
        self.settle_interval = settle
        #: How long the last full read of the store took (seconds).
        self.load_seconds = 0.0
        self.clock = clock
        self.rows: dict[str, SessionRecord] = {}
        self.loaded_at: float | None = None
        self.watchers: set[Watcher] = set()
        self.refreshes = 0
        self._loading: asyncio.Lock | None = None
        self._task: asyncio.Task[None] | None = None
        self._refetch: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    # keeping it --------------------------------------------------------------------------------

    def attach(self) -> None:
        self.engine.listeners.append(self.on_event)

    async def close(self) -> None:
        if self.on_event in self.engine.listeners:
            self.engine.listeners.remove(self.on_event)
        for task in [*self._tasks, *([self._task] if self._task else [])]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._task = None

    def on_event(self, event: EngineEvent) -> None:
        if self.loaded_at is None:
            return  # not loaded yet: the load reads what this would have told
        match event:
            case Transitioned(session=record) | Warned(session=record):
                self._put(record)
            case ActivitySeen(session_id=sid, kind=kind, source=source):
                row = self.rows.get(sid)
                if row is not None:
                    at = self.engine.clock.now()
                    self._put(
                        row.replace(
                            last_activity_at=at,
                            last_activity_kind=kind.value,
                            last_activity_source=source,
                        )
                    )
            case Queued(session_id=sid):
                self._reread(sid)
            case _:
                pass

    def _put(self, record: SessionRecord) -> None:
        if record.state is State.DELETED:
            if self.rows.pop(record.id, None) is None:
                return
            self._tell(record, None)
            return
        self.rows[record.id] = record
        self._tell(record, record)

    def _tell(self, record: SessionRecord, now: SessionRecord | None) -> None:
        for watcher in self.watchers:
            if watcher.wants(record):
                watcher.changed[record.id] = now
                watcher.ready.set()

    def _reread(self, sid: str) -> None:
        if sid in self._refetch:
            return
        self._refetch.add(sid)

        async def reread() -> None:
            try:
                record = await self.engine.session_row(sid)
            except Exception as exc:  # the next refresh brings it
                log.warning("console could not re-read session %s: %s", sid, exc)
                return
            finally:
                self._refetch.discard(sid)
            if record is not None:
                self._put(record)

        task = asyncio.create_task(reread())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def load(self) -> None:
        """Read every live session from the store, and push what differs from the copy."""
        if self._loading is None:
            self._loading = asyncio.Lock()
        async with self._loading:
            began = self.clock()
            fresh: dict[str, SessionRecord] = {}
            after: str | None = None
            while True:
                page = await self.engine.list_sessions(after_id=after, limit=1000)
                fresh.update((r.id, r) for r in page)
                if len(page) < 1000:
                    break
                after = page[-1].id
            first = self.loaded_at is None
            old, self.rows = self.rows, fresh
            self.loaded_at = self.clock()
            self.load_seconds = self.loaded_at - began
            self.refreshes += 1
            if first:
                return
            for sid, record in fresh.items():
                if old.get(sid) != record:
                    self._tell(record, record)
            for sid, record in old.items():
                if sid not in fresh:
                    self._tell(record, None)

    async def current(self) -> None:
        """Make sure the copy is loaded and, when no stream keeps it, recent enough."""
        age = self.clock() - self.loaded_at if self.loaded_at is not None else 0.0
        stale = self.loaded_at is None or (
            self._task is None and age > max(self.refresh_interval, 10 * self.load_seconds)
        )
        if stale:
            await self.load()

    # watching ---------------------------------------------------------------------------------

    def watch(self, scope: str | None, session_id: str | None = None) -> Watcher:
        watcher = Watcher(scope, session_id)
        self.watchers.add(watcher)
        if self._task is None:
            self._task = asyncio.create_task(self._refresh_loop())
        return watcher

    def unwatch(self, watcher: Watcher) -> None:
        self.watchers.discard(watcher)

    async def _refresh_loop(self) -> None:
        """While someone watches: re-read the store (other replicas' changes) now and then."""
        try:
            while self.watchers:
                others = await self._others_live()
                every = self.refresh_interval if others else self.settle_interval
                await asyncio.sleep(max(every, 10 * self.load_seconds))
                if not self.watchers:
                    break
                try:
                    await self.load()
                except Exception as exc:
                    log.warning("console could not refresh its sessions: %s", exc)
        finally:
            self._task = None

    async def _others_live(self) -> bool:
        """Whether another ``dormant serve`` shares the store (its changes make no events here)."""
        try:
            live = await self.engine.live_instances()
        except Exception:
            return True  # cannot tell: assume so, and keep re-reading
        me = self.engine.settings.instance_id
        return any(i.id != me for i in live)

    def preload(self) -> None:
        """Read the store in the background now, so the first page asked is served at once."""

        async def load() -> None:
            try:
                await self.current()
            except Exception as exc:
                log.warning("console could not read the sessions: %s", exc)

        task = asyncio.create_task(load())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def changed_by_request(self, session_id: str) -> None:
        """An API call changed the session without a transition: read its row again."""
        if self.loaded_at is not None:
            self._reread(session_id)

    # asking -------------------------------------------------------------------------------------

    def visible(self, scope: str | None) -> Iterable[SessionRecord]:
        if scope is None:
            return self.rows.values()
        return (r for r in self.rows.values() if r.tenant == scope)

    def query(self, scope: str | None, q: Query) -> Page:
        rows = list(self.visible(scope))
        facets = {
            "templates": sorted({r.template for r in rows}),
            "tenants": sorted({r.tenant for r in rows}),
        }
        if q.state:
            rows = [r for r in rows if state_of(r) == q.state]
        if q.template:
            rows = [r for r in rows if r.template == q.template]
        if q.tenant:
            rows = [r for r in rows if r.tenant == q.tenant]
        if q.search:
            needle = q.search.casefold()
            rows = [
                r
                for r in rows
                if needle in r.user_id.casefold()
                or needle in r.id.casefold()
                or (r.name is not None and needle in r.name.casefold())
            ]
        levels: dict[str, str] = {}
        if q.level or q.sort == "level":
            now = self.engine.clock.now()
            levels = {r.id: self.engine.describe(r, now)[0].value for r in rows}
            if q.level:
                rows = [r for r in rows if levels[r.id] == q.level]
        rows.sort(key=lambda r: r.id)
        rows.sort(key=_sort_key(q.sort, levels), reverse=q.descending)
        per_page = max(1, min(q.per_page, MAX_PER_PAGE))
        pages = max(1, -(-len(rows) // per_page))
        page = max(1, min(q.page, pages))
        start = (page - 1) * per_page
        return Page(rows[start : start + per_page], len(rows), page, pages, facets)


def _sort_key(sort: str, levels: dict[str, str]) -> Callable[[SessionRecord], tuple[int, object]]:
    level_order = {lvl.value: i for i, lvl in enumerate(Level)}

    def key(r: SessionRecord) -> tuple[int, object]:
        # (0, value) before (1, missing), so that rows without a value end up together.
        match sort:
            case "user":
                return 0, r.user_id.casefold()
            case "tenant":
                return 0, r.tenant
            case "template":
                return 0, r.template
            case "state":
                return 0, state_of(r)
            case "level":
                return 0, level_order.get(levels.get(r.id, ""), 9)
            case "connections":
                return 0, r.connections
            case "activity":
                at = r.last_activity_at
                return (0, at) if at is not None else (1, _EPOCH)
            case "next":
                at = r.next_action_at
                return (0, at) if at is not None else (1, _EPOCH)
            case "id":
                return 0, r.id
            case _:
                return 0, r.created_at

    return key
