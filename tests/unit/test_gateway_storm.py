"""Reconnect storms, in process on the real engine with a FakeClock: the handshake timeout counts
the client's time, not the gateway's. A socket's clock stops while the gateway is behind (its
ticker late), starts afresh when the socket's connect arrives, and never stretches past
``HANDSHAKE_STRETCH`` times the timeout; admission's store work is coalesced (one session lookup,
one key lookup for a burst) and done only for clients still there. The Socket.IO transport is
the recorder of test_gateway_engine (end to end: tests/e2e/test_gateway_storm.py)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
import socketio

from dormant.gateway import Gateway, GatewaySettings, TokenIssuer
from dormant.gateway.sockets import HANDSHAKE_STRETCH
from dormant.store.records import ApiKeyRecord, SessionRecord

from .conftest import Rig
from .test_gateway_engine import KEY, Hub, Wire

TIMEOUT = 10.0
TICK = 0.1


class Storm:
    """A hub whose event loop clock the test moves (to make the gateway fall behind), with
    what the gateway said when it hung up on a socket."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.gateway = hub.gateway
        self.loop_time = 0.0
        self.gateway.sockets.loop_time = lambda: self.loop_time
        self.hung_up: dict[str, tuple[str, str]] = {}
        sockets = self.gateway.sockets
        original = sockets.hang_up

        async def recording(eio_sid: str, code: str | None = None, message: str = "") -> None:
            if code is not None:
                self.hung_up[eio_sid] = (code, message)
            await original(eio_sid, code, message)

        sockets.hang_up = recording  # type: ignore[method-assign]

    async def run(self, seconds: float, *, behind: float = 0.0) -> None:
        """Tick for ``seconds`` (every ``TICK``); with ``behind``, each tick comes that much
        later than due (the clocks move on by as much: the process was busy)."""
        steps = round(seconds / TICK)
        for _ in range(steps):
            self.hub.rig.clock.advance(TICK + behind)
            self.loop_time += TICK + behind
            await self.gateway.tick()

    @property
    def now(self) -> float:
        return self.hub.rig.clock.monotonic()

    def is_open(self, eio_sid: str) -> bool:
        return eio_sid in self.gateway.sockets.open


@pytest.fixture
async def storm(rig: Rig) -> AsyncIterator[Storm]:
    now = rig.clock.now()
    await rig.store.insert_key(ApiKeyRecord(KEY, "hash", "t1", False, "test", now, None))
    tokens = TokenIssuer("k" * 64, rig.clock)
    settings = GatewaySettings(
        max_connections=1000,
        max_connections_per_session=500,
        handshake_timeout=TIMEOUT,
        tick=TICK,
    )
    gateway = Gateway(rig.engine, tokens, settings)
    wire = Wire(gateway)
    gateway.sio.emit = wire.emit
    gateway.sio.enter_room = wire.enter_room
    gateway.sio.disconnect = wire.disconnect
    made = Storm(Hub(rig, gateway, wire, tokens))
    await gateway.tick()  # the first look at the loop's clock
    yield made
    await gateway.drain()


class Gate:
    """Holds admission's session lookups (the store is slow) and counts them (the engine's
    own reads, as in ``Engine.connect``, pass); and counts the store's API key lookups."""

    def __init__(self, storm: Storm) -> None:
        self.open = asyncio.Event()
        self.reads: list[str] = []
        self.key_reads: list[str] = []
        engine, store = storm.hub.rig.engine, storm.hub.rig.store
        get, get_key = engine.get, store.get_key

        async def gated_get(session_id: str, tenant: str | None = None) -> SessionRecord:
            if sys._getframe(1).f_code.co_name == "join":  # Membership.join's lookup
                self.reads.append(session_id)
                await self.open.wait()
            return await get(session_id, tenant)

        async def counted_get_key(key_id: str) -> ApiKeyRecord | None:
            self.key_reads.append(key_id)
            return await get_key(key_id)

        engine.get = gated_get  # type: ignore[method-assign]
        store.get_key = counted_get_key  # type: ignore[method-assign]


