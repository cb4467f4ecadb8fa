"""The gateway across replicas, in one process: three gateways, each on its own engine (one
store, a FakeClock), joined by an in-memory stand-in for Redis (:class:`Bus`: messages in order,
the presence hashes) and for python-socketio's servers joined by it (:class:`Fabric`: an emit
through the manager reaches a room's clients on every replica, one with ``ignore_queue`` only
this replica's). Redis itself is covered end to end in tests/e2e/test_gateway_replicas.py."""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest

from dormant.engine import Engine
from dormant.gateway import Gateway, GatewaySettings, TokenIssuer
from dormant.gateway.replicas import (
    INTERNAL_ROOM,
    Entry,
    ReplicaManager,
    Replicas,
    live_others,
    record_from_wire,
    record_to_wire,
)
from dormant.policy import State
from dormant.store.records import ApiKeyRecord, SessionRecord

from .conftest import Rig

KEY = "key1"
TTL = 15.0


# --- the stand-ins -------------------------------------------------------------------------------


class Fabric:
    """python-socketio's servers joined by a message queue: every replica's clients."""

    def __init__(self) -> None:
        self.wires: list[Wire] = []


@dataclass
class Wire:
    """One replica's Socket.IO server: records what reaches its clients."""

    gateway: Gateway
    fabric: Fabric
    sent: list[tuple[str, Any, str]] = field(default_factory=list)
    rooms: dict[str, str] = field(default_factory=dict)
    closed: list[str] = field(default_factory=list)

    async def emit(
        self,
        event: str,
        data: Any = None,
        to: str | None = None,
        room: str | None = None,
        ignore_queue: bool = False,
    ) -> None:
        target = to or room
        for wire in [self] if ignore_queue else self.fabric.wires:
            # What crosses to another replica is serialized on the way.
            payload = data if wire is self else json.loads(json.dumps(data))
            for sid, joined in wire.rooms.items():
                if target in (sid, joined):
                    wire.sent.append((event, payload, sid))

    async def enter_room(self, sid: str, room: str) -> None:
        self.rooms[sid] = room

    async def disconnect(self, sid: str, ignore_queue: bool = False) -> None:
        self.closed.append(sid)
        self.rooms.pop(sid, None)
        await self.gateway.members.on_disconnect(sid, "server disconnect")

    def to(self, sid: str, event: str) -> list[Any]:
        return [data for name, data, who in self.sent if name == event and who == sid]


class Bus:
    """Redis as the replicas use it: a channel (messages in order) and presence hashes."""

    def __init__(self) -> None:
        self.ends: list[MemoryReplicas] = []
        self.queue: list[tuple[MemoryReplicas, str, dict[str, Any]]] = []
        self.hashes: dict[str, dict[str, str]] = {}
        self.sent: list[tuple[str, str, dict[str, Any]]] = []

    async def deliver(self) -> None:
        while self.queue:
            sender, kind, body = self.queue.pop(0)
            for end in self.ends:
                if end is not sender and end.up and end.listener is not None:
                    await end.listener(kind, copy.deepcopy(body))


class MemoryReplicas(Replicas):
    def __init__(self, bus: Bus, replica: str) -> None:
        self.bus = bus
        self.replica = replica
        self.up = True
        bus.ends.append(self)

    def send(self, kind: str, body: dict[str, Any]) -> None:
        wired = json.loads(json.dumps(body))  # what Redis carries is JSON
        self.bus.queue.append((self, kind, wired))
        self.bus.sent.append((self.replica, kind, wired))

    async def put(self, session_id: str, entry: Entry, now: float) -> tuple[list[Entry], bool]:
        fields = self.bus.hashes.setdefault(session_id, {})
        fields[self.replica] = entry.dumps()
        return self._sift(fields, now)

    async def drop(self, session_id: str) -> None:
        self.bus.hashes.get(session_id, {}).pop(self.replica, None)

    async def others(self, session_id: str, now: float) -> tuple[list[Entry], bool]:
        return self._sift(self.bus.hashes.get(session_id, {}), now)

    async def refresh(self, entries: dict[str, Entry], now: float) -> set[str]:
        tell = set()
        for session_id, entry in entries.items():
            fields = self.bus.hashes.setdefault(session_id, {})
            created = self.replica not in fields
            fields[self.replica] = entry.dumps()
            if self._sift(fields, now)[1] or created:
                tell.add(session_id)
        return tell

    def _sift(self, fields: dict[str, str], now: float) -> tuple[list[Entry], bool]:
        live, stale = live_others(dict(fields), self.replica, now)
        for replica in stale:
            fields.pop(replica, None)
        return live, bool(stale)


@dataclass
class Replica:
    name: str
    engine: Engine
    gateway: Gateway
    wire: Wire
    link: MemoryReplicas


