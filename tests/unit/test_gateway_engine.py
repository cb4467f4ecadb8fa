"""The gateway's logic on the real engine with a FakeClock: heartbeats, levels over time,
warnings, capacity, rate limits, connection counts. The Socket.IO transport is replaced by a
recorder (the real one is covered end to end in tests/e2e/test_gateway*.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import socketio

from dormant.errors import TemporaryError
from dormant.gateway import Gateway, GatewaySettings, TokenIssuer
from dormant.store.records import ApiKeyRecord, SessionRecord

from .conftest import Rig

KEY = "key1"


@dataclass
class Wire:
    """Stands in for python-socketio: records what the gateway sends and to whom."""

    gateway: Gateway
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
        if to is not None:
            self.sent.append((event, data, to))
            return
        for sid, joined in self.rooms.items():
            if joined == room:
                self.sent.append((event, data, sid))

    async def enter_room(self, sid: str, room: str) -> None:
        self.rooms[sid] = room

    async def disconnect(self, sid: str, ignore_queue: bool = False) -> None:
        self.closed.append(sid)
        self.rooms.pop(sid, None)
        await self.gateway._on_disconnect(sid, "server disconnect")

    def to(self, sid: str, event: str) -> list[Any]:
        return [data for name, data, who in self.sent if name == event and who == sid]


@dataclass
class Hub:
    rig: Rig
    gateway: Gateway
    wire: Wire
    tokens: TokenIssuer
    _answered: int = 0

    async def session(self, policy: dict[str, Any] | None = None) -> SessionRecord:
        record = await self.rig.engine.create_session(tenant="t1", user_id="alice", policy=policy)
        await self.rig.settle()
        return record

    def token(self, record: SessionRecord, name: str = "alice", key_id: str = KEY) -> str:
        return self.gateway.mint_token(record, name, None, key_id=key_id)[0]

    async def connect(self, sid: str, token: str) -> None:
        assert await self.gateway._on_connect(sid, {"QUERY_STRING": "EIO=4"}, {"token": token})
        await self.settle()

    async def refused(self, sid: str, token: str) -> str:
        with pytest.raises(socketio.exceptions.ConnectionRefusedError) as caught:
            await self.gateway._on_connect(sid, {"QUERY_STRING": "EIO=4"}, {"token": token})
        return str(caught.value.error_args["data"]["code"])

    async def settle(self) -> None:
        for _ in range(5):
            await self.gateway.drain()
            await self.rig.settle()
            await self.gateway.tick()
        await self.gateway.drain()

    async def advance(self, seconds: float, mute: tuple[str, ...] = ()) -> None:
        """Travel in steps of a second, ticking the gateway as its loop would; every client
        but the ``mute`` ones answers its pings."""
        while seconds > 0:
            step = min(1.0, seconds)
            self.rig.clock.advance(step)
            seconds -= step
            await self.settle()
            for event, data, sid in self.wire.sent[self._answered :]:
                if event == "ping" and sid not in mute and sid in self.wire.rooms:
                    await self.gateway._on_pong(sid, {"ts": data["ts"]})
            self._answered = len(self.wire.sent)

    async def stored(self, record: SessionRecord) -> SessionRecord:
        fresh = await self.rig.store.get_session(record.id)
        assert fresh is not None
        return fresh


@pytest.fixture
async def hub(rig: Rig) -> AsyncIterator[Hub]:
    now = rig.clock.now()
    await rig.store.insert_key(ApiKeyRecord(KEY, "hash", "t1", False, "test", now, None))
    tokens = TokenIssuer("k" * 64, rig.clock)
    settings = GatewaySettings(
        max_connections=4, max_connections_per_session=3, activity_rate=1, activity_burst=2
    )
    gateway = Gateway(rig.engine, tokens, settings)
    wire = Wire(gateway)
    gateway.sio.emit = wire.emit
    gateway.sio.enter_room = wire.enter_room
    gateway.sio.disconnect = wire.disconnect
    yield Hub(rig, gateway, wire, tokens)
    await gateway.drain()


async def test_connect_counts_greets_and_shows_presence(hub: Hub) -> None:
    record = await hub.session()
    await hub.connect("c1", hub.token(record, "Ann"))
    await hub.connect("c2", hub.token(record, "Bob"))
    await hub.advance(1)  # presence is coalesced: at most one per tick per room
    stored = await hub.stored(record)
    assert stored.connections == 2 and stored.ever_connected
    greeting = hub.wire.to("c1", "session")[0]
    assert greeting["state"] == "running" and greeting["level"] == "active"
    presence = hub.wire.to("c1", "presence")[-1]
    assert presence["occupancy"] == 2
    assert [p["name"] for p in presence["participants"]] == ["Ann", "Bob"]

    await hub.gateway._on_disconnect("c2", "client disconnect")
    await hub.advance(1)
    assert (await hub.stored(record)).connections == 1
    assert hub.wire.to("c1", "presence")[-1]["occupancy"] == 1


async def test_a_count_left_stale_by_a_crash_is_corrected_on_connect(hub: Hub) -> None:
    record = await hub.session()
    for _ in range(3):  # connections recorded by a process that then died
        await hub.rig.engine.connect(record.id)
    assert (await hub.stored(record)).connections == 3
    await hub.connect("c1", hub.token(record))
    assert (await hub.stored(record)).connections == 1


async def test_silent_connection_is_dropped_after_missed_pongs(hub: Hub) -> None:
    record = await hub.session({"heartbeat_interval": 2, "missed_pongs": 2})
    await hub.connect("talker", hub.token(record))
    await hub.connect("mute", hub.token(record))
    for _ in range(10):
        await hub.advance(1, mute=("mute",))
        if "mute" in hub.wire.closed:
            break
    assert hub.wire.closed == ["mute"]
    assert len(hub.wire.to("mute", "ping")) == 2
    assert hub.wire.to("mute", "error")[-1]["code"] == "heartbeat_timeout"
    stored = await hub.stored(record)
    assert stored.connections == 1 and stored.last_disconnect_at is not None
    assert hub.gateway.connection_quality(record.id) == "stable"


async def test_level_changes_with_time_are_pushed(hub: Hub) -> None:
    record = await hub.session({"heartbeat_interval": 60})
    await hub.connect("c1", hub.token(record))
    await hub.gateway._on_activity("c1", {"kind": "build"})
    await hub.settle()
    await hub.advance(121)  # active_within is 2 minutes
    levels = [s["level"] for s in hub.wire.to("c1", "session")]
    assert levels[-1] == "idle" and "active" in levels
    assert hub.wire.to("c1", "session")[-1]["last_activity"]["kind"] == "build"


async def test_warning_then_cancel_then_sleep(hub: Hub) -> None:
    record = await hub.session({"sleep_after": 300, "warn_before": 60, "heartbeat_interval": 60})
    await hub.connect("c1", hub.token(record))
    await hub.advance(240)
    warnings = hub.wire.to("c1", "sleep-warning")
    assert len(warnings) == 1 and "no meaningful activity" in warnings[0]["reason"]
    assert hub.wire.to("c1", "session")[-1]["warning"] is not None

    assert (await hub.gateway._on_activity("c1", {"kind": "chat"}))["ok"]
    await hub.settle()
    assert hub.wire.to("c1", "session")[-1]["warning"] is None

    await hub.advance(300)
    assert len(hub.wire.to("c1", "sleep-warning")) == 2
    states = [s["state"] for s in hub.wire.to("c1", "session")]
    assert states[-2:] == ["stopping", "sleeping"]
    assert (await hub.stored(record)).connections == 1, "a sleeping session keeps its clients"


async def test_capacity_and_query_tokens_are_refused(hub: Hub) -> None:
    one, two = await hub.session(), await hub.session()
    for i in range(3):
        await hub.connect(f"a{i}", hub.token(one))
    assert await hub.refused("a3", hub.token(one)) == "session_full"
    await hub.connect("b0", hub.token(two))
    assert await hub.refused("b1", hub.token(two)) == "server_full"
    assert hub.gateway.stats.refused == {"session_full": 1, "server_full": 1}
    with pytest.raises(socketio.exceptions.ConnectionRefusedError) as caught:
        await hub.gateway._on_connect("q", {"QUERY_STRING": "token=abc"}, None)
    assert caught.value.error_args["data"]["code"] == "token_in_query"


async def test_rate_limit_drops_and_counts_without_disconnecting(hub: Hub) -> None:
    record = await hub.session()
    await hub.connect("c1", hub.token(record))
    answers = [await hub.gateway._on_activity("c1", {"kind": "command"}) for _ in range(5)]
    assert [a["ok"] for a in answers] == [True, True, False, False, False]
    assert [a["error"]["dropped"] for a in answers[2:]] == [1, 2, 3]
    assert len(hub.wire.to("c1", "error")) == 1, "one notice per second, not one per drop"
    assert hub.gateway.stats.activity_dropped == 3 and hub.wire.closed == []
    hub.rig.clock.advance(1)
    assert (await hub.gateway._on_activity("c1", {"kind": "command"}))["ok"]


async def test_deleting_the_session_closes_its_connections(hub: Hub) -> None:
    record = await hub.session()
    await hub.connect("c1", hub.token(record))
    await hub.rig.engine.delete(record.id)
    await hub.settle()
    assert hub.wire.closed == ["c1"]
    assert hub.wire.to("c1", "error")[-1]["code"] == "session_deleted"
    assert await hub.refused("c2", hub.token(record)) == "session_not_found"


async def test_a_token_for_another_tenant_is_refused_and_not_counted(hub: Hub) -> None:
    record = await hub.session()
    forged = hub.tokens.mint(session_id=record.id, user_id="alice", tenant="t2", key_id=KEY)[0]
    assert await hub.refused("c1", forged) == "session_not_found"
    assert (await hub.stored(record)).connections == 0
    assert hub.gateway.connection_count(record.id) == 0


async def test_an_overtaken_engine_event_does_not_undo_a_fresher_view(hub: Hub) -> None:
    record = await hub.session({"sleep_after": 300, "warn_before": 60, "heartbeat_interval": 60})
    await hub.connect("c1", hub.token(record))
    await hub.advance(240)
    warned = await hub.stored(record)
    assert warned.warned_at is not None
    await hub.gateway._on_activity("c1", {"kind": "chat"})
    await hub.settle()
    assert hub.wire.to("c1", "session")[-1]["warning"] is None
    sent = len(hub.wire.sent)
    room = hub.gateway._rooms[record.id]
    await hub.gateway._push(room, warned)  # the warning's record, delivered late
    assert len(hub.wire.sent) == sent
    assert hub.wire.to("c1", "session")[-1]["warning"] is None


async def test_a_connect_storm_costs_one_lookup_and_a_few_counts(hub: Hub) -> None:
    hub.gateway.settings = GatewaySettings(max_connections=100, max_connections_per_session=100)
    record = await hub.session()
    token = hub.token(record)
    env = {"QUERY_STRING": "EIO=4"}
    reads = 0
    get = hub.rig.engine.get

    async def counting_get(*args: Any, **kw: Any) -> SessionRecord:
        nonlocal reads
        reads += 1
        return await get(*args, **kw)

    hub.rig.engine.get = counting_get  # type: ignore[method-assign]
    joined = await asyncio.gather(
        *(hub.gateway._on_connect(f"c{i}", env, {"token": token}) for i in range(30))
    )
    assert all(joined)
    await hub.settle()
    stored = await hub.stored(record)
    assert stored.connections == 30
    events = await hub.rig.store.list_events(record.id)
    connects = [e for e in events if e.code == "connect"]
    assert 1 <= len(connects) < 30
    assert reads - len(connects) == 1, "one lookup; Engine.connect reads once per call itself"

    for i in range(30):
        await hub.gateway._on_disconnect(f"c{i}", "transport close")
    await hub.settle()
    stored = await hub.stored(record)
    assert stored.connections == 0 and stored.last_disconnect_at is not None
    level, decision = hub.rig.engine.describe(stored)
    assert level.value == "disconnected" and decision.code == "disconnect_grace"
    assert record.id not in hub.gateway._rooms


async def test_concurrent_joins_fill_the_server_exactly(hub: Hub) -> None:
    one, two = await hub.session(), await hub.session()
    env = {"QUERY_STRING": "EIO=4"}
    joins = [hub.gateway._on_connect(f"a{i}", env, {"token": hub.token(one)}) for i in range(3)]
    joins.append(hub.gateway._on_connect("b0", env, {"token": hub.token(two)}))
    assert all(await asyncio.gather(*joins))  # 4 of 4: joining ones are not counted twice
    assert await hub.refused("b1", hub.token(two)) == "server_full"


# --- the API key behind a token ------------------------------------------------------------------


async def _add_key(hub: Hub, key_id: str) -> None:
    now = hub.rig.clock.now()
    await hub.rig.store.insert_key(ApiKeyRecord(key_id, "hash", "t1", False, "test", now, None))


async def test_tokens_of_revoked_or_unknown_keys_are_refused(hub: Hub) -> None:
    record = await hub.session()
    await _add_key(hub, "key2")
    await hub.rig.store.revoke_key("key2", hub.rig.clock.now())
    assert await hub.refused("c1", hub.token(record, key_id="key2")) == "key_revoked"
    assert await hub.refused("c2", hub.token(record, key_id="nosuch")) == "invalid_token"
    assert hub.gateway.stats.refused == {"key_revoked": 1, "invalid_token": 1}
    assert (await hub.stored(record)).connections == 0
    await hub.connect("c3", hub.token(record))  # the standing key still works
    assert hub.gateway.connection_count(record.id) == 1


async def test_key_lookups_are_shared_and_cached_briefly(hub: Hub) -> None:
    record = await hub.session()
    hub.gateway.settings = GatewaySettings(max_connections=100, max_connections_per_session=100)
    lookups: list[str] = []
    get_key = hub.rig.store.get_key

    async def counting(key_id: str) -> ApiKeyRecord | None:
        lookups.append(key_id)
        return await get_key(key_id)

    hub.rig.store.get_key = counting  # type: ignore[method-assign]
    env = {"QUERY_STRING": "EIO=4"}
    token = hub.token(record)
    joined = await asyncio.gather(
        *(hub.gateway._on_connect(f"c{i}", env, {"token": token}) for i in range(10))
    )
    assert all(joined) and lookups == [KEY], "ten connects, one look at the key"

    # Revoked by another process: a connect within the cache's life does not know yet...
    await hub.rig.store.revoke_key(KEY, hub.rig.clock.now())
    await hub.connect("late", token)
    assert lookups == [KEY]
    # ...one after it does (the sweep may have looked first: then no lookup is needed).
    hub.rig.clock.advance(hub.gateway.settings.key_check_interval)
    assert await hub.refused("later", token) == "key_revoked"
    assert len(lookups) <= 2
    # A revocation is final: never looked up again.
    hub.rig.clock.advance(3600)
    before = len(lookups)
    assert await hub.refused("latest", hub.token(record)) == "key_revoked"
    assert len(lookups) == before


async def test_revoking_a_key_closes_its_connections_at_the_next_check(hub: Hub) -> None:
    record = await hub.session()
    await _add_key(hub, "key2")
    await hub.connect("doomed", hub.token(record, "Ann"))
    await hub.connect("kept", hub.token(record, "Bob", key_id="key2"))
    await hub.advance(1)
    assert hub.wire.closed == []

    await hub.rig.store.revoke_key(KEY, hub.rig.clock.now())  # as `dormant keys revoke` does
    for _ in range(10):
        await hub.advance(1, mute=tuple(hub.wire.closed))
        if hub.wire.closed:
            break
    assert hub.wire.closed == ["doomed"]
    problem = hub.wire.to("doomed", "error")[-1]
    assert problem["code"] == "key_revoked" and "revoked" in problem["message"]
    assert hub.wire.to("kept", "error") == []
    assert hub.gateway.stats.revoked_drops == 1
    await hub.settle()
    assert (await hub.stored(record)).connections == 1
    assert hub.wire.to("kept", "presence")[-1]["occupancy"] == 1
    assert await hub.refused("again", hub.token(record)) == "key_revoked"


async def test_store_trouble_refuses_with_unavailable_and_closes_nobody(hub: Hub) -> None:
    record = await hub.session()
    await hub.connect("c1", hub.token(record))

    async def broken(*args: Any) -> Any:
        raise TemporaryError("database is down")

    hub.rig.store.get_key = broken  # type: ignore[method-assign]
    hub.rig.store.list_keys = broken  # type: ignore[method-assign]
    hub.rig.clock.advance(hub.gateway.settings.key_check_interval)  # the cached "ok" expires
    assert await hub.refused("c2", hub.token(record)) == "unavailable"
    await hub.advance(6)
    assert hub.wire.closed == [] and hub.gateway.connection_count(record.id) == 1


# --- Engine.IO sockets before authentication -----------------------------------------------------


async def test_every_socket_counts_against_the_limit_from_its_handshake(hub: Hub) -> None:
    gateway = hub.gateway  # max_connections=4
    assert [gateway.admit_socket(f"e{i}") for i in range(4)] == [None] * 4
    refusal = gateway.admit_socket("e4")
    assert refusal is not None and refusal[0] == "server_full" and "4 connections" in refusal[1]
    assert gateway.stats.sockets == 4 and gateway.stats.unauthenticated == 4
    assert gateway.stats.refused == {"server_full": 1}
    gateway.forget_socket("e0")
    assert gateway.admit_socket("e5") is None
    assert gateway.stats.as_dict()["sockets"] == 4
    # A connection on an admitted socket counts once, and is no longer waited for.
    record = await hub.session()
    gateway.sio.manager.eio_sid_from_sid = lambda sid, ns: "e1"  # type: ignore[method-assign]
    await hub.connect("c1", hub.token(record))
    assert gateway.stats.sockets == 4 and gateway.stats.unauthenticated == 3
    assert gateway.stats.connections == 1
    # Its Socket.IO connection ends but the socket stays: it must connect again in time.
    await gateway._on_disconnect("c1", "client disconnect")
    assert gateway.stats.unauthenticated == 4
    assert list(gateway._pending)[-1] == "e1"


async def test_malformed_packets_are_counted_and_logged_once_per_connection(
    hub: Hub, caplog: pytest.LogCaptureFixture
) -> None:
    gateway = hub.gateway
    gateway.admit_socket("e1")
    gateway.admit_socket("e2")
    with caplog.at_level("INFO", logger="dormant.gateway"):
        for _ in range(50):
            gateway.note_malformed("e1", "not an Engine.IO packet: '9'")
            gateway.note_malformed("e2", "a packet before a successful connect")
    assert gateway.stats.malformed_packets == 100
    lines = [r.getMessage() for r in caplog.records if "malformed" in r.getMessage()]
    assert len(lines) == 2 and "e1" in lines[0] and "e2" in lines[1]
    gateway.forget_socket("e1")
    assert "e1" not in gateway._noted