def _route_connects(storm: Storm) -> dict[str, str]:
    """python-socketio's connect handling, reduced to what the gateway sees: socket ``eN``
    has sid ``cN``, and its CONNECT runs the ``connect`` handler. Returns what became of each
    sid: ``joined``, ``not joined`` (its client left), or the refusal's code."""
    gateway = storm.gateway
    outcomes: dict[str, str] = {}

    async def handle_connect(eio_sid: str, namespace: Any, data: Any) -> None:
        sid = "c" + eio_sid[1:]
        try:
            joined = await gateway._on_connect(sid, {"QUERY_STRING": "EIO=4"}, data)
        except socketio.exceptions.ConnectionRefusedError as exc:
            outcomes[sid] = str(exc.error_args["data"]["code"])
        else:
            outcomes[sid] = "joined" if joined else "not joined"

    gateway.sio._handle_connect = handle_connect
    manager = gateway.sio.manager
    manager.eio_sid_from_sid = lambda sid, namespace: "e" + sid[1:]
    manager.sid_from_eio_sid = lambda eio_sid, namespace: "c" + eio_sid[1:]
    return outcomes


def _arrive(storm: Storm, eio_sid: str, token: str) -> asyncio.Task[None]:
    """A CONNECT packet from ``eio_sid`` into the guard (GuardedServer._before_auth), as
    python-engineio hands it over; admission runs on from there."""
    packet = "0" + json.dumps({"token": token})  # a Socket.IO CONNECT (Engine.IO took its 4)
    return asyncio.create_task(storm.gateway.sio._before_auth(eio_sid, packet, len(packet)))


async def _until(check: Any, what: str) -> None:
    """Let the loop (and the store's thread) run until ``check()`` holds; a bounded wait."""
    for _ in range(2000):
        await asyncio.sleep(0.005)
        if check():
            return
    pytest.fail(f"never: {what}")


async def test_the_handshake_clock_stops_while_the_gateway_is_behind(storm: Storm) -> None:
    gateway = storm.gateway
    assert gateway.admit_socket("e1") is None
    await storm.run(5.0)
    # The process was busy: its ticker came 0.9 s late ten times over. Of those 10 s, what
    # counts is what the ticker is allowed (a quarter second a tick): 2.5 s.
    await storm.run(1.0, behind=0.9)
    assert storm.now == pytest.approx(15.0)
    assert gateway.sockets.stalled == pytest.approx(7.5)
    assert storm.is_open("e1") and gateway.stats.handshake_timeouts == 0
    await storm.run(2.4)  # 9.9 s counted
    assert storm.is_open("e1")
    await storm.run(0.2)
    assert not storm.is_open("e1")
    assert storm.hung_up == {
        "e1": ("handshake_timeout", "no connect with a valid token within 10s")
    }
    assert gateway.stats.handshake_timeouts == 1 and gateway.stats.unauthenticated == 0


async def test_however_far_behind_a_socket_owes_its_connect_for_at_most_the_stretch(
    storm: Storm,
) -> None:
    assert HANDSHAKE_STRETCH == 3.0
    assert storm.gateway.admit_socket("e1") is None
    await storm.run(2.9, behind=0.9)  # 29 s, of which 7.25 s counted
    assert storm.is_open("e1")
    await storm.run(0.2, behind=0.9)  # 31 s: past three times the timeout
    assert not storm.is_open("e1")
    assert storm.hung_up["e1"][0] == "handshake_timeout"


async def test_a_connect_that_arrived_is_not_timed_out_while_it_waits_for_the_store(
    storm: Storm,
) -> None:
    gateway, hub = storm.gateway, storm.hub
    outcomes = _route_connects(storm)
    gate = Gate(storm)
    record = await hub.session()
    assert gateway.admit_socket("e1") is None
    await storm.run(8.0)
    arrival = _arrive(storm, "e1", hub.token(record))
    await _until(lambda: gate.reads, "the session lookup")
    assert "e1" in gateway.sockets.admitting and "e1" not in gateway.sockets.pending
    # Past the socket's handshake deadline (10 s): its connect is here, the wait is ours.
    await storm.run(5.0)
    assert storm.is_open("e1") and gateway.stats.handshake_timeouts == 0
    gate.open.set()
    await arrival
    assert outcomes == {"c1": "joined"} and gateway.authenticated("e1")
    assert "e1" not in gateway.sockets.pending and not gateway.sockets.admitting
    await hub.settle()
    assert (await hub.stored(record)).connections == 1

    # Admission has a timeout of its own, counted from the connect's arrival: a store that
    # never answers cannot hold a socket for ever.
    gate.open.clear()
    other = await hub.session()
    assert gateway.admit_socket("e2") is None
    arrival = _arrive(storm, "e2", hub.token(other))
    await _until(lambda: len(gate.reads) == 2, "the second session's lookup")
    await storm.run(9.9)
    assert storm.is_open("e2")
    await storm.run(0.2)
    assert not storm.is_open("e2")
    assert storm.hung_up["e2"] == (
        "handshake_timeout",
        "the connect could not be completed within 10s; retry",
    )
    gate.open.set()
    await arrival
    assert outcomes["c2"] == "not joined"  # its client was gone when the store answered
    assert "c2" not in gateway.conns and gateway.connection_count(other.id) == 0
    assert gateway.stats.refused == {"handshake_timeout": 1}


