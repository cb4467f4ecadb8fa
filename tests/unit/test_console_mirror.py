"""The console's mirror of sessions: kept by engine events, queried (filter, search, sort,
page) in memory, scoped by tenant, and told about another replica's changes by re-reading."""

from __future__ import annotations

from dormant.api.console.mirror import Query, SessionMirror
from dormant.policy import ActivityKind
from tests.unit.conftest import Rig


async def test_events_keep_the_mirror_and_reach_watchers(rig: Rig) -> None:
    mirror = SessionMirror(rig.engine)
    mirror.attach()
    try:
        await mirror.current()
        assert mirror.rows == {}
        watcher = mirror.watch(scope="acme")
        other = mirror.watch(scope="globex")
        made = await rig.engine.create_session(tenant="acme", user_id="ann")
        await rig.settle()
        assert mirror.rows[made.id].state.value == "running"
        seen = watcher.take()
        assert list(seen) == [made.id] and seen[made.id] is not None
        assert seen[made.id].state.value == "running"  # a burst is one entry, the latest
        assert other.take() == {}  # another tenant's watcher hears nothing

        rig.engine.record_activity(made.id, ActivityKind.USER_INTERACTION, None, source="api")
        assert mirror.rows[made.id].last_activity_kind == "user-interaction"
        assert mirror.rows[made.id].last_activity_source == "api"
        assert watcher.ready.is_set()
        watcher.take()

        await rig.engine.delete(made.id, "acme")
        await rig.settle()
        assert made.id not in mirror.rows
        assert watcher.take() == {made.id: None}
    finally:
        await mirror.close()


async def test_query_filters_searches_sorts_and_pages(rig: Rig) -> None:
    mirror = SessionMirror(rig.engine)
    mirror.attach()
    try:
        ids = {}
        for i, (tenant, user) in enumerate(
            [("acme", "zoe"), ("acme", "Bob"), ("globex", "amy"), ("acme", "carl")]
        ):
            made = await rig.engine.create_session(tenant=tenant, user_id=user)
            ids[user] = made.id
            rig.clock.advance(1 + i)
        await rig.settle()
        await rig.engine.sleep(ids["carl"], None)
        await rig.settle()
        await mirror.current()

        by_user = mirror.query(None, Query(sort="user", descending=False))
        assert [r.user_id for r in by_user.rows] == ["amy", "Bob", "carl", "zoe"]
        assert by_user.facets["tenants"] == ["acme", "globex"]
        scoped = mirror.query("acme", Query(sort="user", descending=False))
        assert [r.user_id for r in scoped.rows] == ["Bob", "carl", "zoe"]
        assert scoped.facets["tenants"] == ["acme"]
        assert mirror.query("acme", Query(tenant="globex")).total == 0  # never another's rows
        assert [r.user_id for r in mirror.query(None, Query(state="sleeping")).rows] == ["carl"]
        assert [r.user_id for r in mirror.query(None, Query(search="BO")).rows] == ["Bob"]
        assert mirror.query(None, Query(search=ids["amy"][-8:])).rows[0].user_id == "amy"
        newest = mirror.query(None, Query(sort="created", descending=True))
        assert [r.user_id for r in newest.rows] == ["carl", "amy", "Bob", "zoe"]
        second = mirror.query(None, Query(sort="user", descending=False, page=2, per_page=3))
        assert (second.page, second.pages, second.total) == (2, 2, 4)
        assert [r.user_id for r in second.rows] == ["zoe"]
        past_end = mirror.query(None, Query(page=99, per_page=3))
        assert past_end.page == 2  # clamped to the last page
        now = rig.clock.now()
        active = {
            r.user_id
            for r in mirror.rows.values()
            if rig.engine.describe(r, now)[0].value == "active"
        }
        assert active  # new sessions are active
        levels = mirror.query(None, Query(level="active"))
        assert {r.user_id for r in levels.rows} == active
    finally:
        await mirror.close()


async def test_another_replicas_change_arrives_by_re_reading(rig: Rig) -> None:
    other = rig.new_engine("test-2")
    mirror = SessionMirror(rig.engine)
    mirror.attach()
    try:
        made = await rig.engine.create_session(tenant="acme", user_id="ann")
        await rig.settle()
        await mirror.current()
        watcher = mirror.watch(scope=None)
        # The other replica makes a session and sleeps this one: no event here.
        theirs = await other.create_session(tenant="acme", user_id="ben")
        await other.drain()
        await other.sleep(made.id, None)
        await other.drain()
        assert theirs.id not in mirror.rows
        await mirror.load()  # what the watched refresh loop does every few seconds
        changed = watcher.take()
        assert set(changed) == {made.id, theirs.id}
        assert mirror.rows[made.id].state.value == "sleeping"
    finally:
        await mirror.close()
