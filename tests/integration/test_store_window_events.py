"""``Store.window_events`` (the console's overview reads its timelines with it), on every store:
transitions of the sessions alive in the window (their earlier ones too), activity entries
from ``activity_since``, a tenant's only, in session then event order, at most ``limit``."""

from __future__ import annotations

from datetime import timedelta

from dormant.policy import State
from dormant.store import NewEvent, Store

from .migrated import migrated_fixture, store_fixture  # noqa: F401  (stores from migrated templates)
from .test_store_contract import T0, record


async def _session(store: Store, sid: str, tenant: str = "t1") -> None:
    await store.insert_session(
        record(sid).replace(tenant=tenant),
        NewEvent("transition", "created", "create", None, "creating", "create"),
        None,
    )


async def _move(store: Store, sid: str, to: State, minutes: float, **changes: object) -> None:
    got = await store.get_session(sid)
    assert got is not None
    event = NewEvent("transition", f"to {to}", "test", got.state.value, to.value)
    await store.update_session(
        got.replace(state=to, **changes), got.version, [event], T0 + timedelta(minutes=minutes)
    )


async def test_window_events_reads_the_timelines_of_the_window(store: Store) -> None:
    await _session(store, "a1")
    await _move(store, "a1", State.RUNNING, 1)
    await store.add_events(
        "a1",
        [NewEvent("activity", "old", "api"), NewEvent("decision", "skip me", "x")],
        T0 + timedelta(minutes=2),
    )
    await store.add_events("a1", [NewEvent("activity", "new", "api")], T0 + timedelta(minutes=50))
    await _session(store, "b1", tenant="t2")
    await _move(store, "b1", State.RUNNING, 3)
    await _session(store, "c1")  # deleted before the window: left out
    await _move(store, "c1", State.DELETED, 5, deleted_at=T0 + timedelta(minutes=5))

    since = T0 + timedelta(minutes=30)
    got = await store.window_events(since, since, None, 100)
    assert [(e.session_id, e.type, e.reason) for e in got] == [
        ("a1", "transition", "created"),
        ("a1", "transition", "to running"),  # before the window: the state at its start
        ("a1", "activity", "new"),
        ("b1", "transition", "created"),
        ("b1", "transition", "to running"),
    ]
    assert got[1].at == T0 + timedelta(minutes=1) and got[1].to_state == "running"
    mine = await store.window_events(since, T0, "t1", 100)
    assert [(e.session_id, e.reason) for e in mine] == [
        ("a1", "created"),
        ("a1", "to running"),
        ("a1", "old"),
        ("a1", "new"),
    ]
    assert len(await store.window_events(T0, T0, None, 3)) == 3
