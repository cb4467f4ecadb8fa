"""The gateway against the official socket.io-client from npm, driven in Node."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from tests.e2e.conftest import Server
from tests.e2e.gateway_support import Api, NodeClient

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the module: 1 s heartbeats, 2 activity events/s (bursts of 5)."""
    env = {
        "DORMANT_POLICY_HEARTBEAT_INTERVAL": "1",
        "DORMANT_GATEWAY_ACTIVITY_RATE": "2",
        "DORMANT_GATEWAY_ACTIVITY_BURST": "5",
    }
    srv = Server(tmp_path_factory.mktemp("gateway-node"), ports=20, env=env).start()
    try:
        yield srv
    finally:
        logs = srv.logs()
        left = srv.cleanup()
        print(f"--- {srv.home} log tail ---\n{srv.log_tail()}")
        assert not left, f"session processes survived: {left}"
        assert "Traceback" not in logs, logs[-5000:]


@pytest.fixture
async def api(server: Server) -> AsyncIterator[Api]:
    client = Api(server.url, server.key)
    yield client
    await client.close()


@pytest.fixture
def node(api: Api) -> Iterator[Callable[[], NodeClient]]:
    """``node()`` starts a Node client; all are killed afterwards, also on failure."""
    made: list[NodeClient] = []

    def start() -> NodeClient:
        client = NodeClient(str(api.http.base_url).rstrip("/"))
        made.append(client)
        return client

    yield start
    for client in made:
        client.close()


async def test_official_js_client_session_presence_activity_and_events(
    api: Api, node: Callable[[], NodeClient]
) -> None:
    session = await api.create("node-user")
    sid = session["id"]
    ann, bob, cy = [await node().ready() for _ in range(3)]
    ann.send(cmd="connect", token=await api.token(sid, name="Ann"))
    bob.send(cmd="connect", token=await api.token(sid, name="Bob"), transports=["websocket"])
    cy.send(cmd="connect", token=await api.token(sid, name="Cy"))
    for who in (ann, bob, cy):
        await who.wait(lambda m: m.get("type") == "connected", "connected")

    first = await ann.event("session")
    assert first["id"] == sid and first["state"] == "running"
    for who in (ann, bob, cy):
        presence = await who.event("presence", lambda p: p["occupancy"] == 3)
        assert sorted(p["name"] for p in presence["participants"]) == ["Ann", "Bob", "Cy"]
    cy.send(cmd="disconnect")
    await ann.event("presence", lambda p: p["occupancy"] == 2)

    # Heartbeats: the JS client answers pings; a pong gives a measured, stable round trip.
    await ann.event("ping")
    await api.wait_session(
        sid,
        lambda s: s["connection_quality"] == "stable" and s["connections"] == 2,
        "quality from pongs, two connections counted",
    )

    assert await ann.call("activity", {"kind": "build", "detail": {"target": "web"}}) == {
        "ok": True,
        "counted": True,
    }
    await api.wait_session(sid, lambda s: s["last_activity"]["kind"] == "build", "build")
    answer = await bob.call("activity", {"kind": "levitate"})
    assert answer["ok"] is False and answer["error"]["code"] == "unknown_kind"
    problem = await bob.event("error")
    assert problem["code"] == "unknown_kind"

    response = await api.http.post(
        f"/v1/sessions/{sid}/broadcast", json={"type": "hmr", "data": {"file": "app.js"}}
    )
    assert response.json()["delivered"] == 2
    for client in (ann, bob):
        assert await client.event("event") == {"type": "hmr", "data": {"file": "app.js"}}

    bob.send(cmd="disconnect")
    await bob.wait(lambda m: m.get("type") == "disconnect", "Bob gone")
    left = await ann.event("presence", lambda p: p["occupancy"] == 1)
    assert [p["name"] for p in left["participants"]] == ["Ann"]


async def test_official_js_client_sees_refusal_codes(
    api: Api, node: Callable[[], NodeClient]
) -> None:
    session = await api.create("node-refused")
    token = await api.token(session["id"])
    cases = [
        ({}, "unauthorized"),
        ({"token": "garbage"}, "invalid_token"),
        ({"token": token, "query": {"token": token}}, "token_in_query"),
    ]
    for connect, code in cases:
        client = await node().ready()
        client.send(cmd="connect", **connect)
        refused = await client.wait(lambda m: m.get("type") == "connect_error", f"refusal {code}")
        assert refused["code"] == code, refused
        assert refused["message"]


