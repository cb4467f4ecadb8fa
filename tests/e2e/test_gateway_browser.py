"""dormant.js in headless Chromium: the example page (served by ``examples/demo.py``, which mints
tokens with the Python client) tracks clicks and key presses, shows the live session and
presence, and wakes a sleeping session when the user does something.

Set ``DORMANT_SCREENSHOT=path.png`` to keep the screenshot (``examples/screenshot.png`` is one).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Server
from tests.e2e.gateway_support import REPO, Api, Browser, LineProcess, Probes

pytestmark = pytest.mark.e2e


@pytest.fixture
def server(server_factory: Callable[..., Server]) -> Server:
    return server_factory(DORMANT_POLICY_HEARTBEAT_INTERVAL="1")


@pytest.fixture
async def api(server: Server) -> AsyncIterator[Api]:
    client = Api(server.url, server.key)
    yield client
    await client.close()


@pytest.fixture
def demo(server: Server) -> Iterator[Callable[..., LineProcess]]:
    """``demo(*args)`` runs ``examples/demo.py``: it creates a session for carol and serves the
    page and its tokens. Stopped afterwards, also on failure."""
    started: list[LineProcess] = []

    def start(*args: str) -> LineProcess:
        command = [sys.executable, str(REPO / "examples" / "demo.py")]
        command += ["--dormant", server.url, "--key", server.key, "--user", "carol"]
        started.append(LineProcess([*command, "--name", "Carol", *args], cwd=REPO))
        return started[-1]

    try:
        yield start
    finally:
        for proc in started:
            proc.close()


async def test_example_page_tracks_the_user_and_shows_the_session(
    server: Server,
    api: Api,
    demo: Callable[..., LineProcess],
    browser: Browser,
    tmp_path: Path,
) -> None:
    started = await demo().wait(lambda m: "url" in m, "the demo backend to start")
    sid = started["session_id"]
    await api.wait_state(sid, "running")
    await browser.ready()

    await browser.do("goto", url=started["url"])
    await browser.do("waitText", selector="#status", text="connected")
    await browser.do("waitText", selector="#state", text="running")
    await browser.do("waitText", selector="#occupancy", text="1")
    await browser.do("waitText", selector="#participants", text="Carol")
    session = await api.wait_session(sid, lambda s: s["connections"] == 1, "the page connected")
    assert session["last_activity"]["kind"] is None

    # Clicks on elements marked data-dormant-activity report their kind.
    await browser.do("click", selector="#save")
    await api.wait_session(
        sid, lambda s: s["last_activity"]["kind"] == "file-change", "the save click"
    )
    await browser.do("waitText", selector="#last-kind", text="file-change")
    await browser.do("click", selector="#build")
    await api.wait_session(sid, lambda s: s["last_activity"]["kind"] == "build", "the build")
    # Key presses are user interaction (which key is never sent).
    await browser.do("type", selector="#editor", text="hello")
    typed = await api.wait_session(
        sid, lambda s: s["last_activity"]["kind"] == "user-interaction", "the key presses"
    )
    assert typed["last_activity"]["source"] == "gateway"
    # In-page navigation is presence: it moves last_seen_at only.
    await browser.do("click", selector="#nav")
    assert await browser.do("eval", expr="location.hash") == "#settings"

    # Someone else joins: the page shows both.
    probes = Probes(server.url)
    try:
        dave = probes()
        await dave.connect(await api.token(sid, name="Dave"))
        await browser.do("waitText", selector="#occupancy", text="2")
        await browser.do("waitText", selector="#participants", text="Dave")

        response = await api.http.post(
            f"/v1/sessions/{sid}/broadcast", json={"type": "build-status", "data": {"ok": True}}
        )
        assert response.json()["delivered"] == 2
        await browser.do("waitText", selector="#events", text='event build-status {"ok":true}')

        shot = tmp_path / "example.png"
        await browser.do("screenshot", path=str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if keep := os.environ.get("DORMANT_SCREENSHOT"):
            shutil.copyfile(shot, keep)
    finally:
        await probes.close()

    # Put it to sleep; the page shows it; a click wakes it.
    response = await api.http.post(f"/v1/sessions/{sid}/sleep")
    assert response.status_code == 202
    await browser.do("waitText", selector="#state", text="sleeping")
    await browser.do("click", selector="#chat")
    await browser.do("waitText", selector="#state", text="running")
    woken = await api.wait_state(sid, "running")
    assert woken["last_activity"]["kind"] == "chat"
    wakes = [e for e in await api.timeline(sid) if e["from_state"] == "sleeping"]
    assert [e["code"] for e in wakes] == ["activity"]

    assert browser.page_errors() == []
    assert "Traceback" not in server.logs()


async def test_a_silent_tab_is_warned_then_slept_and_a_click_wakes_it(
    api: Api, demo: Callable[..., LineProcess], browser: Browser
) -> None:
    policy = json.dumps({"sleep_after": 8, "warn_before": 6, "heartbeat_interval": 1})
    started = await demo("--policy", policy).wait(lambda m: "url" in m, "the demo backend")
    sid = started["session_id"]
    await api.wait_state(sid, "running")
    await browser.ready()
    await browser.do("goto", url=started["url"])
    await browser.do("waitText", selector="#status", text="connected")

    # Nobody touches the page: an open tab answering heartbeats is not a user.
    await browser.do("waitText", selector="#warning", text="Sleeping at")
    await browser.do("waitText", selector="#state", text="sleeping")
    stops = [e for e in await api.timeline(sid) if e["to_state"] == "stopping"]
    assert [e["code"] for e in stops] == ["inactivity"]
    assert await browser.do("eval", expr="window.tracker.status") == "connected"

    await browser.do("click", selector="#build")
    await browser.do("waitText", selector="#state", text="running")
    woken = await api.wait_state(sid, "running")
    assert woken["last_activity"]["kind"] == "build" and woken["connections"] == 1
    wakes = [e for e in await api.timeline(sid) if e["from_state"] == "sleeping"]
    assert [e["code"] for e in wakes] == ["activity"]
    assert browser.page_errors() == []
