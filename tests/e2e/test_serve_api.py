"""``dormant serve`` end to end: the REST API, the session processes it runs, and the CLI."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest

import dormant

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.e2e.conftest import Server

pytestmark = pytest.mark.e2e


@pytest.fixture(autouse=True)
def _no_errors_logged(server: Server) -> Iterator[None]:
    """The happy paths log no error (background operations fail only in the log)."""
    yield
    errors = [line for line in server.logs().splitlines() if '"level": "error"' in line]
    assert not errors, "\n".join(errors)


def _at(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _session_pids(server: Server, session_id: str) -> list[int]:
    return [pid for pid, env in server.marked().items() if env["DORMANT_SESSION"] == session_id]


def _transitions(server: Server, session_id: str) -> list[dict[str, Any]]:
    response = server.client().get(f"/v1/sessions/{session_id}/events")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["session_id"] == session_id
    return [e for e in body["items"] if e["type"] == "transition"]


def test_session_lifecycle(server: Server) -> None:
    """The Done-when flow: create, run, activity, sleep, wake (work dir kept), delete."""
    api = server.client()

    # create: 201, creating, then running with a process answering HTTP on its port
    response = api.post("/v1/sessions", json={"user_id": "alice"})
    assert response.status_code == 201, response.text
    created = response.json()
    sid, port = created["id"], created["port"]
    assert created["state"] == "creating"
    assert created["user_id"] == "alice"
    assert port in server.session_ports
    assert response.headers["location"] == f"/v1/sessions/{sid}"

    running = server.wait_state(sid, "running")
    assert running["url"] == f"{server.proxy_url}/s/{sid}/"  # through the session proxy
    assert running["port"] == port
    assert running["error"] is None
    root = server.wait_until(lambda: server.port_answers(port), what="the session's port")
    assert root.status_code == 200
    assert len(_session_pids(server, sid)) >= 1

    # meaningful activity moves last_activity
    response = api.post(f"/v1/sessions/{sid}/activity", json={"kind": "command"})
    assert response.status_code == 202, response.text
    assert response.json() == {
        "id": sid,
        "state": "running",
        "accepted": "activity",
        "outcome": None,
    }
    after_command = server.wait_until(
        lambda: (s := server.session(sid)) and s["last_activity"]["kind"] == "command" and s,
        what="last_activity.kind == command",
    )
    assert after_command["last_activity"]["source"] == "api"
    assert after_command["last_activity"]["at"] is not None

    # presence does not
    response = api.post(f"/v1/sessions/{sid}/activity", json={"kind": "focus"})
    assert response.status_code == 202, response.text
    after_focus = server.session(sid)
    assert after_focus is not None
    assert after_focus["last_activity"] == after_command["last_activity"]
    assert after_focus["last_seen_at"] is not None

    # a file in the work dir is served by the default command (http.server on the work dir)
    work = server.work_dir(sid)
    assert work.is_dir()
    (work / "kept.txt").write_text("still here\n")
    served = server.port_answers(port, "/kept.txt")
    assert served is not None and served.status_code == 200
    assert served.text == "still here\n"

    # sleep: 202, then sleeping, the port closed and the process gone
    response = api.post(f"/v1/sessions/{sid}/sleep")
    assert response.status_code == 202, response.text
    assert response.json()["accepted"] == "sleep"
    sleeping = server.wait_state(sid, "sleeping")
    assert sleeping["url"] == running["url"]  # the proxy's address stays while it sleeps
    assert sleeping["port"] is None  # released while it sleeps
    server.wait_until(lambda: server.port_closed(port), what="the port to close on sleep")
    server.wait_until(lambda: not _session_pids(server, sid), what="the process to exit")
    assert work.is_dir(), "sleep must keep the work dir"

    # wake: running again on a free port of the range; the file survived
    response = api.post(f"/v1/sessions/{sid}/wake")
    assert response.status_code == 202, response.text
    assert response.json() == {"id": sid, "state": "sleeping", "accepted": "wake", "outcome": None}
    woken = server.wait_state(sid, "running")
    port = woken["port"]
    assert port in server.session_ports
    served = server.wait_until(
        lambda: server.port_answers(port, "/kept.txt"), what="the woken session's port"
    )
    assert served.status_code == 200
    assert served.text == "still here\n"

    # the timeline holds every transition with its reason
    moves = [(e["from_state"], e["to_state"]) for e in _transitions(server, sid)]
    assert moves == [
        (None, "creating"),
        ("creating", "starting"),
        ("starting", "running"),
        ("running", "stopping"),
        ("stopping", "sleeping"),
        ("sleeping", "starting"),
        ("starting", "running"),
    ]
    events = _transitions(server, sid)
    assert all(e["reason"] and e["code"] for e in events), events
    key_id = server.key.split("_")[1]
    assert events[3]["reason"] == f"sleep requested by key {key_id} (tenant default, admin)"
    assert events[3]["action"] == "sleep"

    # delete: 202, then 404, the process gone and the work dir removed
    response = api.delete(f"/v1/sessions/{sid}")
    assert response.status_code == 202, response.text
    assert response.json() == {
        "id": sid,
        "state": "deleting",
        "accepted": "delete",
        "outcome": None,
    }
    server.wait_gone(sid)
    server.wait_until(lambda: not _session_pids(server, sid), what="the process to exit")
    server.wait_until(lambda: not work.parent.exists(), what="the session directory to go")
    assert server.port_closed(port)
    assert api.post(f"/v1/sessions/{sid}/wake").status_code == 404
    # the timeline of a deleted session is still readable and ends in deleted
    last = _transitions(server, sid)[-1]
    assert (last["from_state"], last["to_state"]) == ("deleting", "deleted")
    assert server.marked() == {}


def test_activity_wakes_a_sleeping_session(server: Server) -> None:
    sid = server.create("carol")["id"]
    server.wait_state(sid, "running")
    assert server.client().post(f"/v1/sessions/{sid}/sleep").status_code == 202
    server.wait_state(sid, "sleeping")

    # presence does not wake it
    response = server.client().post(f"/v1/sessions/{sid}/activity", json={"kind": "visibility"})
    assert response.status_code == 202, response.text
    session = server.session(sid)
    assert session is not None and session["state"] == "sleeping"

    # meaningful activity does (wake_on_activity is on by default)
    response = server.client().post(f"/v1/sessions/{sid}/activity", json={"kind": "chat"})
    assert response.status_code == 202, response.text
    port = server.wait_state(sid, "running")["port"]
    server.wait_until(lambda: server.port_answers(port), what="the woken session's port")
    reasons = [e["reason"] for e in _transitions(server, sid)]
    assert "woken by chat activity" in reasons

    # unless the session's policy says otherwise
    sid = server.create("carol", policy={"wake_on_activity": False})["id"]
    server.wait_state(sid, "running")
    assert server.client().post(f"/v1/sessions/{sid}/sleep").status_code == 202
    server.wait_state(sid, "sleeping")
    response = server.client().post(f"/v1/sessions/{sid}/activity", json={"kind": "chat"})
    assert response.status_code == 202, response.text
    after = server.session(sid)
    assert after is not None and after["last_activity"]["kind"] == "chat"
    assert "woken by chat activity" not in [e["reason"] for e in _transitions(server, sid)]
    assert after["state"] == "sleeping"


def test_list_pagination_filters_and_stats(server: Server) -> None:
    users = ["alice", "alice", "alice", "bob", "bob"]
    ids = [server.create(user)["id"] for user in users]
    for sid in ids:
        server.wait_state(sid, "running")
    api = server.client()

    # limit=2 over 5 sessions: 2 + 2 + 1, ids in creation order, cursors between pages
    pages: list[list[str]] = []
    cursor = None
    for _ in range(5):
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        response = api.get("/v1/sessions", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        pages.append([s["id"] for s in page["items"]])
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert cursor == pages[-1][-1]
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [sid for p in pages for sid in p] == sorted(ids)

    # filters
    def listed(**params: str) -> set[str]:
        return {s["id"] for s in server.all_sessions(**params)}

    assert listed(user_id="alice") == set(ids[:3])
    assert listed(user_id="bob") == set(ids[3:])
    assert listed(user_id="nobody") == set()
    assert listed(state="running") == set(ids)
    page = api.get("/v1/sessions", params={"user_id": "alice", "limit": 2}).json()
    assert len(page["items"]) == 2
    assert page["next_cursor"] is not None

    assert api.post(f"/v1/sessions/{ids[4]}/sleep").status_code == 202
    server.wait_state(ids[4], "sleeping")
    assert listed(state="sleeping") == {ids[4]}
    assert listed(state="running") == set(ids[:4])
    assert listed(user_id="bob", state="running") == {ids[3]}
    assert listed(state="running", level="active") == set(ids[:4])

    # stats count them
    response = api.get("/v1/stats")
    assert response.status_code == 200, response.text
    stats = response.json()
    assert stats["sessions_by_state"] == {"running": 4, "sleeping": 1}
    assert sum(stats["sessions_by_level"].values()) == 4
    assert stats["sessions_by_level"]["active"] == 4
    assert stats["transitions_by_reason"]["sleep"] == {"manual": 1}
    assert stats["orphans_removed"] == 0


def test_logout_deletes_only_that_users_sessions(server: Server) -> None:
    alice = [server.create("alice")["id"] for _ in range(2)]
    bob = server.create("bob")
    for sid in [*alice, bob["id"]]:
        server.wait_state(sid, "running")

    # another tenant's key cannot log out this tenant's users
    other_key = server.cli("keys", "create", "--tenant", "t2").stdout.strip()
    response = server.client(other_key).post("/v1/users/alice/logout")
    assert response.status_code == 200, response.text
    assert response.json() == {"user_id": "alice", "deleted": []}

    response = server.client().post("/v1/users/alice/logout")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["user_id"] == "alice"
    assert sorted(body["deleted"]) == sorted(alice)
    for sid in alice:
        server.wait_gone(sid)
        assert "logout" in {e["code"] for e in _transitions(server, sid)}
    server.wait_until(
        lambda: {env["DORMANT_SESSION"] for env in server.marked().values()} == {bob["id"]},
        what="only bob's process to remain",
    )

    still = server.session(bob["id"])
    assert still is not None and still["state"] == "running"
    answered = server.port_answers(bob["port"])
    assert answered is not None and answered.status_code == 200
    response = server.client().post("/v1/users/alice/logout")
    assert response.json() == {"user_id": "alice", "deleted": []}


def test_keepalive_and_busy_are_bounded(server: Server) -> None:
    sid = server.create("dave")["id"]
    server.wait_state(sid, "running")
    api = server.client()
    now = datetime.now(UTC)

    until = now + timedelta(hours=1)
    response = api.post(f"/v1/sessions/{sid}/keepalive", json={"until": until.isoformat()})
    assert response.status_code == 202, response.text
    body = response.json()
    assert _at(body["keepalive_until"]) == until
    assert body["next_action"]["action"] == "sleep"
    assert _at(body["next_action"]["at"]) == until
    assert "kept alive" in body["next_action"]["reason"]

    busy_until = now + timedelta(hours=2)
    response = api.post(f"/v1/sessions/{sid}/busy", json={"until": busy_until.isoformat()})
    assert response.status_code == 202, response.text
    body = response.json()
    assert _at(body["busy_until"]) == busy_until
    assert "busy" in body["next_action"]["reason"]

    rejected = [
        ("keepalive", now + timedelta(hours=13), "invalid"),  # max_keepalive is 12h
        ("busy", now + timedelta(hours=7), "invalid"),  # max_busy is 6h
        ("keepalive", now - timedelta(minutes=1), "invalid"),
        ("busy", now + timedelta(days=400), "invalid"),
    ]
    for what, when, code in rejected:
        response = api.post(f"/v1/sessions/{sid}/{what}", json={"until": when.isoformat()})
        assert response.status_code == 422, (what, when, response.text)
        error = response.json()["error"]
        assert error["code"] == code
        assert "until" in error["message"]
    naive = (now + timedelta(minutes=5)).replace(tzinfo=None).isoformat()
    response = api.post(f"/v1/sessions/{sid}/keepalive", json={"until": naive})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_request"

    session = server.session(sid)
    assert session is not None
    assert _at(session["keepalive_until"]) == until
    assert _at(session["busy_until"]) == busy_until


def test_health_metrics_and_docs(server: Server) -> None:
    sid = server.create("erin")["id"]
    server.wait_state(sid, "running")
    anonymous = server.client(auth=False)

    response = anonymous.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}

    response = anonymous.get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json() == {
        "status": "ready",
        "checks": {"store": "ok", "runtime.process": "ok"},
    }

    response = anonymous.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert re.search(r"^dormant_sessions_live_count 1(\.0)?$", response.text, re.M), response.text
    # the real-time gateway's counters are exported too (no client is connected here)
    assert re.search(r"^dormant_connections_open_count 0(\.0)?$", response.text, re.M)
    assert "dormant_connections_refused_total" in response.text
    # one session was created in this server's life: the counter says so (it once stayed 0)
    assert re.search(r"^dormant_sessions_created_total 1(\.0)?$", response.text, re.M), (
        response.text
    )

    response = anonymous.get("/docs")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "swagger" in response.text.lower()

    response = anonymous.get("/openapi.json")
    assert response.status_code == 200
    spec = response.json()
    assert spec["info"]["version"] == dormant.__version__
    for path in (
        "/v1/sessions",
        "/v1/sessions/{session_id}",
        "/v1/sessions/{session_id}/events",
        "/v1/users/{user_id}/logout",
        "/v1/stats",
    ):
        assert path in spec["paths"], path


def test_cli(server: Server) -> None:
    sid = server.create("frank")["id"]
    session = server.wait_state(sid, "running")

    # sessions ls: a table with the id and why the next action happens
    result = server.cli("sessions", "ls")
    lines = result.stdout.splitlines()
    header = lines[0].split()
    assert header[0] == "ID" and {"USER", "STATE"} <= set(header), header
    row = next(line for line in lines if line.startswith(sid))
    assert "frank" in row
    assert "running" in row
    # why: the next action's reason, or (since the two-part reasons) what happened
    assert session["next_action"]["reason"] in row or session["why"].split(";")[0] in row, row

    # sessions sleep / show
    result = server.cli("sessions", "sleep", sid)
    assert f"sleep requested for {sid}" in result.stdout
    server.wait_state(sid, "sleeping")
    result = server.cli("sessions", "ls", "--state", "sleeping")
    assert any(line.startswith(sid) for line in result.stdout.splitlines())
    result = server.cli("sessions", "show", sid)
    assert "running -> stopping" in result.stdout
    assert "sleep requested by key" in result.stdout

    # keys create / list
    result = server.cli("keys", "create", "--tenant", "t2")
    key = result.stdout.strip()
    match = re.fullmatch(r"dk_([0-9a-f]{12})_\S+", key)
    assert match, result.stdout
    response = server.client(key).get("/v1/sessions")
    assert response.status_code == 200, response.text
    assert response.json() == {"items": [], "next_cursor": None}
    listing = server.cli("keys", "list").stdout
    assert any(
        line.startswith(match.group(1)) and " t2 " in line for line in listing.splitlines()
    ), listing

    # a CLI error is one clear line, not a traceback
    result = server.cli("sessions", "show", "nope", check=False)
    assert result.returncode == 1
    assert "not found" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout

    result = server.cli("version")
    assert result.stdout.strip() == dormant.__version__
