"""The Store contract (``dormant.store.base``), one suite on every implementation: the
MemoryStore, SqlStore on SQLite (the default) and SqlStore on a real PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, cast

import pytest

from dormant.errors import Conflict, DormantError
from dormant.policy import ActivityTimes, State
from dormant.store import (
    IdempotencyKey,
    IdempotencyRecord,
    KeyTaken,
    NameTaken,
    NewEvent,
    SessionRecord,
    Store,
)
from dormant.store.records import ApiKeyRecord, InstanceRecord

from .migrated import migrated_fixture, store_fixture  # noqa: F401  (stores from migrated templates)

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


async def test_insert_get_roundtrip_keeps_aware_utc_and_json(store: Store) -> None:
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


async def test_update_is_optimistic(store: Store) -> None:
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


async def test_ports_are_unique_among_sessions(store: Store) -> None:
    await store.insert_session(record("a1", 8000), NewEvent("transition", "c"), None)
    with pytest.raises(Conflict):
        await store.insert_session(record("a2", 8000), NewEvent("transition", "c"), None)
    assert await store.get_session("a2") is None
    assert await store.used_ports() == {8000}


async def test_flush_activity_takes_the_max_and_never_goes_back(store: Store) -> None:
    await store.insert_session(record("a1"), NewEvent("transition", "c"), None)
    late, early = T0 + timedelta(minutes=5), T0 + timedelta(minutes=1)
    await store.flush_activity({"a1": ActivityTimes(late, "build", "api", late)})
    await store.flush_activity({"a1": ActivityTimes(early, "chat", "api", early)})
    await store.flush_activity({"a1": ActivityTimes(None, None, None, late + timedelta(1))})
    got = await store.get_session("a1")
    assert got is not None
    assert (got.last_activity_at, got.last_activity_kind) == (late, "build")
    assert got.last_seen_at == late + timedelta(1)


async def test_list_pages_by_id_and_filters(store: Store) -> None:
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


async def test_keys_and_instances(store: Store) -> None:
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


async def test_event_counts_group_transitions_by_action_and_reason(store: Store) -> None:
    await store.insert_session(
        record("a1"), NewEvent("transition", "c", "create", None, "creating", "create"), None
    )
    await store.add_events(
        "a1", [NewEvent("transition", "idle", "inactivity", "running", "stopping", "sleep")], T0
    )
    counts = await store.event_counts("t1")
    assert counts == {"create": {"create": 1}, "sleep": {"inactivity": 1}}


async def test_deployment_id_is_made_once_and_kept(store: Store) -> None:
    first = await store.deployment_id("abc123", T0)
    again = await store.deployment_id("zzz999", T0 + timedelta(days=1))
    assert (first, again) == ("abc123", "abc123")


async def test_connection_counts_per_instance_roundtrip(store: Store) -> None:
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


async def test_purge_removes_only_sessions_deleted_before_the_cutoff(store: Store) -> None:
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


# --- the rest of the contract -----------------------------------------------------------------

CREATED = NewEvent("transition", "created", "create", None, "creating", "create")


async def test_what_comes_back_is_what_a_database_keeps(store: Store) -> None:
    """JSON columns come back as JSON (tuples as lists), times as aware UTC whatever offset
    they were given, and a record handed out is a copy: changing it changes nothing stored."""
    plus2 = timezone(timedelta(hours=2))
    given = record("j1").replace(
        policy={"sleep_after": 900.0, "pair": (1, 2)},
        env={"A": "1"},
        runtime_state={"id": "c0ffee", "ports": [8000]},
        created_at=T0.astimezone(plus2),
        last_activity_at=(T0 + timedelta(minutes=1)).astimezone(plus2),
    )
    await store.insert_session(given, CREATED, None)
    got = await store.get_session("j1")
    assert got is not None
    assert got.policy == {"sleep_after": 900.0, "pair": [1, 2]}
    assert got.runtime_state == {"id": "c0ffee", "ports": [8000]}
    assert got.created_at == T0 and got.created_at.utcoffset() == timedelta(0)
    assert got.last_activity_at == T0 + timedelta(minutes=1)
    assert got.last_activity_at.utcoffset() == timedelta(0)
    got.labels["dormant.managed"] = "false"
    got.runtime_state["ports"].append(9999)
    given.env["B"] = "2"
    again = await store.get_session("j1")
    assert again is not None
    assert again.labels == {"dormant.managed": "true"}
    assert again.runtime_state == {"id": "c0ffee", "ports": [8000]}
    assert again.env == {"A": "1"}
    assert again.version == 1
    assert await store.get_session("nobody") is None


async def test_insert_writes_session_event_and_intent_together(store: Store) -> None:
    op = await store.insert_session(record("i1", 8000), CREATED, ("create", "inst-1"))
    [pending] = await store.pending_operations()
    assert (pending.id, pending.session_id, pending.kind, pending.status) == (
        op,
        "i1",
        "create",
        "pending",
    )
    assert (pending.container_name, pending.labels, pending.instance_id) == (
        "dormant-i1",
        {"dormant.managed": "true"},
        "inst-1",
    )
    assert (pending.attempts, pending.error, pending.created_at) == (0, None, T0)
    [event] = await store.list_events("i1")
    assert (event.at, event.type, event.code, event.to_state, event.action) == (
        T0,
        "transition",
        "create",
        "creating",
        "create",
    )
    # a refused insert writes nothing: no session, no timeline, no intent
    with pytest.raises(Conflict):
        await store.insert_session(record("i1", 8001), CREATED, ("create", "inst-1"))
    with pytest.raises(Conflict):
        await store.insert_session(record("i2", 8000), CREATED, ("create", "inst-1"))
    assert await store.get_session("i2") is None
    assert await store.list_events("i2") == []
    assert len(await store.list_events("i1")) == 1
    assert [o.id for o in await store.pending_operations()] == [op]
    assert await store.used_ports() == {8000}


async def test_a_stale_or_unknown_update_changes_nothing(store: Store) -> None:
    await store.insert_session(record("s1"), CREATED, None)
    got = await store.get_session("s1")
    assert got is not None
    first = await store.update_session(
        got.replace(state=State.RUNNING, state_since=T0 + timedelta(seconds=3)),
        got.version,
        [NewEvent("transition", "up", "create", "creating", "running")],
    )
    assert first.version == 2
    with pytest.raises(Conflict):
        await store.update_session(
            got.replace(state=State.FAILED), got.version, [NewEvent("transition", "lost")], T0
        )
    with pytest.raises(Conflict):
        await store.update_session(record("ghost"), 1, [NewEvent("transition", "x")], T0)
    fresh = await store.get_session("s1")
    assert fresh is not None and (fresh.state, fresh.version) == (State.RUNNING, 2)
    events = await store.list_events("s1")
    # without ``now`` the entries are stamped with the record's state_since
    assert [(e.reason, e.at) for e in events] == [
        ("created", T0),
        ("up", T0 + timedelta(seconds=3)),
    ]
    assert await store.list_events("ghost") == []
    assert await store.get_session("ghost") is None


async def test_concurrent_updates_of_one_version_let_exactly_one_win(store: Store) -> None:
    await store.insert_session(record("r1"), CREATED, None)
    got = await store.get_session("r1")
    assert got is not None
    results = await asyncio.gather(
        store.update_session(got.replace(state=State.RUNNING), got.version),
        store.update_session(got.replace(state=State.FAILED), got.version),
        return_exceptions=True,
    )
    won = [r for r in results if isinstance(r, SessionRecord)]
    lost = [r for r in results if isinstance(r, Conflict)]
    assert (len(won), len(lost)) == (1, 1)
    fresh = await store.get_session("r1")
    assert fresh is not None
    assert (fresh.state, fresh.version) == (won[0].state, 2)


async def test_ports_move_with_updates_and_stay_taken_until_purged(store: Store) -> None:
    await store.insert_session(record("p1", 8000), CREATED, None)
    await store.insert_session(record("p2", 8001), CREATED, None)
    p1 = await store.get_session("p1")
    assert p1 is not None
    with pytest.raises(Conflict):
        await store.update_session(p1.replace(port=8001), p1.version)
    unchanged = await store.get_session("p1")
    assert unchanged is not None and (unchanged.port, unchanged.version) == (8000, 1)
    moved = await store.update_session(p1.replace(port=8002), p1.version)
    assert await store.used_ports() == {8001, 8002}
    await store.insert_session(record("p3", 8000), CREATED, None)  # its old port is free
    # a deleted session keeps its port (the unique index covers every row) until purged
    deleted = await store.update_session(
        moved.replace(state=State.DELETED, deleted_at=T0), moved.version
    )
    assert deleted.port == 8002 and await store.used_ports() == {8000, 8001, 8002}
    with pytest.raises(Conflict):
        await store.insert_session(record("p4", 8002), CREATED, None)
    assert await store.purge_deleted(T0 + timedelta(days=1), 10) == 1
    assert await store.used_ports() == {8000, 8001}
    await store.insert_session(record("p4", 8002), CREATED, None)
    released = await store.get_session("p2")
    assert released is not None
    await store.update_session(released.replace(port=None), released.version)
    assert await store.used_ports() == {8000, 8002}


async def test_flush_activity_merges_without_a_version_and_skips_deleted_and_unknown(
    store: Store,
) -> None:
    await store.insert_session(record("f1"), CREATED, None)
    await store.insert_session(record("f2"), CREATED, None)
    f2 = await store.get_session("f2")
    assert f2 is not None
    gone = await store.update_session(f2.replace(state=State.DELETED, deleted_at=T0), 1)
    seen = T0 + timedelta(minutes=2)
    await store.flush_activity(
        {
            "f1": ActivityTimes(seen, "command", "api", seen),
            "f2": ActivityTimes(seen, "command", "api", seen),
            "unknown": ActivityTimes(seen, "command", "api", seen),
        }
    )
    await store.flush_activity({})
    f1 = await store.get_session("f1")
    assert f1 is not None
    # no version bump: activity never makes another writer's read stale
    assert (f1.last_activity_at, f1.last_activity_source, f1.version) == (seen, "api", 1)
    still = await store.get_session("f2")
    assert still is not None and (still.last_activity_at, still.version) == (None, gone.version)
    assert await store.get_session("unknown") is None
    # a write from a read made before the flush succeeds and keeps the flushed activity
    before = record("f1")
    kept = await store.update_session(before.replace(state=State.RUNNING), 1)
    assert (kept.state, kept.version, kept.last_activity_at, kept.last_seen_at) == (
        State.RUNNING,
        2,
        seen,
        seen,
    )
    assert kept.last_activity_kind == "command"
    later = seen + timedelta(minutes=1)  # a newer activity in a write wins
    newer = await store.update_session(kept.replace(last_activity_at=later), kept.version)
    assert newer.last_activity_at == later


async def test_listing_filters_states_and_schedule(store: Store) -> None:
    for sid, user, tenant in (("b", "u1", "t1"), ("a", "u2", "t1"), ("c", "u1", "t2")):
        await store.insert_session(record(sid, user=user).replace(tenant=tenant), CREATED, None)
    c = await store.get_session("c")
    assert c is not None
    await store.update_session(c.replace(state=State.DELETED, next_action_at=None), 1)

    def ids(rows: list[SessionRecord]) -> list[str]:
        return [r.id for r in rows]

    assert ids(await store.list_sessions()) == ["a", "b"]
    assert ids(await store.list_sessions(include_deleted=True)) == ["a", "b", "c"]
    assert ids(await store.list_sessions(tenant="t1", user_id="u1")) == ["b"]
    assert ids(await store.list_sessions(state=State.DELETED)) == ["c"]
    assert ids(await store.list_sessions(state=State.CREATING, tenant="t2")) == []
    assert ids(await store.list_sessions(after_id="a", limit=1)) == ["b"]
    assert ids(await store.list_sessions(after_id="b")) == []
    assert await store.list_sessions(limit=0) == []
    assert sorted(await store.live_schedule()) == [
        ("a", "creating", T0 + timedelta(minutes=15)),
        ("b", "creating", T0 + timedelta(minutes=15)),
    ]
    assert await store.count_by_state(None) == {"creating": 2, "deleted": 1}
    assert await store.count_by_state("t2") == {"deleted": 1}
    assert await store.count_by_state("nobody") == {}


async def test_sessions_with_connections_leaves_out_idle_and_deleted(store: Store) -> None:
    for sid, count in (("w1", 2), ("w2", 0), ("w3", 1)):
        await store.insert_session(record(sid), CREATED, None)
        got = await store.get_session(sid)
        assert got is not None
        state = State.DELETED if sid == "w3" else State.RUNNING
        await store.update_session(
            got.replace(state=state, connections=count, connections_by_instance={"i1": count}),
            got.version,
        )
    assert [r.id for r in await store.sessions_with_connections()] == ["w1"]


async def test_purge_goes_oldest_first_up_to_the_limit_with_timelines_and_operations(
    store: Store,
) -> None:
    for i, sid in enumerate(("d3", "d1", "d2")):
        await store.insert_session(record(sid), CREATED, ("create", "i1"))
        got = await store.get_session(sid)
        assert got is not None
        when = T0 + timedelta(hours={"d1": 1, "d2": 2, "d3": 3}[sid])
        await store.update_session(got.replace(state=State.DELETED, deleted_at=when), got.version)
        await store.insert_operation(sid, "remove", f"dormant-{sid}", {}, "i1", T0)
        assert i == len(await store.list_sessions(state=State.DELETED)) - 1
    cutoff = T0 + timedelta(days=1)
    assert await store.purge_deleted(cutoff, 2) == 2
    assert [r.id for r in await store.list_sessions(include_deleted=True)] == ["d3"]
    assert {o.session_id for o in await store.pending_operations()} == {"d3"}
    assert await store.list_events("d1") == [] and await store.list_events("d2") == []
    assert len(await store.list_events("d3")) == 1
    assert await store.purge_deleted(cutoff, 0) == 0
    assert await store.purge_deleted(T0 + timedelta(hours=3), 10) == 0  # not before the cutoff
    assert await store.purge_deleted(cutoff, 10) == 1
    assert await store.list_sessions(include_deleted=True) == []


async def test_operations_stay_pending_until_finished(store: Store) -> None:
    await store.insert_session(record("o1"), CREATED, None)
    first = await store.insert_operation("o1", "start", "dormant-o1", {"k": "v"}, "i1", T0)
    second = await store.insert_operation("o1", "stop", "dormant-o1", {}, "i2", T0)
    assert second > first
    later = T0 + timedelta(seconds=7)
    await store.finish_operation(first, "pending", 2, "engine busy", later)
    await store.finish_operation(12345, "done", 1, None, later)  # unknown: nothing happens
    ops = await store.pending_operations()
    assert [(o.id, o.kind, o.attempts, o.error, o.updated_at) for o in ops] == [
        (first, "start", 2, "engine busy", later),
        (second, "stop", 0, None, T0),
    ]
    assert ops[0].labels == {"k": "v"} and ops[0].created_at == T0
    await store.finish_operation(first, "failed", 3, "gave up", later)
    await store.finish_operation(second, "done", 1, None, later)
    assert await store.pending_operations() == []


async def test_timelines_keep_order_limit_and_count_by_tenant(store: Store) -> None:
    await store.insert_session(record("e1"), CREATED, None)
    await store.insert_session(record("e2").replace(tenant="t2"), CREATED, None)
    sleep = NewEvent("transition", "idle", "inactivity", "running", "stopping", "sleep")
    await store.add_events("e1", [sleep, NewEvent("decision", "warned", "sleep_warning")], T0)
    await store.add_events("e2", [sleep, sleep], T0)
    await store.add_events("e1", [], T0)
    timeline = await store.list_events("e1")
    assert [e.code for e in timeline] == ["create", "inactivity", "sleep_warning"]
    assert [e.id for e in timeline] == sorted(e.id for e in timeline)
    assert [e.code for e in await store.list_events("e1", limit=2)] == ["create", "inactivity"]
    assert await store.event_counts("t1") == {"create": {"create": 1}, "sleep": {"inactivity": 1}}
    assert await store.event_counts("t2") == {"create": {"create": 1}, "sleep": {"inactivity": 2}}
    assert await store.event_counts(None) == {
        "create": {"create": 2},
        "sleep": {"inactivity": 3},
    }
    assert await store.event_counts("nobody") == {}


async def test_keys_list_by_creation_and_a_duplicate_is_refused(store: Store) -> None:
    later = ApiKeyRecord("k2", "b" * 64, "t1", True, "admin", T0 + timedelta(hours=1), None)
    first = ApiKeyRecord("k1", "a" * 64, "t1", False, "ci", T0, None)
    await store.insert_key(later)
    await store.insert_key(first)
    assert await store.get_key("k1") == first
    assert await store.get_key("nope") is None
    assert [k.id for k in await store.list_keys()] == ["k1", "k2"]
    # refused (MemoryStore: Conflict; SqlStore today: TemporaryError), the first one kept
    with pytest.raises(DormantError):
        await store.insert_key(ApiKeyRecord("k1", "c" * 64, "t9", True, "evil", T0, None))
    assert await store.get_key("k1") == first
    assert await store.revoke_key("nope", T0) is False


async def test_a_heartbeat_moves_only_the_heartbeat(store: Store) -> None:
    await store.heartbeat_instance(InstanceRecord("i1", "host-a", 11, T0, T0))
    await store.heartbeat_instance(InstanceRecord("i2", "host-b", 22, T0, T0))
    beat = T0 + timedelta(seconds=30)
    await store.heartbeat_instance(InstanceRecord("i1", "other", 99, beat, beat))
    assert await store.live_instances(T0 + timedelta(seconds=10)) == [
        InstanceRecord("i1", "host-a", 11, T0, beat)
    ]
    assert sorted(i.id for i in await store.live_instances(T0)) == ["i1", "i2"]
    await store.remove_instance("i2")
    await store.remove_instance("never-there")
    assert [i.id for i in await store.live_instances(T0)] == ["i1"]


async def test_adaptive_models_are_replaced_by_key_and_handed_out_as_copies(
    store: Store,
) -> None:
    await store.save_adaptive(
        {"user:t/a": {"observations": 2, "weights": [1.0, 0.5]}, "template:t/x": {}}, T0
    )
    loaded = await store.load_adaptive(["user:t/a"])
    loaded["user:t/a"]["weights"].append(9.0)
    assert await store.load_adaptive(["user:t/a", "missing"]) == {
        "user:t/a": {"observations": 2, "weights": [1.0, 0.5]}
    }
    await store.save_adaptive({"user:t/a": {"observations": 3, "weights": [2.0]}}, T0)
    assert await store.load_adaptive() == {
        "user:t/a": {"observations": 3, "weights": [2.0]},
        "template:t/x": {},
    }


async def test_concurrent_first_starts_agree_on_one_deployment_id(store: Store) -> None:
    ids = await asyncio.gather(*(store.deployment_id(f"cand{i}", T0) for i in range(4)))
    assert len(set(ids)) == 1 and ids[0] in {f"cand{i}" for i in range(4)}
    assert await store.deployment_id("late", T0 + timedelta(days=1)) == ids[0]


async def test_ping_answers(store: Store) -> None:
    # ``ping`` is not declared on Store (reported): every implementation has it.
    assert await cast(Any, store).ping() is None


async def _due_sessions(store: Store, n: int) -> list[str]:
    ids = [f"d{i:03d}" for i in range(n)]
    for sid in ids:
        await store.insert_session(record(sid), NewEvent("transition", "created"), None)
    return ids  # next_action_at is T0 + 15 min


async def test_claims_are_exclusive_until_their_lease_ends(store: Store) -> None:
    ids = await _due_sessions(store, 3)
    due = T0 + timedelta(minutes=16)
    lease = due + timedelta(seconds=60)
    first = await store.claim_due("i1", due, lease, live_instances=["i1", "i2"])
    assert sorted(c.session_id for c in first) == ids
    assert {c.fence for c in first} == {1}
    assert first[0].due_at == T0 + timedelta(minutes=15)
    assert await store.claim_due("i2", due, lease, live_instances=["i1", "i2"]) == []
    # not yet due: nothing; named explicitly: claimed anyway (a hint of the heap)
    assert await store.claim_due("i2", T0, lease, live_instances=["i1", "i2"]) == []
    # the lease ran out: another instance takes them, with a new fence
    later = await store.claim_due(
        "i2", lease + timedelta(seconds=1), lease + timedelta(minutes=2), live_instances=["i1"]
    )
    assert sorted((c.session_id, c.fence) for c in later) == [(sid, 2) for sid in ids]


async def test_a_dead_instances_claims_return_to_the_pool(store: Store) -> None:
    await _due_sessions(store, 2)
    due = T0 + timedelta(minutes=16)
    lease = due + timedelta(minutes=5)
    assert len(await store.claim_due("i1", due, lease, live_instances=["i1"])) == 2
    taken = await store.claim_due("i2", due, lease, live_instances=["i2"])  # i1 is gone
    assert len(taken) == 2


async def test_named_sessions_are_claimed_before_they_are_due(store: Store) -> None:
    await _due_sessions(store, 2)
    lease = T0 + timedelta(minutes=1)
    claims = await store.claim_due("i1", T0, lease, live_instances=["i1"], ids=["d001"])
    assert [c.session_id for c in claims] == ["d001"]


async def test_a_stale_fence_is_refused_and_release_frees_the_claim(store: Store) -> None:
    (sid,) = await _due_sessions(store, 1)
    due = T0 + timedelta(minutes=16)
    (claim,) = await store.claim_due("i1", due, due + timedelta(minutes=1), live_instances=[])
    got = await store.get_session(sid)
    assert got is not None and got.fence == claim.fence
    with pytest.raises(Conflict):
        await store.update_session(got.replace(error="x"), got.version, fence=claim.fence - 1)
    saved = await store.update_session(got.replace(error="y"), got.version, fence=claim.fence)
    assert saved.error == "y"
    fresh = await store.get_session(sid)
    assert fresh is not None and fresh.fence == claim.fence  # a write never moves the fence
    # kept until later: nobody (not even i1 itself) claims it before that
    await store.release_claim(sid, "i1", claim.fence, until=due + timedelta(minutes=5))
    assert await store.claim_due("i1", due + timedelta(minutes=2), due, live_instances=["i1"]) == []
    await store.release_claim(sid, "i1", claim.fence)
    again = await store.claim_due("i2", due, due + timedelta(minutes=1), live_instances=["i1"])
    assert [(c.session_id, c.fence) for c in again] == [(sid, claim.fence + 1)]
    # a release by an instance that lost the claim changes nothing
    await store.release_claim(sid, "i1", claim.fence)
    assert await store.claim_due("i3", due, due, live_instances=["i2"]) == []


async def test_concurrent_claimers_never_share_a_session(store: Store) -> None:
    ids = await _due_sessions(store, 40)
    due = T0 + timedelta(minutes=16)
    lease = due + timedelta(minutes=1)
    live = [f"i{n}" for n in range(4)]
    batches = await asyncio.gather(
        *(store.claim_due(i, due, lease, live_instances=live, limit=15) for i in live)
    )
    claimed = [c.session_id for batch in batches for c in batch]
    assert len(claimed) == len(set(claimed)) == 40
    assert sorted(claimed) == ids


async def test_an_access_link_is_consumed_once_before_it_expires(store: Store) -> None:
    await store.insert_link("a" * 64, "s1", T0 + timedelta(minutes=5))
    await store.insert_link("b" * 64, "s2", T0 + timedelta(minutes=1))
    with pytest.raises(Conflict):
        await store.insert_link("a" * 64, "s3", T0 + timedelta(minutes=5))
    assert await store.consume_link("c" * 64, T0) is None  # unknown
    assert await store.consume_link("b" * 64, T0 + timedelta(minutes=2)) is None  # expired
    # Racing exchanges of one token: exactly one gets the session.
    results = await asyncio.gather(*(store.consume_link("a" * 64, T0) for _ in range(8)))
    assert results.count("s1") == 1 and results.count(None) == 7
    assert await store.consume_link("a" * 64, T0) is None  # used
    assert await store.purge_links(T0 + timedelta(minutes=3)) == 1  # b expired; a not yet
    assert await store.purge_links(T0 + timedelta(minutes=6)) == 1
    assert await store.purge_links(T0 + timedelta(minutes=6)) == 0


# --- session names and idempotency keys -------------------------------------------------------


def named(sid: str, name: str | None, **changes: Any) -> SessionRecord:
    return record(sid).replace(name=name, **changes)


async def _delete(store: Store, sid: str) -> None:
    got = await store.get_session(sid)
    assert got is not None
    await store.update_session(
        got.replace(state=State.DELETED, deleted_at=T0), got.version, [NewEvent("t", "gone")]
    )


async def test_a_name_is_held_by_one_live_session_per_user_and_template(store: Store) -> None:
    await store.insert_session(named("n1", "dev"), CREATED, ("create", "i1"))
    with pytest.raises(NameTaken) as refused:
        await store.insert_session(named("n2", "dev"), CREATED, ("create", "i1"))
    assert "n1" in str(refused.value)
    assert isinstance(refused.value, Conflict)
    # nothing of the refused insert was written
    assert await store.get_session("n2") is None
    assert await store.list_events("n2") == []
    assert [o.session_id for o in await store.pending_operations()] == ["n1"]
    # the same name elsewhere, and unnamed sessions, are free
    await store.insert_session(named("n3", "dev", user_id="u2"), CREATED, None)
    await store.insert_session(named("n4", "dev", template="other"), CREATED, None)
    await store.insert_session(named("n5", "dev", tenant="t2"), CREATED, None)
    await store.insert_session(named("n6", None), CREATED, None)
    await store.insert_session(named("n7", None), CREATED, None)
    await store.insert_session(named("n8", "dev2"), CREATED, None)
    got = await store.get_session("n1")
    assert got is not None and got.name == "dev"
    assert [r.id for r in await store.list_sessions(name="dev")] == ["n1", "n3", "n4", "n5"]
    assert [r.id for r in await store.list_sessions(tenant="t1", user_id="u1", name="dev")] == [
        "n1",
        "n4",
    ]


async def test_a_deleted_session_frees_its_name(store: Store) -> None:
    await store.insert_session(named("n1", "dev"), CREATED, None)
    sleeping = await store.get_session("n1")
    assert sleeping is not None
    await store.update_session(sleeping.replace(state=State.SLEEPING), sleeping.version)
    with pytest.raises(NameTaken):  # a sleeping session keeps its name
        await store.insert_session(named("n2", "dev"), CREATED, None)
    await _delete(store, "n1")
    await store.insert_session(named("n2", "dev"), CREATED, None)
    assert [r.id for r in await store.list_sessions(name="dev")] == ["n2"]
    assert [r.id for r in await store.list_sessions(name="dev", include_deleted=True)] == [
        "n1",
        "n2",
    ]
    # a deleted session cannot come back to life holding a name that is taken again
    gone = await store.get_session("n1")
    assert gone is not None
    with pytest.raises(Conflict):
        await store.update_session(gone.replace(state=State.RUNNING), gone.version)
    # purged, it is no obstacle either
    assert await store.purge_deleted(T0 + timedelta(days=1), 10) == 1
    await _delete(store, "n2")
    await store.insert_session(named("n3", "dev"), CREATED, None)


async def test_concurrent_inserts_of_one_name_make_one_session(store: Store) -> None:
    results = await asyncio.gather(
        *(store.insert_session(named(f"c{i:02}", "dev"), CREATED, None) for i in range(12)),
        return_exceptions=True,
    )
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(refused) == 11 and all(isinstance(r, NameTaken) for r in refused), refused
    assert len(await store.list_sessions(name="dev")) == 1


async def test_list_filters_by_template_and_labels(store: Store) -> None:
    await store.insert_session(
        record("l1").replace(labels={"team": "ml", "dormant.user": "u1"}), CREATED, None
    )
    await store.insert_session(
        record("l2").replace(labels={"team": "ml", "tier": "gpu"}, template="big"), CREATED, None
    )
    await store.insert_session(record("l3").replace(labels={"team": "web"}), CREATED, None)
    await store.insert_session(record("l4"), CREATED, None)

    async def ids(**filters: Any) -> list[str]:
        return [r.id for r in await store.list_sessions(**filters)]

    assert await ids(labels={"team": "ml"}) == ["l1", "l2"]
    assert await ids(labels={"team": "ml", "tier": "gpu"}) == ["l2"]
    assert await ids(labels={"team": "ml", "tier": "cpu"}) == []
    assert await ids(labels={"dormant.user": "u1"}) == ["l1"]
    assert await ids(labels={"nothere": "x"}) == []
    assert await ids(template="big") == ["l2"]
    assert await ids(template="default", labels={"team": "ml"}) == ["l1"]
    assert await ids(labels={"team": "ml"}, limit=1, after_id="l1") == ["l2"]


async def test_an_idempotency_key_is_kept_with_its_session(store: Store) -> None:
    cutoff = T0 - timedelta(hours=24)
    key = IdempotencyKey("retry-1", "h" * 64, cutoff)
    await store.insert_session(record("k1"), CREATED, ("create", "i1"), key)
    held = await store.get_idempotency("t1", "retry-1", cutoff)
    assert held == IdempotencyRecord("t1", "retry-1", "h" * 64, "k1", T0)
    assert await store.get_idempotency("t2", "retry-1", cutoff) is None  # per tenant
    assert await store.get_idempotency("t1", "retry-1", T0 + timedelta(seconds=1)) is None
    # the same key again: refused, and nothing of that session written
    with pytest.raises(KeyTaken):
        await store.insert_session(record("k2"), CREATED, ("create", "i1"), key)
    assert await store.get_session("k2") is None
    assert [o.session_id for o in await store.pending_operations()] == ["k1"]
    # another tenant may use the same key
    await store.insert_session(record("k3").replace(tenant="t2"), CREATED, None, key)
    # a refused session (its name taken) leaves no key behind
    await store.insert_session(named("k4", "dev"), CREATED, None)
    with pytest.raises(NameTaken):
        await store.insert_session(
            named("k5", "dev"), CREATED, None, IdempotencyKey("retry-2", "h" * 64, cutoff)
        )
    assert await store.get_idempotency("t1", "retry-2", cutoff) is None


async def test_concurrent_inserts_with_one_key_make_one_session(store: Store) -> None:
    key = IdempotencyKey("once", "h" * 64, T0 - timedelta(hours=24))
    results = await asyncio.gather(
        *(store.insert_session(record(f"c{i:02}"), CREATED, None, key) for i in range(10)),
        return_exceptions=True,
    )
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(refused) == 9 and all(isinstance(r, KeyTaken) for r in refused), refused
    assert len(await store.list_sessions()) == 1
    held = await store.get_idempotency("t1", "once", T0 - timedelta(hours=24))
    assert held is not None and [r.id for r in await store.list_sessions()] == [held.session_id]


async def test_an_expired_idempotency_key_is_replaced_and_purged(store: Store) -> None:
    day = timedelta(hours=24)
    await store.insert_session(record("e1"), CREATED, None, IdempotencyKey("k", "a" * 64, T0 - day))
    await store.insert_session(
        record("e2"), CREATED, None, IdempotencyKey("other", "a" * 64, T0 - day)
    )
    later = T0 + day + timedelta(seconds=1)
    # a day later the key counts no more: a new session takes it over
    await store.insert_session(
        record("e3").replace(created_at=later, state_since=later),
        CREATED,
        None,
        IdempotencyKey("k", "b" * 64, later - day),
    )
    held = await store.get_idempotency("t1", "k", later - day)
    assert held is not None and (held.session_id, held.body_hash) == ("e3", "b" * 64)
    assert await store.purge_idempotency(later - day) == 1  # "other"
    assert await store.get_idempotency("t1", "other", T0 - day) is None
    assert await store.purge_idempotency(later - day) == 0
    assert await store.get_idempotency("t1", "k", later - day) is not None


async def _put(store: Store, rec: SessionRecord) -> None:
    await store.insert_session(rec, NewEvent("transition", "created"), None)


async def test_admission_counts_running_slots_and_the_users_sessions(store: Store) -> None:
    q = T0 + timedelta(seconds=5)
    await _put(store, record("a1", user="u1").replace(state=State.RUNNING))
    await _put(store, record("a2", user="u1").replace(state=State.SLEEPING))
    await _put(store, record("a3", user="u1"))  # creating, not queued: holds a slot
    await _put(store, record("a4", user="u1").replace(queued_at=q, queue_kind="create"))
    await _put(store, record("a5", user="u2").replace(state=State.STOPPING))
    await _put(store, record("a6", user="u2").replace(state=State.FAILED))
    await _put(
        store,
        record("a7", user="u2").replace(
            state=State.SLEEPING, queued_at=q, queue_kind="wake", queue_limit="running"
        ),
    )
    await _put(store, record("a8", user="u1").replace(state=State.STARTING, tenant="t2"))
    await _put(store, record("a9", user="u1").replace(state=State.RUNNING))
    await _delete(store, "a9")
    counts = await store.admission_counts("t1", "u1")
    assert counts.running == 4  # a1 a3 a5 a8
    assert counts.tenant_running == 3  # a1 a3 a5
    assert counts.user_running == 2  # a1 a3
    assert counts.user_sessions == 3  # a1 a2 a3 (a4 is queued)
    assert counts.queued == 2  # a4 a7
    assert (await store.admission_counts("t1", "u1", per_tenant=False)).tenant_running == 0
    none = await store.admission_counts("t9", "nobody")

    assert (none.tenant_running, none.user_running, none.user_sessions) == (0, 0, 0)


async def test_the_queue_is_listed_oldest_first(store: Store) -> None:
    await _put(store, record("b1").replace(queued_at=T0 + timedelta(seconds=3)))
    await _put(store, record("b2").replace(queued_at=T0 + timedelta(seconds=1)))
    await _put(store, record("b0").replace(queued_at=T0 + timedelta(seconds=3)))
    await _put(store, record("b3"))
    queued = await store.list_queued()
    assert [r.id for r in queued] == ["b2", "b0", "b1"]
    assert queued[0].queued_at == T0 + timedelta(seconds=1)
    got = await store.get_session("b2")
    assert got is not None
    await store.update_session(got.replace(queued_at=None, queue_kind=None), got.version)
    assert [r.id for r in await store.list_queued()] == ["b0", "b1"]


async def test_transition_counts_outlive_a_purge(store: Store) -> None:
    sleep = NewEvent("transition", "idle", "inactivity", "running", "stopping", "sleep")
    await store.insert_session(record("p1"), CREATED, None)
    got = await store.get_session("p1")
    assert got is not None
    gone = await store.update_session(
        got.replace(state=State.DELETED, deleted_at=T0),
        got.version,
        [sleep, NewEvent("transition", "bye", "manual", "stopping", "deleted", "delete")],
        T0,
    )
    assert gone.state is State.DELETED
    assert await store.purge_deleted(T0 + timedelta(days=1), 10) == 1
    assert await store.list_events("p1") == []
    assert await store.event_counts("t1") == {
        "create": {"create": 1},
        "sleep": {"inactivity": 1},
        "delete": {"manual": 1},
    }


async def test_levels_are_counted_from_stored_activity_and_thresholds(store: Store) -> None:
    now = T0 + timedelta(hours=1)
    running = record("l0").replace(state=State.RUNNING)
    cases = {
        "l1": {"last_activity_at": now - timedelta(seconds=30)},  # active
        "l2": {"last_activity_at": now - timedelta(minutes=5)},  # idle
        "l3": {"last_activity_at": now - timedelta(minutes=30)},  # background
        "l4": {},  # background: created an hour ago, never active
        "l5": {"ever_connected": True, "connections": 0},  # disconnected
        "l6": {"ever_connected": True, "connections": 2, "last_activity_at": now},  # active
        # its own thresholds: 5 minutes ago is still active for it
        "l7": {
            "last_activity_at": now - timedelta(minutes=5),
            "policy": {"active_within": 600.0, "idle_within": 1200.0},
        },
    }
    for sid, changes in cases.items():
        await _put(store, running.replace(id=sid, container_name=f"c-{sid}", **changes))
    await _put(store, record("l8").replace(state=State.SLEEPING, last_activity_at=now))
    await _put(store, running.replace(id="l9", container_name="c-l9", tenant="t2"))
    assert await store.count_by_level("t1", now) == {
        "active": 3,
        "idle": 1,
        "background": 2,
        "disconnected": 1,
    }
    assert (await store.count_by_level(None, now))["background"] == 3
    assert await store.count_by_level("nobody", now) == {
        "active": 0,
        "idle": 0,
        "background": 0,
        "disconnected": 0,
    }


async def test_activity_samples_keep_their_time_and_source_and_newest_come_last(
    store: Store,
) -> None:
    await store.insert_session(record("s1"), CREATED, None)
    await store.insert_session(record("s2"), CREATED, None)
    at = T0 + timedelta(minutes=3)
    sample = NewEvent("activity", "build activity via gateway", "build", at=at, source="gateway")
    await store.add_samples([("s1", sample), ("s2", dataclasses.replace(sample, at=None))], T0)
    first, second = await store.list_events("s1")
    assert (second.type, second.code, second.source, second.at) == (
        "activity",
        "build",
        "gateway",
        at,
    )
    assert first.source is None
    assert (await store.list_events("s2"))[-1].at == T0
    assert [e.code for e in await store.list_events("s1", 1, newest=True)] == ["build"]
    assert [e.code for e in await store.list_events("s1", 1)] == ["create"]


async def test_levels_follow_flushed_activity_and_updates(store: Store) -> None:
    now = T0 + timedelta(hours=1)
    await _put(store, record("f1").replace(state=State.RUNNING))
    await _put(store, record("f2").replace(state=State.RUNNING))
    assert (await store.count_by_level("t1", now))["background"] == 2
    await store.flush_activity({"f1": ActivityTimes(now - timedelta(seconds=10), "build", "api")})
    got = await store.get_session("f2")
    assert got is not None
    await store.update_session(
        got.replace(last_activity_at=now - timedelta(minutes=4)), got.version
    )
    assert await store.count_by_level("t1", now) == {
        "active": 1,
        "idle": 1,
        "background": 0,
        "disconnected": 0,
    }
    # a write carrying older activity does not move the session back
    fresh = await store.get_session("f1")
    assert fresh is not None
    await store.update_session(fresh.replace(last_activity_at=T0), fresh.version)
    assert (await store.count_by_level("t1", now))["active"] == 1
