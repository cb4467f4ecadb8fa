"""The Store contract on both databases dormant supports: SQLite (default) and real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from dormant.errors import Conflict
from dormant.policy import ActivityTimes, State
from dormant.store import NewEvent, SessionRecord, SqlStore
from dormant.store.records import ApiKeyRecord, InstanceRecord

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def record(sid: str, port: int | None = None, user: str = "u1") -> SessionRecord:
    return SessionRecord(
        id=sid,
        tenant="t1",
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
        next_action_at=T0 + timedelta(minutes=15),
    )


async def test_insert_get_roundtrip_keeps_aware_utc_and_json(store: SqlStore) -> None:
    op = await store.insert_session(
        record("a1", 8000), NewEvent("transition", "created"), ("create", "i1")
    )
    assert op is not None
    got = await store.get_session("a1")
    assert got is not None
    assert got.created_at == T0 and got.created_at.tzinfo is not None
    assert got.policy == {"sleep_after": 900.0}
    assert got.labels == {"dormant.managed": "true"}
    assert [o.kind for o in await store.pending_operations()] == ["create"]
    await store.finish_operation(op, "done", 1, None, T0)
    assert await store.pending_operations() == []


async def test_update_is_optimistic(store: SqlStore) -> None:
    await store.insert_session(record("a1"), NewEvent("transition", "created"), None)
    got = await store.get_session("a1")
    assert got is not None
    saved = await store.update_session(
        got.replace(state=State.RUNNING),
        got.version,
        [NewEvent("transition", "up", "create", "creating", "running")],
        T0,
    )
    assert saved.version == got.version + 1
    with pytest.raises(Conflict):
        await store.update_session(got.replace(state=State.SLEEPING), got.version)
    fresh = await store.get_session("a1")
    assert fresh is not None and fresh.state is State.RUNNING
    assert [e.reason for e in await store.list_events("a1")] == ["created", "up"]


async def test_ports_are_unique_among_sessions(store: SqlStore) -> None:
    await store.insert_session(record("a1", 8000), NewEvent("transition", "c"), None)
    with pytest.raises(Conflict):
        await store.insert_session(record("a2", 8000), NewEvent("transition", "c"), None)
    assert await store.get_session("a2") is None
    assert await store.used_ports() == {8000}


async def test_flush_activity_takes_the_max_and_never_goes_back(store: SqlStore) -> None:
    await store.insert_session(record("a1"), NewEvent("transition", "c"), None)
    late, early = T0 + timedelta(minutes=5), T0 + timedelta(minutes=1)
    await store.flush_activity({"a1": ActivityTimes(late, "build", "api", late)})
    await store.flush_activity({"a1": ActivityTimes(early, "chat", "api", early)})
    await store.flush_activity({"a1": ActivityTimes(None, None, None, late + timedelta(1))})
    got = await store.get_session("a1")
    assert got is not None
    assert (got.last_activity_at, got.last_activity_kind) == (late, "build")
    assert got.last_seen_at == late + timedelta(1)


async def test_list_pages_by_id_and_filters(store: SqlStore) -> None:
    for i in range(5):
        await store.insert_session(
            record(f"a{i}", user="u1" if i < 3 else "u2"), NewEvent("transition", "c"), None
        )
    first = await store.list_sessions(limit=2)
    second = await store.list_sessions(limit=2, after_id=first[-1].id)
    assert [r.id for r in first + second] == ["a0", "a1", "a2", "a3"]
    assert len(await store.list_sessions(user_id="u2")) == 2
    assert await store.list_sessions(tenant="nobody") == []
    assert await store.count_by_state("t1") == {"creating": 5}
    assert len(await store.live_schedule()) == 5


async def test_keys_and_instances(store: SqlStore) -> None:
    await store.insert_key(ApiKeyRecord("k1", "h" * 64, "t1", False, "ci", T0, None))
    assert (await store.get_key("k1")) is not None
    assert await store.revoke_key("k1", T0) is True
    assert await store.revoke_key("k1", T0) is False
    key = await store.get_key("k1")
    assert key is not None and key.revoked_at == T0
    await store.heartbeat_instance(InstanceRecord("i1", "h", 1, T0, T0))
    await store.heartbeat_instance(InstanceRecord("i1", "h", 1, T0, T0 + timedelta(seconds=10)))
    assert [i.id for i in await store.live_instances(T0 + timedelta(seconds=5))] == ["i1"]
    await store.remove_instance("i1")
    assert await store.live_instances(T0) == []


async def test_event_counts_group_transitions_by_action_and_reason(store: SqlStore) -> None:
    await store.insert_session(
        record("a1"), NewEvent("transition", "c", "create", None, "creating", "create"), None
    )
    await store.add_events(
        "a1", [NewEvent("transition", "idle", "inactivity", "running", "stopping", "sleep")], T0
    )
    counts = await store.event_counts("t1")
    assert counts == {"create": {"create": 1}, "sleep": {"inactivity": 1}}


async def test_deployment_id_is_made_once_and_kept(store: SqlStore) -> None:
    first = await store.deployment_id("abc123", T0)
    again = await store.deployment_id("zzz999", T0 + timedelta(days=1))
    assert (first, again) == ("abc123", "abc123")


async def test_connection_counts_per_instance_roundtrip(store: SqlStore) -> None:
    await store.insert_session(record("c1"), NewEvent("transition", "created"), None)
    await store.insert_session(record("c2"), NewEvent("transition", "created"), None)
    got = await store.get_session("c1")
    assert got is not None and got.connections_by_instance == {}
    await store.update_session(
        got.replace(connections=3, connections_by_instance={"i1": 2, "i2": 1}), got.version
    )
    with_counts = await store.sessions_with_connections()
    assert [(r.id, r.connections, r.connections_by_instance) for r in with_counts] == [
        ("c1", 3, {"i1": 2, "i2": 1})
    ]


async def test_purge_removes_only_sessions_deleted_before_the_cutoff(store: SqlStore) -> None:
    for sid, deleted_at in (("old", T0), ("new", T0 + timedelta(days=40)), ("live", None)):
        await store.insert_session(record(sid), NewEvent("transition", "created"), ("create", "i1"))
        if deleted_at is not None:
            got = await store.get_session(sid)
            assert got is not None
            await store.update_session(
                got.replace(state=State.DELETED, deleted_at=deleted_at),
                got.version,
                [NewEvent("transition", "deleted")],
            )
    cutoff = T0 + timedelta(days=30)
    assert await store.purge_deleted(cutoff, 500) == 1
    assert await store.get_session("old") is None
    assert await store.list_events("old") == []
    assert {o.session_id for o in await store.pending_operations()} == {"new", "live"}
    assert await store.get_session("new") is not None
    assert len(await store.list_events("live")) == 1
    assert await store.purge_deleted(cutoff, 500) == 0
