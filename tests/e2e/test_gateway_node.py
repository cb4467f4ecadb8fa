"""The gateway against the official socket.io-client from npm, driven in Node."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from tests.e2e.conftest import Server
from tests.e2e.gateway_support import Api, NodeClient

pytestmark = pytest.mark.e2e


@pytest.fixture
async def api(server_factory: Callable[..., Server]) -> AsyncIterator[Api]:
    srv = server_factory(DORMANT_POLICY_HEARTBEAT_INTERVAL="1")
    client = Api(srv.url, srv.key)
    yield client
    await client.close()
    assert "Traceback" not in srv.logs()


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
    ann = await node().ready()
    bob = await node().ready()
    ann.send(cmd="connect", token=await api.token(sid, name="Ann"))
    bob.send(cmd="connect", token=await api.token(sid, name="Bob"), transports=["websocket"])
    await ann.wait(lambda m: m.get("type") == "connected", "Ann connected")
    await bob.wait(lambda m: m.get("type") == "connected", "Bob connected")

    first = await ann.event("session")
    assert first["id"] == sid and first["state"] == "running"
    presence = await bob.event("presence", lambda p: p["occupancy"] == 2)
    assert sorted(p["name"] for p in presence["participants"]) == ["Ann", "Bob"]

    # Heartbeats: the JS client answers pings; a pong gives a measured, stable round trip.
    await ann.event("ping")
    measured = await api.wait_session(
        sid, lambda s: s["connection_quality"] == "stable", "quality from pongs"
    )
    assert measured["connections"] == 2

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