@dataclass
class Cluster:
    rig: Rig
    bus: Bus
    replicas: list[Replica]
    #: Engines whose schedulers run (whose deadlines are acted on).
    acting: list[Engine] = field(default_factory=list)
    _answered: dict[str, int] = field(default_factory=dict)

    @property
    def live(self) -> list[Replica]:
        return [r for r in self.replicas if r.link.up]

    async def session(self, on: Replica, policy: dict[str, Any] | None = None) -> SessionRecord:
        record = await on.engine.create_session(tenant="t1", user_id="alice", policy=policy)
        await self.settle()
        fresh = await self.rig.store.get_session(record.id)
        assert fresh is not None and fresh.state is State.RUNNING, fresh
        return fresh

    async def connect(self, on: Replica, sid: str, record: SessionRecord, name: str) -> None:
        token = on.gateway.mint_token(record, name, None, key_id=KEY)[0]
        environ = {"QUERY_STRING": "EIO=4"}
        assert await on.gateway.admission.on_connect(sid, environ, {"token": token})
        await self.settle()
        self.rig.clock.advance(0.001)  # a later join time each

    async def settle(self) -> None:
        for _ in range(6):
            for replica in self.live:
                await replica.gateway.drain()
                await replica.engine.drain()
                await replica.gateway.tick()
            for engine in self.acting:
                await engine.tick()
                await engine.drain()
            await self.bus.deliver()
        for replica in self.live:
            await replica.gateway.drain()

    async def advance(self, seconds: float) -> None:
        """Travel in steps of a second; every live client answers its pings."""
        while seconds > 0:
            step = min(1.0, seconds)
            self.rig.clock.advance(step)
            seconds -= step
            await self.settle()
            for replica in self.live:
                wire = replica.wire
                for event, data, sid in wire.sent[self._answered.get(replica.name, 0) :]:
                    if event == "ping" and sid in wire.rooms:
                        await replica.gateway.heartbeats.on_pong(sid, {"ts": data["ts"]})
                self._answered[replica.name] = len(wire.sent)


@pytest.fixture
async def cluster(rig: Rig) -> AsyncIterator[Cluster]:
    now = rig.clock.now()
    await rig.store.insert_key(ApiKeyRecord(KEY, "hash", "t1", False, "test", now, None))
    bus, fabric = Bus(), Fabric()
    engines = [rig.engine, rig.new_engine("test-2"), rig.new_engine("test-3")]
    replicas = []
    try:
        for engine in engines[1:]:
            await engine.heartbeat()
        for name, engine in zip("ABC", engines, strict=True):
            link = MemoryReplicas(bus, engine.settings.instance_id)
            gateway = Gateway(
                engine,
                TokenIssuer("k" * 64, rig.clock),
                GatewaySettings(presence_ttl=TTL),
                replicas=link,
            )
            wire = Wire(gateway, fabric)
            fabric.wires.append(wire)
            gateway.sio.emit = wire.emit
            gateway.sio.enter_room = wire.enter_room
            gateway.sio.disconnect = wire.disconnect
            replicas.append(Replica(name, engine, gateway, wire, link))
        yield Cluster(rig, bus, replicas)
    finally:
        for replica in replicas:
            await replica.gateway.drain()
        for engine in engines[1:]:
            await engine.drain()


# --- what travels between replicas ----------------------------------------------------------------


async def test_a_session_record_survives_the_wire(rig: Rig) -> None:
    record = await rig.engine.create_session(
        tenant="t1", user_id="alice", policy={"warn_before": 9}
    )
    await rig.settle()
    stored = await rig.store.get_session(record.id)
    assert stored is not None
    at = rig.clock.now()
    full = stored.replace(
        last_activity_at=at,
        last_activity_kind="build",
        last_seen_at=at,
        warned_at=at + timedelta(seconds=1),
        busy_until=at + timedelta(hours=1),
        connections=2,
        connections_by_instance={"test-1": 1, "test-2": 1},
        labels={"team": "x"},
    )
    wired = json.loads(json.dumps(record_to_wire(full)))
    assert (
        wired["state"] == "running"
        and wired["warned_at"] == (at + timedelta(seconds=1)).isoformat()
    )
    assert record_from_wire(wired) == full
    # A field another version added is ignored; a record that is not one is refused.
    assert record_from_wire({**wired, "from_the_future": 1}) == full
    bads: list[Any] = [None, [], {**wired, "state": "dozing"}, {**wired, "created_at": "nope"}]
    for bad in bads:
        with pytest.raises((ValueError, TypeError, KeyError)):
            record_from_wire(bad)


