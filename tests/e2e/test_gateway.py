"""The real-time gateway end to end: ``dormant serve`` in a subprocess, real python-socketio
clients over loopback. No timed assertions: short policy durations make things happen soon, and
every wait is a bounded poll for an outcome."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest

from tests.e2e.conftest import Server
from tests.e2e.gateway_support import Api, Probes, eventually

pytestmark = pytest.mark.e2e

FAST = {"heartbeat_interval": 1, "missed_pongs": 3}


def _serve(tmp: Path, **env: str) -> Server:
    return Server(tmp, ports=30, env={"DORMANT_POLICY_HEARTBEAT_INTERVAL": "1", **env}).start()


def _finish(srv: Server) -> None:
    try:
        logs = srv.logs()
    finally:
        left = srv.cleanup()
    print(f"--- {srv.home} log tail ---\n{srv.log_tail()}")
    assert not left, f"session processes survived: {left}"
    assert "Traceback" not in logs, logs[-5000:]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = _serve(tmp_path_factory.mktemp("gateway"))
    try:
        yield srv
    finally:
        _finish(srv)


@pytest.fixture(scope="module")
def tight_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Small limits: 3 connections per process, 2 per session, 1 activity/s (burst 3)."""
    srv = _serve(
        tmp_path_factory.mktemp("gateway-tight"),
        DORMANT_GATEWAY_MAX_CONNECTIONS="3",
        DORMANT_GATEWAY_MAX_CONNECTIONS_PER_SESSION="2",
        DORMANT_GATEWAY_ACTIVITY_RATE="1",
        DORMANT_GATEWAY_ACTIVITY_BURST="3",
    )
    try:
        yield srv
    finally:
        _finish(srv)


@pytest.fixture
async def api(server: Server) -> AsyncIterator[Api]:
    client = Api(server.url, server.key)
    yield client
    await client.close()


@pytest.fixture
async def probes(server: Server) -> AsyncIterator[Probes]:
    made = Probes(server.url)
    yield made
    await made.close()


def _secret(srv: Server) -> str:
    return (srv.home / "dormant-gateway.secret").read_text().strip()


def _claims(session: dict[str, Any], **over: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": "dormant",
        "aud": "dormant-gateway",
        "sub": session["user_id"],
        "sid": session["id"],
        "tenant": session["tenant"],
        "name": "forged",
        "iat": now,
        "exp": now + 600,
    }
    claims.update(over)
    return claims


# --- authentication --------------------------------------------------------------------------


async def test_connect_refusals_name_their_reason(server: Server, api: Api, probes: Probes) -> None:
    session = await api.create("refusals")
    secret = _secret(server)
    good = await api.token(session["id"])

    assert await probes().refused(None) == "unauthorized"
    assert await probes().refused("not-a-jwt") == "invalid_token"
    other_key = jwt.encode(_claims(session), "x" * 48, algorithm="HS256")
    assert await probes().refused(other_key) == "invalid_token"
    expired = jwt.encode(_claims(session, exp=int(time.time()) - 5), secret, algorithm="HS256")
    assert await probes().refused(expired) == "token_expired"
    wrong_aud = jwt.encode(_claims(session, aud="someone-else"), secret, algorithm="HS256")
    assert await probes().refused(wrong_aud) == "invalid_token"
    no_exp = _claims(session)
    del no_exp["exp"]
    assert await probes().refused(jwt.encode(no_exp, secret, algorithm="HS256")) == "invalid_token"
    # alg=none: the algorithm is fixed by the server, never taken from the token.
    header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    body = base64.urlsafe_b64encode(json.dumps(_claims(session)).encode()).rstrip(b"=").decode()
    assert await probes().refused(f"{header}.{body}.") == "invalid_token"
    # HS512 with the right secret is still refused: one algorithm only.
    hs512 = jwt.encode(_claims(session), secret, algorithm="HS512")
    assert await probes().refused(hs512) == "invalid_token"
    # Tokens never travel in the query string, even valid ones.
    assert await probes().refused(None, url=f"{server.url}?token={good}") == "token_in_query"

    # A valid token works; the same token for a deleted session does not.
    probe = probes()
    await probe.connect(good)
    assert probe.connected
    await probe.close()
    response = await api.http.delete(f"/v1/sessions/{session['id']}")
    assert response.status_code == 202
    await eventually_gone(api, session["id"])
    assert await probes().refused(good) == "session_not_found"