async def test_official_js_client_that_never_pongs_is_dropped(
    api: Api, node: Callable[[], NodeClient]
) -> None:
    session = await api.create("node-mute", policy={"heartbeat_interval": 1, "missed_pongs": 2})
    mute = await node().ready()
    mute.send(cmd="connect", token=await api.token(session["id"]), pong=False)
    await mute.wait(lambda m: m.get("type") == "connected", "connected")
    problem = await mute.event("error", lambda e: e["code"] == "heartbeat_timeout")
    assert "unanswered" in problem["message"]
    gone = await mute.wait(lambda m: m.get("type") == "disconnect", "dropped")
    assert gone["reason"] == "io server disconnect"
    await api.wait_session(session["id"], lambda s: s["connections"] == 0, "no connections")


async def test_official_js_client_silent_tab_is_warned_slept_and_woken(
    api: Api, node: Callable[[], NodeClient]
) -> None:
    policy = {"sleep_after": 4, "warn_before": 2}
    session = await api.create("node-tab", policy=policy)
    sid = session["id"]
    tab = await node().ready()
    tab.send(cmd="connect", token=await api.token(sid))
    await tab.wait(lambda m: m.get("type") == "connected", "connected")

    warning = await tab.event("sleep-warning")
    assert "no meaningful activity" in warning["reason"]
    await tab.event("session", lambda s: s["state"] == "sleeping")
    assert (await tab.call("activity", {"kind": "command"}))["ok"] is True
    await tab.event("session", lambda s: s["state"] == "starting")
    await tab.event("session", lambda s: s["state"] == "running")
    stops = [e["code"] for e in await api.timeline(sid) if e["to_state"] == "stopping"]
    assert stops == ["inactivity"]


async def test_official_js_client_grace_inside_keeps_outside_sleeps(
    api: Api, node: Callable[[], NodeClient]
) -> None:
    short = await api.create("node-gone", policy={"disconnect_grace": 1})
    leaving = await node().ready()
    leaving.send(cmd="connect", token=await api.token(short["id"]))
    await leaving.event("session")
    leaving.send(cmd="disconnect")
    await api.wait_state(short["id"], "sleeping")
    stops = [e["code"] for e in await api.timeline(short["id"]) if e["to_state"] == "stopping"]
    assert stops == ["disconnect_grace"]

    session = await api.create("node-grace", policy={"disconnect_grace": 600})
    sid = session["id"]
    token = await api.token(sid)
    first = await node().ready()
    first.send(cmd="connect", token=token)
    await first.event("session")
    first.send(cmd="disconnect")
    gone = await api.wait_session(sid, lambda s: s["level"] == "disconnected", "disconnected")
    assert "nobody came back" in gone["next_action"]["reason"]
    again = await node().ready()
    again.send(cmd="connect", token=token)
    await again.event("session")
    back = await api.wait_session(sid, lambda s: s["connections"] == 1, "back")
    assert back["state"] == "running" and "nobody came back" not in back["next_action"]["reason"]


async def test_official_js_client_rate_limit_and_oversize(
    api: Api, node: Callable[[], NodeClient]
) -> None:
    session = await api.create("node-limits")
    client = await node().ready()
    client.send(cmd="connect", token=await api.token(session["id"]), transports=["websocket"])
    await client.wait(lambda m: m.get("type") == "connected", "connected")

    answers = [await client.call("activity", {"kind": "chat"}) for _ in range(12)]
    limited = [a for a in answers if not a["ok"]]
    assert limited and all(a["error"]["code"] == "rate_limited" for a in limited)
    assert (await client.event("error", lambda e: e["code"] == "rate_limited"))["dropped"] >= 1

    client.send(cmd="emit", event="activity", data={"kind": "chat", "detail": "x" * 70_000})
    problem = await client.event("error", lambda e: e["code"] == "payload_too_large")
    assert "65536" in problem["message"]
    assert not [m for m in client.seen if m.get("type") == "disconnect"]
    await api.wait_session(session["id"], lambda s: s["connections"] == 1, "still connected")
