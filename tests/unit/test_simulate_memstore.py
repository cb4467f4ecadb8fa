"""The simulator's store, :class:`dormant.store.MemoryStore`, obeys the Store contract exactly as
SqlStore (SQLite) does (the full contract suite on all three stores: tests/integration)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from dormant.errors import Conflict
from dormant.policy import ActivityTimes, State
from dormant.store import MemoryStore, NewEvent, SessionRecord, SqlStore, Store
from dormant.store.migrate import upgrade_async
from dormant.store.records import ApiKeyRecord, InstanceRecord

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "memory":
        yield MemoryStore()
        return
    url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    await upgrade_async(url)
    s = SqlStore(url)
    try:
        yield s
    finally:
        await s.close()


def record(
    sid: str, port: int | None = None, user: str = "u1", tenant: str = "t1"
) -> SessionRecord:
    return SessionRecord(
        id=sid,
        tenant=tenant,
        user_id=user,
        template="default",
        runtime="process",
        policy_name="balanced",
        policy={"sleep_after": 900.0},
        state=State.CREATING,
        state_since=T0,
        created_at=T0,
        container_name=f"dormant-{sid}",
        labels={"dormant.managed": "true"},
        port=port,
    )


CREATED = NewEvent("transition", "created", "create", None, "creating", "create")


async def test_sessions_versions_and_ports(store: Store) -> None:
    op = await store.insert_session(record("a", 8000), CREATED, ("create", "i1"))
    assert op is not None
    assert await store.insert_session(record("b", 8001), CREATED, None) is None
    with pytest.raises(Conflict):
        await store.insert_session(record("a", 8002), CREATED, None)
    with pytest.raises(Conflict):
        await store.insert_session(record("c", 8000), CREATED, None)
    got = await store.get_session("a")
    assert got is not None and got.version == 1 and got.port == 8000
    assert await store.get_session("zzz") is None

    running = got.replace(state=State.RUNNING, state_since=T0 + timedelta(seconds=1))
    saved = await store.update_session(running, 1, [NewEvent("transition", "up", "create")], T0)
    assert saved.version == 2
    with pytest.raises(Conflict):
        await store.update_session(running, 1)  # stale version
    with pytest.raises(Conflict):
        await store.update_session(saved.replace(port=8001), 2)  # b holds 8001
    moved = await store.update_session(saved.replace(port=8003), 2)
    assert await store.used_ports() == {8001, 8003}
    gone = await store.update_session(moved.replace(state=State.DELETED, port=None), 3)
    assert gone.version == 4 and await store.used_ports() == {8001}
    await store.insert_session(record("c", 8000), CREATED, None)  # the old port is free


def ids(rows: list[SessionRecord]) -> list[str]:
    return [r.id for r in rows]


async def test_listing_and_schedule(store: Store) -> None:
    for sid, user, tenant in (("a", "u1", "t1"), ("b", "u2", "t1"), ("c", "u1", "t2")):
        await store.insert_session(record(sid, user=user, tenant=tenant), CREATED, None)
    c = await store.get_session("c")
    assert c is not None
    await store.update_session(c.replace(state=State.DELETED), 1)
    assert ids(await store.list_sessions()) == ["a", "b"]
    assert ids(await store.list_sessions(include_deleted=True)) == ["a", "b", "c"]
    assert ids(await store.list_sessions(tenant="t1", user_id="u1")) == ["a"]
    assert ids(await store.list_sessions(state=State.DELETED)) == ["c"]
    assert ids(await store.list_sessions(after_id="a", limit=1)) == ["b"]
    assert sorted(s[0] for s in await store.live_schedule()) == ["a", "b"]
    assert await store.count_by_state(None) == {"creating": 2, "deleted": 1}
    assert await store.count_by_state("t2") == {"deleted": 1}


async def test_activity_flush_is_commutative(store: Store) -> None:
    await store.insert_session(record("a"), CREATED, None)
    late = ActivityTimes(T0 + timedelta(seconds=30), "command", "api", T0 + timedelta(seconds=40))
    early = ActivityTimes(T0 + timedelta(seconds=10), "chat", "ws", T0 + timedelta(seconds=50))
    await store.flush_activity({"a": late, "missing": late})
    await store.flush_activity({"a": early})
    got = await store.get_session("a")
    assert got is not None
    assert (got.last_activity_at, got.last_activity_kind, got.last_activity_source) == (
        T0 + timedelta(seconds=30),
        "command",
        "api",
    )
    assert got.last_seen_at == T0 + timedelta(seconds=50)
    assert got.version == 1  # a flush is no write of its own: it never makes a read stale
    await store.flush_activity({})


async def test_operations_timeline_keys_instances_models(store: Store) -> None:
    await store.insert_session(record("a"), CREATED, None)
    op = await store.insert_operation("a", "stop", "dormant-a", {"k": "v"}, "i1", T0)
    assert [o.id for o in await store.pending_operations()] == [op]
    await store.finish_operation(op, "done", 1, None, T0)
    assert await store.pending_operations() == []

    a = await store.get_session("a")
    assert a is not None
    await store.update_session(
        a.replace(state=State.STOPPING),
        1,
        [NewEvent("transition", "idle", "inactivity", "creating", "stopping", "sleep")],
        T0,
    )
    await store.add_events("a", [NewEvent("decision", "warned", "sleep_warning")], T0)
    timeline = await store.list_events("a")
    assert [e.code for e in timeline] == ["create", "inactivity", "sleep_warning"]
    assert [e.code for e in await store.list_events("a", limit=1)] == ["create"]
    assert await store.event_counts(None) == {"create": {"create": 1}, "sleep": {"inactivity": 1}}
    assert await store.event_counts("nobody") == {}

    key = ApiKeyRecord("k1", "h" * 64, "t1", False, "ci", T0, None)
    await store.insert_key(key)
    assert await store.get_key("k1") == key
    assert [k.id for k in await store.list_keys()] == ["k1"]
    assert await store.revoke_key("k1", T0) and not await store.revoke_key("k1", T0)
    assert await store.get_key("nope") is None

    await store.heartbeat_instance(InstanceRecord("i1", "h", 1, T0, T0))
    await store.heartbeat_instance(InstanceRecord("i1", "h", 1, T0, T0 + timedelta(seconds=9)))
    assert [i.heartbeat_at for i in await store.live_instances(T0 + timedelta(seconds=5))] == [
        T0 + timedelta(seconds=9)
    ]
    await store.remove_instance("i1")
    assert await store.live_instances(T0) == []

    await store.save_adaptive({"user:t/u": {"observations": 2, "weights": [1.0]}}, T0)
    await store.save_adaptive({"user:t/u": {"observations": 3, "weights": [2.0]}}, T0)
    assert await store.load_adaptive() == {"user:t/u": {"observations": 3, "weights": [2.0]}}
    assert await store.load_adaptive(["other"]) == {}


def test_the_old_import_path_still_gives_the_store() -> None:
    from dormant import simulate
    from dormant.simulate import memstore

    assert memstore.MemoryStore is MemoryStore
    assert simulate.MemoryStore is MemoryStore


async def test_memory_store_refuses_what_a_database_cannot_keep() -> None:
    from dormant.errors import InvalidInput

    store = MemoryStore()
    naive = T0.replace(tzinfo=None)
    with pytest.raises(InvalidInput, match="naive datetime"):
        await store.insert_session(record("a").replace(created_at=naive), CREATED, None)
    with pytest.raises(InvalidInput, match="JSON"):
        await store.insert_session(record("a").replace(policy={"x": object()}), CREATED, None)
    with pytest.raises(InvalidInput, match="JSON"):
        await store.insert_session(record("a").replace(policy={"x": float("nan")}), CREATED, None)
    assert await store.get_session("a") is None
    assert await store.list_events("a") == []
    await store.insert_session(record("a").replace(labels={"n": 1, 2: "k"}), CREATED, None)  # type: ignore[dict-item]
    got = await store.get_session("a")
    assert got is not None and got.labels == {"n": 1, "2": "k"}  # as JSON keeps it
    with pytest.raises(InvalidInput, match="naive datetime"):
        await store.update_session(got.replace(warned_at=naive), got.version)
    with pytest.raises(InvalidInput, match="naive datetime"):
        await store.flush_activity({"a": ActivityTimes(naive, "chat", "api")})
    again = await store.get_session("a")
    assert again is not None and (again.version, again.warned_at) == (1, None)