def test_presence_entries_expire_and_garbage_is_stale() -> None:
    people = [{"id": "s1", "name": "Ann"}]
    raw = {
        "me": Entry("me", 1, people, 100.0).dumps(),
        "b": Entry("b", 2, people, 100.0).dumps(),
        "c": Entry("c", 3, [], 50.0).dumps(),
        "d": "not json",
        "e": json.dumps({"count": "many", "people": [], "expires": 200}),
        "f": json.dumps({"count": 1, "people": [], "expires": "nan"}),
    }
    live, stale = live_others(raw, "me", now=60.0)
    assert [(e.replica, e.count, e.people) for e in live] == [("b", 2, people)]
    assert stale == ["c", "d", "e", "f"]
    assert Entry.loads("x", Entry("x", 4, people, 7.5).dumps()) == Entry("x", 4, people, 7.5)


async def test_the_manager_hands_messages_between_replicas_to_the_gateway() -> None:
    heard: list[tuple[str, dict[str, Any]]] = []

    async def listener(kind: str, body: dict[str, Any]) -> None:
        heard.append((kind, body))

    manager = ReplicaManager("redis://127.0.0.1:6379/0", channel="unused")
    manager.listener = listener
    message = {"method": "emit", "event": "presence", "data": [{"session_id": "s1"}]}
    await manager._handle_emit({**message, "room": INTERNAL_ROOM, "host_id": "another"})
    await manager._handle_emit({**message, "room": INTERNAL_ROOM, "host_id": manager.host_id})
    await manager._handle_emit({**message, "room": INTERNAL_ROOM, "data": "not a list"})
    assert heard == [("presence", {"session_id": "s1"})]


# --- across replicas ------------------------------------------------------------------------------


async def test_a_broadcast_answered_by_one_replica_reaches_clients_of_the_others(
    cluster: Cluster,
) -> None:
    a, b, c = cluster.replicas
    record = await cluster.session(a)
    await cluster.connect(a, "a1", record, "Ann")
    await cluster.connect(c, "c1", record, "Cid")
    delivered = await b.gateway.broadcast(record.id, "build", {"ok": True})
    assert delivered == 2  # b has none; a and c one each, by their presence entries
    assert a.wire.to("a1", "event") == [{"type": "build", "data": {"ok": True}}]
    assert c.wire.to("c1", "event") == [{"type": "build", "data": {"ok": True}}]
    assert await a.gateway.broadcast(record.id, "hmr", 1) == 2
    assert (
        a.wire.to("a1", "event")[-1] == c.wire.to("c1", "event")[-1] == {"type": "hmr", "data": 1}
    )


async def test_transitions_made_by_one_replica_reach_clients_of_the_others_once(
    cluster: Cluster,
) -> None:
    a, b, _ = cluster.replicas
    record = await cluster.session(a)
    await cluster.connect(a, "a1", record, "Ann")
    await b.engine.sleep(record.id)
    await cluster.settle()
    states = [s["state"] for s in a.wire.to("a1", "session")]
    assert states == ["running", "stopping", "sleeping"]
    assert a.gateway.rooms[record.id].record is not None
    assert a.gateway.rooms[record.id].record.state is State.SLEEPING  # type: ignore[union-attr]
    told = [body for who, kind, body in cluster.bus.sent if kind == "session" and who == "test-2"]
    assert [body["to_state"] for body in told] == ["stopping", "sleeping"]

    await b.engine.delete(record.id)
    await cluster.settle()
    assert a.wire.closed == ["a1"]
    assert a.wire.to("a1", "error")[-1]["code"] == "session_deleted"


async def test_a_sleep_warning_decided_on_one_replica_reaches_clients_of_the_others(
    cluster: Cluster,
) -> None:
    a, b, c = cluster.replicas
    record = await cluster.session(b, {"sleep_after": 300, "warn_before": 60})
    await cluster.connect(a, "a1", record, "Ann")
    await cluster.connect(c, "c1", record, "Cid")
    cluster.acting = [b.engine]  # only b's scheduler acts
    await cluster.advance(241)
    for replica, sid in ((a, "a1"), (c, "c1")):
        warnings = replica.wire.to(sid, "sleep-warning")
        assert len(warnings) == 1, warnings
        assert "no meaningful activity" in warnings[0]["reason"]
        assert warnings[0]["at"] == (record.created_at + timedelta(seconds=300)).isoformat()
        assert replica.wire.to(sid, "session")[-1]["warning"] is not None
    told = [body["type"] for who, kind, body in cluster.bus.sent if who == "test-2"]
    assert told.count("warning") == 1


