"""Helpers of the session proxy's end-to-end tests: a config with the echo app as a template,
links turned into cookies, and sessions driven to a state."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.e2e.conftest import Server

ECHO_APP = Path(__file__).parent / "apps" / "echo_app.py"


def proxy_config(path: Path, *, sleep_after: str = "15m", extra: str = "") -> Path:
    """``echo`` (the echo app, a process) as the default template; ``open`` is public."""
    path.write_text(
        f"""
default_template = "echo"

[policies.short]
preset = "balanced"
sleep_after = "{sleep_after}"
warn_before = "1s"

[templates.echo]
command = ["{sys.executable}", "{ECHO_APP}", "{{port}}", "{{session}}"]
policy = "short"
wake_timeout = 30
proxy_activity = {{ignore = ["GET /poll", "/metrics*"]}}

[templates.slow]
command = ["/bin/sh", "-c", "sleep 2 && exec {sys.executable} {ECHO_APP} {{port}} {{session}}"]
start_timeout = 20

[templates.open]
command = ["{sys.executable}", "{ECHO_APP}", "{{port}}", "{{session}}"]
public = true
{extra}
"""
    )
    return path


def create(server: Server, user: str = "alice", template: str | None = None) -> str:
    body: dict[str, str] = {"user_id": user}
    if template:
        body["template"] = template
    made = server.client().post("/v1/sessions?wait=30", json=body)
    assert made.status_code == 201, made.text
    assert made.json()["state"] == "running", made.text
    return str(made.json()["id"])


def cookies_for(server: Server, sid: str) -> httpx.Cookies:
    """Open the session's one-time link: the proxy answers 302 with the access cookie."""
    link = server.client().post(f"/v1/sessions/{sid}/links", json={"ttl": 60})
    assert link.status_code == 201, link.text
    url = link.json()["url"]
    assert url.startswith(f"{server.proxy_url}/s/{sid}/?dormant_token="), url
    with httpx.Client() as browser:
        opened = browser.get(url)
        assert opened.status_code == 302, opened.text
        assert opened.headers["location"] == f"/s/{sid}/"
        cookie = opened.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and f"Path=/s/{sid}/" in cookie
        return browser.cookies


def access_cookie(jar: httpx.Cookies) -> str:
    """The value of the session's access cookie in ``jar``."""
    return next(c.value for c in jar.jar if c.name == "dormant_access")


def state(server: Server, sid: str) -> str:
    got = server.client().get(f"/v1/sessions/{sid}")
    return str(got.json()["state"]) if got.status_code == 200 else f"gone ({got.status_code})"


def sleep(server: Server, sid: str) -> None:
    slept = server.client().post(f"/v1/sessions/{sid}/sleep?wait=30")
    assert slept.status_code == 202 and slept.json()["outcome"]["ok"], slept.text


def wakes(server: Server, sid: str) -> int:
    """How many times the session left ``sleeping`` (its timeline)."""
    events = server.client().get(f"/v1/sessions/{sid}/events").json()["items"]
    return sum(1 for e in events if e["from_state"] == "sleeping" and e["to_state"] == "starting")


def short_lived(
    server_factory: Callable[..., Server], tmp_path: Path, sleep_after: str
) -> tuple[Server, str, httpx.Cookies]:
    """A server whose default template sleeps after ``sleep_after`` without activity, one
    running session of it, and that session's cookies."""
    config = proxy_config(tmp_path / "dormant.toml", sleep_after=sleep_after)
    server = server_factory(DORMANT_CONFIG=str(config))
    sid = create(server)
    return server, sid, cookies_for(server, sid)