async def eventually_gone(api: Api, session_id: str) -> None:
    async def gone() -> bool:
        return await api.session(session_id) is None

    await eventually(gone, what=f"{session_id} to be deleted")


async def test_token_endpoint_validates_and_scopes(server: Server, api: Api) -> None:
    session = await api.create("tokens")
    sid = session["id"]
    response = await api.http.post(f"/v1/sessions/{sid}/tokens")
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == {"token", "expires_at", "session_id"}
    claims = jwt.decode(body["token"], options={"verify_signature": False})
    assert claims["sid"] == sid and claims["sub"] == "tokens" and claims["aud"] == "dormant-gateway"
    assert claims["exp"] - claims["iat"] <= 600

    for bad in ({"ttl": 0}, {"ttl": 10**9}, {"name": ""}, {"name": "a\x00b"}, {"bogus": 1}):
        response = await api.http.post(f"/v1/sessions/{sid}/tokens", json=bad)
        assert response.status_code == 422, (bad, response.text)
        assert response.json()["error"]["code"] in ("invalid_request", "unknown_field")
    response = await api.http.post("/v1/sessions/nope/tokens")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    response = await api.http.post(f"/v1/sessions/{sid}/tokens", headers={"X-API-Key": ""})
    assert response.status_code == 401

    # Another tenant's key cannot mint tokens for this session.
    other = server.cli("keys", "create", "--tenant", "other").stdout.strip().split()[-1]
    response = await api.http.post(f"/v1/sessions/{sid}/tokens", headers={"X-API-Key": other})
    assert response.status_code == 404, response.text


# --- session, presence, broadcast --------------------------------------------------------------


async def test_presence_with_three_participants(api: Api, probes: Probes) -> None:
    session = await api.create("room")
    sid = session["id"]
    people = {}
    for name in ("Ann", "Bob", "Cy"):
        probe = probes()
        await probe.connect(await api.token(sid, name=name))
        people[name] = probe

    for probe in people.values():
        presence = await probe.wait("presence", lambda p: p["occupancy"] == 3)
        assert sorted(p["name"] for p in presence["participants"]) == ["Ann", "Bob", "Cy"]
        first = await probe.wait("session")
        assert first["id"] == sid and first["state"] == "running"
    await api.wait_session(sid, lambda s: s["connections"] == 3, "three connections counted")

    mark = len(people["Ann"].events)
    await people["Cy"].close()
    presence = await people["Ann"].wait("presence", lambda p: p["occupancy"] == 2, after=mark)
    assert sorted(p["name"] for p in presence["participants"]) == ["Ann", "Bob"]
    await api.wait_session(sid, lambda s: s["connections"] == 2, "two connections")


async def test_broadcast_reaches_every_client(api: Api, probes: Probes) -> None:
    session = await api.create("broadcast")
    sid = session["id"]
    a, b = probes(), probes()
    await a.connect(await api.token(sid))
    await b.connect(await api.token(sid))
    await a.wait("presence", lambda p: p["occupancy"] == 2)

    payload = {"status": "ok", "files": ["a.js"], "nested": {"n": 1}}
    response = await api.http.post(
        f"/v1/sessions/{sid}/broadcast", json={"type": "build", "data": payload}
    )
    assert response.status_code == 202, response.text
    assert response.json() == {"id": sid, "type": "build", "delivered": 2}
    for probe in (a, b):
        assert await probe.wait("event") == {"type": "build", "data": payload}

    for bad in ({"type": ""}, {"type": "has space"}, {"data": 1}, {"type": "x", "extra": 1}):
        response = await api.http.post(f"/v1/sessions/{sid}/broadcast", json=bad)
        assert response.status_code == 422, (bad, response.text)
    response = await api.http.post(
        f"/v1/sessions/{sid}/broadcast", json={"type": "big", "data": "x" * 70_000}
    )
    assert response.status_code == 413 and response.json()["error"]["code"] == "payload_too_large"
    response = await api.http.post("/v1/sessions/nope/broadcast", json={"type": "x"})
    assert response.status_code == 404