async def test_a_reconnect_storm_waits_for_one_lookup_a_session_and_is_admitted_whole(
    storm: Storm,
) -> None:
    gateway, hub = storm.gateway, storm.hub
    outcomes = _route_connects(storm)
    gate = Gate(storm)
    sessions = [await hub.session(), await hub.session()]
    per_session = 150
    sockets = [f"e{n}" for n in range(2 * per_session)]
    for eio_sid in sockets:
        assert gateway.admit_socket(eio_sid) is None
    # The gateway is busy: the connects are read 8 s after the handshakes (behind all along).
    await storm.run(0.8, behind=0.9)
    arrivals = [
        _arrive(storm, eio_sid, hub.token(sessions[n % 2], f"p{n}"))
        for n, eio_sid in enumerate(sockets)
    ]
    await _until(lambda: len(gate.reads) == 2, "one lookup per session")
    # One of them gives up while waiting: no work is done for it.
    gateway.forget_socket("e7")
    # The store is slow and the gateway far behind: 40 s on, past even the stretch a socket
    # that sent no connect gets (30 s), none of those whose connect arrived is refused
    # (of the 36 s since their arrival, 9 s count).
    await storm.run(3.6, behind=0.9)
    assert storm.now > TIMEOUT * HANDSHAKE_STRETCH + 10
    assert all(storm.is_open(s) for s in sockets if s != "e7")
    assert gateway.stats.handshake_timeouts == 0 and gateway.stats.unauthenticated == 299
    gate.open.set()
    await asyncio.gather(*arrivals)

    assert gate.reads == [sessions[0].id, sessions[1].id] and gate.key_reads == [KEY]
    assert outcomes.pop("c7") == "not joined"
    assert set(outcomes.values()) == {"joined"} and len(outcomes) == 299
    assert gateway.stats.refused == {} and gateway.stats.unauthenticated == 0
    assert gateway.connection_count() == 299
    await hub.settle()
    stored = [await hub.stored(record) for record in sessions]
    assert [s.connections for s in stored] == [per_session, per_session - 1]


async def test_a_client_that_left_while_waiting_hands_the_lookup_to_the_next(
    storm: Storm,
) -> None:
    gateway, hub = storm.gateway, storm.hub
    outcomes = _route_connects(storm)
    gate = Gate(storm)
    gate.open.set()
    record = await hub.session()
    await gateway.keys.check(KEY)  # known: the connects need no store for the key
    # Every store slot is taken (other store work): the first connect waits for one.
    for _ in range(8):
        await gateway.store_slots.acquire()
    for eio_sid in ("e1", "e2"):
        assert gateway.admit_socket(eio_sid) is None
    first = _arrive(storm, "e1", hub.token(record, "Ann"))
    second = _arrive(storm, "e2", hub.token(record, "Bob"))
    await _until(lambda: "c1" in gateway.conns and "c2" in gateway.conns, "both joining")
    gateway.forget_socket("e1")  # Ann's client went away while waiting
    for _ in range(8):
        gateway.store_slots.release()
    await asyncio.gather(first, second)
    assert outcomes == {"c1": "not joined", "c2": "joined"}
    assert gate.reads == [record.id], "Bob looked the session up; nobody for Ann"
    assert "c1" not in gateway.conns and gateway.connection_count(record.id) == 1
