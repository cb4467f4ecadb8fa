"""Waiting for outcomes from the outside: ``?wait=N`` on the API and ``--wait`` in the CLI answer
once the session has reached the state asked for (or failed), instead of a bare 202."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .conftest import Server

pytestmark = pytest.mark.e2e


@pytest.fixture
def server(module_server: Server) -> Server:
    """The tests here share nothing but the server (each its own user and session)."""
    return module_server


def test_api_wait_answers_with_the_outcome(server: Server) -> None:
    api = server.client()
    created = api.post("/v1/sessions", params={"wait": 30}, json={"user_id": "wanda"})
    assert created.status_code == 201, created.text
    session = created.json()
    assert session["state"] == "running"
    assert server.port_answers(session["port"]) is not None
    sid = session["id"]

    slept = api.post(f"/v1/sessions/{sid}/sleep", params={"wait": 30})
    assert slept.status_code == 202, slept.text
    assert slept.json()["outcome"] == {"state": "sleeping", "ok": True, "error": None}
    assert server.port_closed(session["port"])

    woken = api.post(f"/v1/sessions/{sid}/wake", params={"wait": 30})
    assert woken.json()["outcome"] == {"state": "running", "ok": True, "error": None}
    current = server.session(sid)  # on a port taken at wake (released while it slept)
    assert current is not None and server.port_answers(current["port"]) is not None

    plain = api.post(f"/v1/sessions/{sid}/sleep")
    assert plain.json()["outcome"] is None  # no wait: answered at once, as before
    server.wait_state(sid, "sleeping")

    for bad in ("-1", "121", "soon"):
        refused = api.post(f"/v1/sessions/{sid}/wake", params={"wait": bad})
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"]["code"]

    gone = api.delete(f"/v1/sessions/{sid}", params={"wait": 30})
    assert gone.json()["outcome"] == {"state": "deleted", "ok": True, "error": None}
    assert server.session(sid) is None


def test_cli_wait_prints_the_state_reached(server: Server) -> None:
    created = server.cli("sessions", "create", "--user", "carl", "--wait", "30")
    sid, state = created.stdout.split()[:2]
    assert state == "running"
    slept = server.cli("sessions", "sleep", sid, "--wait", "30")
    assert slept.stdout.strip() == f"{sid} sleeping"
    woken = server.cli("sessions", "wake", sid, "--wait", "30")
    assert woken.stdout.strip() == f"{sid} running"
    current = server.session(sid)
    assert current is not None and current["state"] == "running"