async def test_activity_on_one_replica_moves_the_level_seen_on_the_others(
    cluster: Cluster,
) -> None:
    a, b, _ = cluster.replicas
    record = await cluster.session(a, {"heartbeat_interval": 60})
    await cluster.connect(a, "a1", record, "Ann")
    await cluster.connect(b, "b1", record, "Bob")
    await cluster.advance(121)  # active_within is 2 minutes: idle now
    assert a.wire.to("a1", "session")[-1]["level"] == "idle"
    assert (await b.gateway.client_events.on_activity("b1", {"kind": "build"}))["ok"]
    for _ in range(5):  # a burst is told the others once
        await b.gateway.client_events.on_activity("b1", {"kind": "build"})
    await cluster.settle()
    seen = a.wire.to("a1", "session")[-1]
    assert (seen["level"], seen["last_activity"]["kind"]) == ("active", "build")
    told = [body for who, kind, body in cluster.bus.sent if body.get("type") == "activity"]
    assert len(told) == 1 and told[0]["kind"] == "build"


async def test_presence_counts_every_replica_and_drops_a_dead_one(cluster: Cluster) -> None:
    a, b, c = cluster.replicas
    record = await cluster.session(a, {"heartbeat_interval": 60})
    await cluster.connect(a, "a1", record, "Ann")
    await cluster.connect(b, "b1", record, "Bob")
    await cluster.connect(b, "b2", record, "Bea")
    await cluster.connect(c, "c1", record, "Cid")
    await cluster.advance(1)
    for replica, sid in ((a, "a1"), (b, "b1"), (c, "c1")):
        seen = replica.wire.to(sid, "presence")[-1]
        assert seen["occupancy"] == 4 and not seen["truncated"]
        assert [p["name"] for p in seen["participants"]] == ["Ann", "Bob", "Bea", "Cid"]

    await b.gateway.members.on_disconnect("b2", "client disconnect")
    await cluster.advance(1)
    assert a.wire.to("a1", "presence")[-1]["occupancy"] == 3
    assert c.wire.to("c1", "presence")[-1]["occupancy"] == 3

    # c dies: nothing more from it, its entry expires and the first to see it removes it.
    c.link.up = False
    announced = len(a.wire.to("a1", "presence"))
    await cluster.advance(3)
    assert a.wire.to("a1", "presence")[-1]["occupancy"] == 3, "c's entry still holds"
    # It was refreshed at most TTL / 3 before c died; the others look every TTL / 3.
    await cluster.advance(TTL + 2 * TTL / 3 - 3 + 1)
    last = a.wire.to("a1", "presence")[-1]
    assert last["occupancy"] == 2 and [p["name"] for p in last["participants"]] == ["Ann", "Bob"]
    assert b.wire.to("b1", "presence")[-1]["occupancy"] == 2
    assert len(a.wire.to("a1", "presence")) == announced + 1
    assert set(cluster.bus.hashes[record.id]) == {"test-1", "test-2"}


async def test_a_stopping_replica_takes_its_clients_out_of_presence(cluster: Cluster) -> None:
    a, b, _ = cluster.replicas
    record = await cluster.session(a)
    await cluster.connect(a, "a1", record, "Ann")
    await cluster.connect(b, "b1", record, "Bob")
    await cluster.advance(1)
    assert a.wire.to("a1", "presence")[-1]["occupancy"] == 2
    await b.gateway.stop()
    b.link.up = False
    await cluster.settle()
    await cluster.advance(1)
    assert a.wire.to("a1", "presence")[-1]["occupancy"] == 1
    assert set(cluster.bus.hashes[record.id]) == {"test-1"}


async def test_presence_lists_the_earliest_participants_of_all_replicas(rig: Rig) -> None:
    # Two replicas with room for three names: the three who came first, wherever they are.
    bus, fabric = Bus(), Fabric()
    now = rig.clock.now()
    await rig.store.insert_key(ApiKeyRecord(KEY, "hash", "t1", False, "test", now, None))
    two = rig.new_engine("test-2")
    await two.heartbeat()
    replicas = []
    for name, engine in (("A", rig.engine), ("B", two)):
        link = MemoryReplicas(bus, engine.settings.instance_id)
        gateway = Gateway(
            engine, TokenIssuer("k" * 64, rig.clock), GatewaySettings(presence_limit=3), None, link
        )
        wire = Wire(gateway, fabric)
        fabric.wires.append(wire)
        gateway.sio.emit, gateway.sio.enter_room = wire.emit, wire.enter_room
        replicas.append(Replica(name, engine, gateway, wire, link))
    cluster = Cluster(rig, bus, replicas)
    try:
        a, b = replicas
        record = await cluster.session(a)
        for n, (replica, who) in enumerate([(a, "a1"), (b, "b1"), (a, "a2"), (b, "b2"), (a, "a3")]):
            await cluster.connect(replica, who, record, f"n{n}")
        await cluster.advance(1)
        last = b.wire.to("b1", "presence")[-1]
        assert last["occupancy"] == 5 and last["truncated"]
        assert [p["name"] for p in last["participants"]] == ["n0", "n1", "n2"]
        assert a.wire.to("a1", "presence")[-1] == last
    finally:
        for replica in replicas:
            await replica.gateway.drain()
        await two.drain()