async def test_activity_moves_last_activity_by_category(api: Api, probes: Probes) -> None:
    session = await api.create("activity")
    sid = session["id"]
    probe = probes()
    await probe.connect(await api.token(sid))

    assert await probe.call("activity", {"kind": "file-change", "detail": {"f": "a.py"}}) == {
        "ok": True,
        "counted": True,
    }
    current = await api.wait_session(
        sid, lambda s: s["last_activity"]["kind"] == "file-change", "file-change recorded"
    )
    assert current["last_activity"]["source"] == "gateway"
    stamped = current["last_activity"]["at"]

    # Presence and keepalive kinds do not move last_activity.
    assert (await probe.call("activity", {"kind": "navigation"}))["ok"] is True
    assert await probe.call("activity", {"kind": "heartbeat"}) == {"ok": True, "counted": False}
    seen = await api.wait_session(
        sid, lambda s: s["last_seen_at"] and s["last_seen_at"] > stamped, "navigation as seen"
    )
    assert seen["last_activity"] == current["last_activity"]

    # Bad input: an error event, and the connection stays.
    answers = [
        await probe.call("activity", {"kind": "teleport"}),
        await probe.call("activity", "command"),
        await probe.call("activity", {"kind": "command", "at": "2020-01-01"}),
        await probe.call("activity", {"kind": 7}),
        await probe.call("pong", {"ts": "soon"}),
        await probe.call("bogus-event", {"x": 1}),
    ]
    codes = [a["error"]["code"] for a in answers]
    assert codes == [
        "unknown_kind",
        "invalid_activity",
        "invalid_activity",
        "invalid_activity",
        "invalid_pong",
        "unknown_event",
    ]
    errors = [e["code"] for e in probe.seen("error")]
    assert errors == codes
    assert probe.connected
    assert (await probe.call("activity", {"kind": "build"}))["ok"] is True
    await api.wait_session(sid, lambda s: s["last_activity"]["kind"] == "build", "build recorded")


async def test_oversize_and_malformed_messages_are_refused_not_fatal(
    server: Server, api: Api, probes: Probes
) -> None:
    session = await api.create("oversize")
    sid = session["id"]
    probe = probes()
    await probe.connect(await api.token(sid), transports=["websocket"])
    await probe.sio.emit("activity", {"kind": "chat", "detail": "x" * 70_000})
    problem = await probe.wait("error", lambda e: e["code"] == "payload_too_large")
    assert "65536" in problem["message"]
    assert probe.connected
    assert (await probe.call("activity", {"kind": "chat"}))["ok"] is True

    # Raw Engine.IO/Socket.IO frames that do not parse: an error event, the socket stays open.
    ws_url = server.url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket"
    token = await api.token(sid)
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url) as ws:
        opened = await ws.receive_str()
        assert opened.startswith("0{")
        await ws.send_str("40" + json.dumps({"token": token}))
        assert (await _frame(ws, "40")).startswith("40{")
        await ws.send_str('42["activity",{"kind":')
        await ws.send_str("42[]")
        got = [await _frame(ws, '42["error"'), await _frame(ws, '42["error"')]
        assert all("malformed_packet" in g for g in got), got
        await ws.send_str('421["activity",{"kind":"command"}]')
        assert json.loads((await _frame(ws, "431"))[3:]) == [{"ok": True, "counted": True}]


async def _frame(ws: aiohttp.ClientWebSocketResponse, prefix: str) -> str:
    """The next text frame starting with ``prefix`` (answering Engine.IO pings meanwhile)."""
    while True:
        message = await asyncio.wait_for(ws.receive(), 30)
        assert message.type == aiohttp.WSMsgType.TEXT, message
        text = str(message.data)
        if text == "2":
            await ws.send_str("3")
        elif text.startswith(prefix):
            return text


