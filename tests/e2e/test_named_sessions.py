"""Named sessions and idempotent creates against ``dormant serve``: ``PUT
/v1/users/{user_id}/sessions/{name}`` gets or creates (one session however many ask at once),
an ``Idempotency-Key`` survives a SIGKILL of dormant between its 201 and the client reading it,
and ``GET /v1/sessions`` filters by name, template and labels and refuses unknown parameters."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from dormant.client import Client

if TYPE_CHECKING:
    from .conftest import Server

pytestmark = pytest.mark.e2e

PUT = "/v1/users/{user}/sessions/{name}"


def with_other_template(server_factory: Callable[..., Server]) -> Server:
    """A server with a second template, ``other`` (the same small HTTP server)."""
    server = server_factory(start=False)
    command = [sys.executable, "-m", "http.server", "{port}", "--bind", "127.0.0.1"]
    (server.home / "dormant.toml").write_text(
        f"[templates.other]\ncommand = {json.dumps(command)}\n"
    )
    server.env["DORMANT_CONFIG"] = str(server.home / "dormant.toml")
    return server.start()


def test_put_twice_gives_one_session(server: Server) -> None:
    api = server.client()
    first = api.put(PUT.format(user="gina", name="dev"), params={"wait": 30})
    assert first.status_code == 201, first.text
    made = first.json()
    assert (made["name"], made["state"]) == ("dev", "running")
    assert server.port_answers(made["port"]) is not None
    again = api.put(PUT.format(user="gina", name="dev"), params={"wait": 30})
    assert again.status_code == 200, again.text
    assert again.json()["id"] == made["id"]
    assert [s["id"] for s in server.all_sessions(user_id="gina")] == [made["id"]]

    # asleep, it is returned asleep; woken when asked
    slept = api.post(f"/v1/sessions/{made['id']}/sleep", params={"wait": 30})
    assert slept.json()["outcome"]["ok"] is True
    kept = api.put(PUT.format(user="gina", name="dev"))
    assert (kept.status_code, kept.json()["state"]) == (200, "sleeping")
    woken = api.put(PUT.format(user="gina", name="dev"), params={"wake": "true", "wait": 30})
    assert (woken.status_code, woken.json()["id"]) == (200, made["id"])
    assert woken.json()["state"] == "running"
    assert server.port_answers(woken.json()["port"]) is not None

    # deleted, the name is free: the next PUT makes a new session
    gone = api.delete(f"/v1/sessions/{made['id']}", params={"wait": 30})
    assert gone.json()["outcome"]["state"] == "deleted"
    fresh = api.put(PUT.format(user="gina", name="dev"))
    assert fresh.status_code == 201 and fresh.json()["id"] != made["id"]

    refused = api.put(PUT.format(user="gina", name="Not_Valid"))
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["code"] == "invalid_request"


def test_twenty_concurrent_puts_make_one_session(server: Server) -> None:
    async def race() -> list[httpx.Response]:
        async with server.async_client() as api:
            return await asyncio.gather(
                *(api.put(PUT.format(user="hugo", name="race")) for _ in range(20))
            )

    answers = asyncio.run(race())
    assert sorted(r.status_code for r in answers) == [200] * 19 + [201], [r.text for r in answers]
    ids = {r.json()["id"] for r in answers}
    assert len(ids) == 1
    sid = ids.pop()
    sessions = server.all_sessions(user_id="hugo")
    assert [s["id"] for s in sessions] == [sid]
    server.wait_state(sid, "running")
    # one process for it, nothing else started
    marked = [env.get("DORMANT_SESSION") for env in server.marked().values()]
    assert set(marked) == {sid}


def _post_and_never_read(server: Server, key: str, body: dict[str, Any]) -> socket.socket:
    """Send a create and leave its answer unread in the socket."""
    payload = json.dumps(body).encode()
    head = (
        f"POST /v1/sessions HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        f"X-API-Key: {server.key}\r\nContent-Type: application/json\r\n"
        f"Idempotency-Key: {key}\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(head.encode() + payload)
    return sock


def test_an_idempotency_key_survives_a_sigkill(server: Server) -> None:
    body = {"user_id": "ida", "labels": {"job": "42"}}
    sock = _post_and_never_read(server, "job-42", body)
    try:
        made = server.wait_until(
            lambda: server.all_sessions(user_id="ida"), timeout=20, what="the create to land"
        )
        server.kill()  # the 201 is written (or about to be); the client never reads it
    finally:
        sock.close()
    server.start()
    api = server.client()
    retry = api.post("/v1/sessions", json=body, headers={"Idempotency-Key": "job-42"})
    assert retry.status_code == 201, retry.text
    assert retry.json()["id"] == made[0]["id"]
    assert [s["id"] for s in server.all_sessions(user_id="ida")] == [made[0]["id"]]
    server.wait_state(made[0]["id"], "running", timeout=30)

    # the plain case: answered, killed, restarted, retried
    first = api.post("/v1/sessions", json=body, headers={"Idempotency-Key": "job-43"})
    assert first.status_code == 201, first.text
    server.kill()
    server.start()
    api = server.client()
    again = api.post("/v1/sessions", json=body, headers={"Idempotency-Key": "job-43"})
    assert again.status_code == 201 and again.json()["id"] == first.json()["id"]
    other = api.post(
        "/v1/sessions", json={**body, "labels": {}}, headers={"Idempotency-Key": "job-43"}
    )
    assert other.status_code == 422, other.text
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    assert len(server.all_sessions(user_id="ida")) == 2


def test_list_filters_and_refuses_unknown_parameters(
    server_factory: Callable[..., Server],
) -> None:
    server = with_other_template(server_factory)
    api = server.client()
    made: dict[str, str] = {}
    for key, user, name, template, labels in [
        ("a", "gina", "dev", "default", {"team": "ml", "gpu": "yes"}),
        ("b", "gina", "dev", "other", {"team": "ml"}),
        ("c", "hugo", "dev", "default", {"team": "web"}),
        ("d", "hugo", "notes", "other", {}),
    ]:
        response = api.put(
            PUT.format(user=user, name=name), json={"template": template, "labels": labels}
        )
        assert response.status_code == 201, response.text
        made[key] = response.json()["id"]
    plain = server.create("gina", labels={"team": "ml"})["id"]

    def found(**params: Any) -> set[str]:
        response = api.get("/v1/sessions", params=params)
        assert response.status_code == 200, response.text
        return {s["id"] for s in response.json()["items"]}

    assert found(name="dev") == {made["a"], made["b"], made["c"]}
    assert found(template="other") == {made["b"], made["d"]}
    assert found(label="team=ml") == {made["a"], made["b"], plain}
    assert found(label=["team=ml", "gpu=yes"]) == {made["a"]}
    assert found(label="team=ml", name="dev", user_id="gina", template="other") == {made["b"]}
    assert found(label="team=none") == set()

    for params in ({"colour": "red"}, {"labels": "team=ml"}, {"user": "gina"}):
        refused = api.get("/v1/sessions", params=params)
        assert refused.status_code == 422, refused.text
        error = refused.json()["error"]
        assert error["code"] == "unknown_field" and next(iter(params)) in error["message"]
    bad_label = api.get("/v1/sessions", params={"label": "team"})
    assert bad_label.status_code == 422 and "KEY=VALUE" in bad_label.text

    # the Python client: the same filters, every page, and get-or-create
    with Client(server.url, server.key) as client:
        ml = client.list_sessions(labels={"team": "ml"}, page_size=1)
        assert {s["id"] for s in ml} == {made["a"], made["b"], plain}
        assert client.ensure_session("hugo", "notes", template="other")["id"] == made["d"]
        assert client.ensure_session("hugo")["name"] == "default"
        assert sum(client.stats()["sessions_by_state"].values()) == 6
