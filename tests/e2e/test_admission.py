"""Admission end to end: with ``[limits]`` a create beyond a limit is queued (``state:
"queued"``, ``queue_position``), admitted as soon as a slot frees, told its position over
Socket.IO, gives up after ``queue_timeout`` (503 with ``Retry-After``), and keeps its place in
the queue across a SIGKILL of dormant."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

from .gateway_support import Api, Probes

if TYPE_CHECKING:
    from .conftest import Server

pytestmark = pytest.mark.e2e


def _queue(server: Server, ids: list[str]) -> list[tuple[str, int | None]]:
    out = []
    for sid in ids:
        s = server.session(sid)
        assert s is not None
        out.append((s["state"], s["queue_position"]))
    return out


async def test_limits_queue_admit_push_positions_and_survive_a_kill(
    server_factory: Callable[..., Server],
) -> None:
    server = server_factory(DORMANT_LIMITS_RUNNING="3", DORMANT_LIMITS_RUNNING_PER_USER="1")
    api = server.client()
    made: list[dict[str, Any]] = []
    for user in ("ann", "bob", "cid", "dee", "ann", "bob"):
        response = api.post("/v1/sessions", json={"user_id": user})
        assert response.status_code == 201, response.text
        made.append(response.json())
    ids = [m["id"] for m in made]
    assert [m["state"] for m in made[3:]] == ["queued"] * 3
    assert [m["queue_position"] for m in made[3:]] == [1, 2, 3]
    for sid in ids[:3]:
        server.wait_state(sid, "running")
    assert _queue(server, ids[3:]) == [("queued", 1), ("queued", 2), ("queued", 3)]
    queued = server.session(ids[3])
    assert queued is not None and queued["queue_limit"] == "running"
    assert queued["queue_kind"] == "create" and queued["next_action"]["action"] == "none"
    assert "limit running=3" in server.logs()

    # the last queued client listens over Socket.IO
    rest = Api(server.url, server.key)
    probes = Probes(server.url)
    try:
        probe = probes()
        await probe.connect(await rest.token(ids[5]))
        greeting = await probe.wait("session")
        assert greeting["state"] == "queued", greeting
        # cid's session goes to sleep: dee's queued create is admitted at once
        slept = api.post(f"/v1/sessions/{ids[2]}/sleep", params={"wait": 30})
        assert slept.json()["outcome"]["ok"], slept.text
        asleep_at = time.monotonic()
        server.wait_until(
            lambda: (s := server.session(ids[3])) is not None and s["state"] != "queued",
            timeout=10,
            what="the first queued session to be admitted",
        )
        admitted_after = time.monotonic() - asleep_at
        assert admitted_after <= 1.0, admitted_after
        server.wait_state(ids[3], "running")
        moved = await probe.wait("queued", lambda d: d["position"] == 2)
        assert moved == {"position": 2, "limit": "running"}
        assert _queue(server, ids[4:]) == [("queued", 1), ("queued", 2)]
    finally:
        await probes.close()
        await rest.close()

    # a crash keeps the queue, in order
    server.kill()
    server.start()
    assert _queue(server, ids[4:]) == [("queued", 1), ("queued", 2)]
    api = server.client()
    slept = api.post(f"/v1/sessions/{ids[0]}/sleep", params={"wait": 30})
    assert slept.json()["outcome"]["ok"], slept.text
    server.wait_state(ids[4], "running")  # ann's second session, first in the queue
    assert _queue(server, ids[5:]) == [("queued", 1)]
    print(f"admitted {admitted_after * 1000:.0f} ms after the sleep")


def test_a_queued_create_gives_up_after_queue_timeout_with_503(
    server_factory: Callable[..., Server],
) -> None:
    server = server_factory(DORMANT_LIMITS_RUNNING="1", DORMANT_LIMITS_QUEUE_TIMEOUT="2")
    api = server.client()
    holder = server.create("ann")
    server.wait_state(holder["id"], "running")
    started = time.monotonic()
    refused = api.post("/v1/sessions", params={"wait": 20}, json={"user_id": "bob"})
    waited = time.monotonic() - started
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "queue_timeout"
    assert "limit running=1" in refused.json()["error"]["message"]
    assert int(refused.headers["Retry-After"]) >= 1
    assert 1.5 <= waited < 15, waited
    # its session is gone (nothing was made for it); the holder runs on
    gone = [s for s in server.all_sessions(user_id="bob")]
    assert gone == []
    assert server.session(holder["id"])["state"] == "running"  # type: ignore[index]
    # a queued wake gives up too, and its session stays asleep
    api.post(f"/v1/sessions/{holder['id']}/sleep", params={"wait": 30})
    other = server.create("cid")
    server.wait_state(other["id"], "running")
    woken = api.post(f"/v1/sessions/{holder['id']}/wake", params={"wait": 20})
    assert woken.status_code == 503, woken.text
    assert woken.json()["error"]["code"] == "queue_timeout"
    assert server.session(holder["id"])["state"] == "sleeping"  # type: ignore[index]
    assert "gave up its" in server.logs()