# --- connections, grace, heartbeats ------------------------------------------------------------


async def test_reconnect_inside_grace_keeps_the_session(api: Api, probes: Probes) -> None:
    session = await api.create("grace-in", policy={**FAST, "disconnect_grace": 600})
    sid = session["id"]
    token = await api.token(sid)
    probe = probes()
    await probe.connect(token)
    await probe.wait("session")
    await probe.close()

    gone = await api.wait_session(sid, lambda s: s["level"] == "disconnected", "disconnected")
    assert gone["connections"] == 0
    assert gone["next_action"]["action"] == "sleep"
    assert "nobody came back" in gone["next_action"]["reason"]

    back = probes()
    await back.connect(token)
    again = await api.wait_session(sid, lambda s: s["connections"] == 1, "reconnected")
    assert again["state"] == "running" and again["level"] != "disconnected"
    assert "nobody came back" not in again["next_action"]["reason"]
    assert not any(e["to_state"] == "stopping" for e in await api.timeline(sid))


async def test_grace_expiry_sleeps_the_session(api: Api, probes: Probes) -> None:
    session = await api.create("grace-out", policy={**FAST, "disconnect_grace": 1})
    sid = session["id"]
    probe = probes()
    await probe.connect(await api.token(sid))
    await probe.wait("session")
    await probe.close()

    await api.wait_state(sid, "sleeping")
    codes = [e["code"] for e in await api.timeline(sid) if e["to_state"] == "stopping"]
    assert codes == ["disconnect_grace"]


async def test_reconnect_storm_does_not_reset_the_idle_clock(api: Api, probes: Probes) -> None:
    session = await api.create("storm", policy={**FAST, "disconnect_grace": 600})
    sid = session["id"]
    token = await api.token(sid)
    anchor = probes()
    await anchor.connect(token)
    await anchor.call("activity", {"kind": "command"})
    before = await api.wait_session(
        sid,
        lambda s: s["last_activity"]["kind"] == "command" and s["connections"] == 1,
        "the command and the connection counted",
    )

    for _ in range(10):
        probe = probes()
        await probe.connect(token)
        await probe.wait("session")
        await probe.close()

    after = await api.wait_session(sid, lambda s: s["connections"] == 1, "the storm to settle")
    assert after["last_activity"] == before["last_activity"]
    assert after["next_action"]["at"] == before["next_action"]["at"]
    # Connections were counted (joins and leaves close together may share one count update).
    connects = [e for e in await api.timeline(sid) if e["code"] == "connect"]
    assert 1 <= len(connects) <= 11


async def test_missed_pongs_drop_a_silent_client(api: Api, probes: Probes) -> None:
    session = await api.create("silent", policy={"heartbeat_interval": 1, "missed_pongs": 2})
    sid = session["id"]
    alive, mute = probes(), probes(pong=False)
    await alive.connect(await api.token(sid, name="alive"))
    await mute.connect(await api.token(sid, name="mute"))

    await mute.wait_disconnected()
    assert len(mute.seen("ping")) >= 2
    assert mute.seen("error", lambda e: e["code"] == "heartbeat_timeout")
    presence = await alive.wait("presence", lambda p: p["occupancy"] == 1)
    assert [p["name"] for p in presence["participants"]] == ["alive"]
    assert alive.connected
    current = await api.wait_session(sid, lambda s: s["connections"] == 1, "one left")
    assert current["connection_quality"] == "stable"


# --- sleeping and waking -----------------------------------------------------------------------


