"""Issue 11, health: serving means the template's probe passes. An app that listens before its
``/healthz`` answers is not ``running`` until it does; one whose ``/healthz`` starts failing is
restarted after ``health_failures`` misses, and failed once the restarts run out, with the
reason in its timeline."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Server, wait_until
from tests.e2e.proxy_support import ECHO_APP

pytestmark = pytest.mark.e2e


def config(path: Path) -> Path:
    command = f'["{sys.executable}", "{ECHO_APP}", "{{port}}", "{{session}}"]'
    path.write_text(
        f"""
[templates.slow_ready]
command = {command}
env = {{READY_AFTER = "2"}}
ready = {{http = "/healthz"}}

[templates.checked]
command = {command}
ready = {{http = "/healthz", timeout = 1}}
health_interval = 1
health_failures = 3
restart = 1
start_timeout = 3
"""
    )
    return path


@pytest.fixture
def server(server_factory: Callable[..., Server], tmp_path: Path) -> Server:
    return server_factory(DORMANT_CONFIG=str(config(tmp_path / "dormant.toml")))


def test_an_app_is_not_running_before_its_probe_passes(server: Server) -> None:
    asked = time.monotonic()
    made = server.client().post(
        "/v1/sessions?wait=30", json={"user_id": "u", "template": "slow_ready"}
    )
    assert made.status_code == 201 and made.json()["state"] == "running", made.text
    assert time.monotonic() - asked >= 2.0  # listening at once, ready 2 s later
    events = server.client().get(f"/v1/sessions/{made.json()['id']}/events").json()["items"]
    starting = next(e for e in events if e["to_state"] == "starting")
    running = next(e for e in events if e["to_state"] == "running")
    gap = _seconds(running["at"]) - _seconds(starting["at"])
    assert gap >= 1.9, (starting, running)


def _seconds(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _endpoint_get(server: Server, sid: str, path: str) -> httpx.Response:
    port = server.client().get(f"/v1/sessions/{sid}").json()["port"]
    return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5)


def test_failing_health_restarts_then_fails_with_the_reason(server: Server) -> None:
    made = server.client().post(
        "/v1/sessions?wait=30", json={"user_id": "u", "template": "checked"}
    )
    assert made.json()["state"] == "running", made.text
    sid = made.json()["id"]

    def timeline() -> list[dict[str, str]]:
        return list(server.client().get(f"/v1/sessions/{sid}/events").json()["items"])

    # Sick until its process restarts: restarted after 3 misses, running (healthy) again.
    assert _endpoint_get(server, sid, "/sick-once").status_code == 200
    wait_until(
        lambda: any("restarting (1 of 1)" in e["reason"] for e in timeline()),
        timeout=60,
        what="the restart",
    )
    server.wait_state(sid, "running", timeout=30)
    restart = next(e for e in timeline() if "restarting (1 of 1)" in e["reason"])
    assert restart["code"] == "health"
    assert "health check failed 3 times: GET /healthz: HTTP 503" in restart["reason"]
    assert _endpoint_get(server, sid, "/healthz").status_code == 200

    # Sick for good: the restarts (1 within the hour) have run out: failed, with the reason.
    assert _endpoint_get(server, sid, "/sick").status_code == 200
    failed = wait_until(
        lambda: (s := server.session(sid)) is not None and s["state"] == "failed" and s,
        timeout=60,
        what="the session to fail",
    )
    assert "health check failed 3 times: GET /healthz: HTTP 503" in failed["error"], failed
    assert "1 restart(s) within the hour did not help" in failed["error"], failed
    assert failed["port"] is None  # its process was stopped