async def test_open_but_silent_tab_is_warned_then_slept_then_woken_by_activity(
    api: Api, probes: Probes
) -> None:
    policy = {**FAST, "sleep_after": 4, "warn_before": 2}
    session = await api.create("tab", policy=policy)
    sid = session["id"]
    tab = probes()  # answers every ping: alive, but no user behind it
    await tab.connect(await api.token(sid))

    warning = await tab.wait("sleep-warning")
    assert warning["at"] and "no meaningful activity" in warning["reason"]
    warned = await tab.wait("session", lambda s: s["warning"] is not None)
    assert warned["warning"]["at"] == warning["at"]
    await tab.wait("session", lambda s: s["state"] == "sleeping")
    assert tab.connected
    codes = [e["code"] for e in await api.timeline(sid) if e["to_state"] == "stopping"]
    assert codes == ["inactivity"]
    states = [s["state"] for s in tab.seen("session")]
    assert states.index("stopping") < states.index("sleeping")

    mark = len(tab.events)
    assert (await tab.call("activity", {"kind": "command"}))["ok"] is True
    await tab.wait("session", lambda s: s["state"] == "starting", after=mark)
    awake = await tab.wait("session", lambda s: s["state"] == "running", after=mark)
    assert awake["level"] == "active"
    current = await api.session(sid)
    assert current is not None and current["state"] == "running"
    assert current["connections"] == 1  # still counted after the sleep and the wake


async def test_activity_cancels_a_warning(api: Api, probes: Probes) -> None:
    # A wide window between the warning (after 2 s) and the sleep, so a slow machine cannot
    # let the sleep overtake the cancelling activity.
    policy = {**FAST, "sleep_after": 60, "warn_before": 58}
    session = await api.create("cancel", policy=policy)
    sid = session["id"]
    tab = probes()
    await tab.connect(await api.token(sid))
    await tab.wait("sleep-warning")
    mark = len(tab.events)

    assert (await tab.call("activity", {"kind": "user-interaction"}))["ok"] is True
    update = await tab.wait("session", lambda s: s["warning"] is None, after=mark)
    assert update["state"] == "running" and update["level"] == "active"
    current = await api.session(sid)
    assert current is not None and current["last_activity"]["kind"] == "user-interaction"
    assert current["state"] == "running"


async def test_deleting_a_session_closes_its_connections(api: Api, probes: Probes) -> None:
    session = await api.create("deleted")
    sid = session["id"]
    probe = probes()
    await probe.connect(await api.token(sid))
    await probe.wait("session")
    response = await api.http.delete(f"/v1/sessions/{sid}")
    assert response.status_code == 202
    await probe.wait_disconnected()
    assert probe.seen("error", lambda e: e["code"] == "session_deleted")
    assert probe.seen("session", lambda s: s["state"] == "deleting")


# --- limits ------------------------------------------------------------------------------------


async def test_capacity_limits_refuse_clearly(tight_server: Server) -> None:
    api = Api(tight_server.url, tight_server.key)
    made = Probes(tight_server.url)
    try:
        one = await api.create("cap-one")
        two = await api.create("cap-two")
        token_one, token_two = await api.token(one["id"]), await api.token(two["id"])
        first, second = made(), made()
        await first.connect(token_one)
        await second.connect(token_one)
        assert await made().refused(token_one) == "session_full"

        third = made()
        await third.connect(token_two)
        assert await made().refused(token_two) == "server_full"

        await first.close()
        await api.wait_session(one["id"], lambda s: s["connections"] == 1, "a free slot")
        again = await made.connect_when_free(token_two)
        assert again.connected
    finally:
        await made.close()
        await api.close()


async def test_activity_rate_limit_drops_and_counts(tight_server: Server) -> None:
    api = Api(tight_server.url, tight_server.key)
    made = Probes(tight_server.url)
    try:
        session = await api.create("rate")
        probe = made()
        await probe.connect(await api.token(session["id"]))
        answers = [await probe.call("activity", {"kind": "command"}) for _ in range(12)]
        refused = [a for a in answers if not a["ok"]]
        assert refused, answers
        assert all(a["error"]["code"] == "rate_limited" for a in refused)
        dropped = [a["error"]["dropped"] for a in refused]
        assert dropped == list(range(1, len(refused) + 1))
        notice = await probe.wait("error", lambda e: e["code"] == "rate_limited")
        assert notice["dropped"] >= 1
        assert probe.connected
        recorded = await api.wait_session(
            session["id"], lambda s: s["last_activity"]["kind"] == "command", "accepted ones"
        )
        assert recorded["state"] == "running"
    finally:
        await made.close()
        await api.close()
