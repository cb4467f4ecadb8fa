"""Issue 12: the console's Overview in Chromium. Sessions are made, slept, woken and deleted
through the REST API; the page (signed in, nothing but loopback reachable) shows what dormant
saved, and the test works the same figure out on its own from each session's timeline
(``GET /v1/sessions/{id}/events``) at the moment the page's answer was made: they are equal.

Screenshots go to the test's directory (printed), kept in ``DORMANT_SCREENSHOT_DIR`` when set."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Server
from tests.e2e.gateway_support import Browser

pytestmark = pytest.mark.e2e

PNG = b"\x89PNG\r\n\x1a\n"
RUN = {"starting", "running"}


def _t(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def expected_seconds(events: list[dict[str, Any]], end: datetime) -> tuple[float, float]:
    """(seconds run, seconds an always-on deployment would have run) up to ``end``, from a
    timeline: run is time in starting or running; always-on is creation to deleted or ``end``."""
    moves = sorted(
        (_t(e["at"]), e["to_state"])
        for e in events
        if e["type"] == "transition" and e["to_state"] and _t(e["at"]) <= end
    )
    run = 0.0
    for i, (at, state) in enumerate(moves):
        until = moves[i + 1][0] if i + 1 < len(moves) else end
        if state in RUN:
            run += (until - at).total_seconds()
    gone = next((at for at, state in moves if state == "deleted"), end)
    return run, (gone - moves[0][0]).total_seconds()


async def sign_in(browser: Browser, server: Server, url: str) -> None:
    assert await browser.do("open", url=url) == 200
    await browser.do("waitFor", selector="#signin-form")
    await browser.do("fill", selector="#signin-key", text=server.key)
    await browser.do("click", selector="#signin-form button[type=submit]")
    await browser.do("waitFor", selector="#main:not([hidden])")


async def shot(browser: Browser, path: Path) -> None:
    await browser.do("screenshot", path=str(path))
    assert path.read_bytes()[:8] == PNG
    if dest := os.environ.get("DORMANT_SCREENSHOT_DIR"):
        shutil.copyfile(path, Path(dest) / path.name)


async def test_the_overview_shows_what_the_timelines_say_was_saved(
    server_factory: Callable[..., Server], tmp_path: Path, browser: Browser
) -> None:
    print(f"screenshots in {tmp_path}")
    server = server_factory(DORMANT_PRICE_PER_CONTAINER_HOUR="0.40", DORMANT_CURRENCY="EUR")
    api = server.client()
    napper = server.create("alice")["id"]
    leaver = server.create("bob")["id"]
    server.create("carol")
    for sid in (napper, leaver):
        server.wait_state(sid, "running")
    assert api.post(f"/v1/sessions/{napper}/sleep").status_code == 202
    server.wait_state(napper, "sleeping")
    time.sleep(4)  # asleep long enough to show in thousandths of an hour (3.6 s)
    assert api.post(f"/v1/sessions/{napper}/wake").status_code == 202
    server.wait_state(napper, "running")
    assert api.delete(f"/v1/sessions/{leaver}").status_code == 202
    server.wait_gone(leaver)

    # The JSON (an API key works as well as the console's cookie), scoped like the API.
    data = api.get("/ui/api/overview", params={"hours": 24}).json()
    assert data["wake_latency"]["count"] == 1 and data["wake_latency"]["p50"] > 0
    assert data["per_hour"]["sleep"] and data["per_hour"]["wake"] and data["per_hour"]["delete"]
    assert data["now"]["by_state"].get("running") == 2
    assert data["orphans_removed"] == 0 and len(data["instances"]) == 1
    assert len(data["inputs"]["sessions"]) == 3
    assert api.get("/ui/api/overview", params={"hours": 0}).status_code == 422
    anonymous = server.client(auth=False).get("/ui/api/overview")
    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "unauthorized"

    await browser.ready()
    await browser.do("onlyLoopback")
    await browser.do("viewport", width=1280, height=800)
    await sign_in(browser, server, f"{server.url}/ui/overview")
    await browser.do("waitFor", selector="#ov-saved[data-end]")
    await browser.do("waitFor", selector="#chart-states canvas")
    await browser.do("waitFor", selector="#chart-hourly canvas")
    shown = await browser.do("eval", expr="({...document.querySelector('#ov-saved').dataset})")
    saved_text = await browser.do("text", selector="#saved-hours")
    money_text = await browser.do("text", selector="#saved-money")
    await shot(browser, tmp_path / "console-overview.png")
    await browser.do("viewport", width=390, height=844)
    await browser.do("waitUntil", expr="document.documentElement.scrollWidth <= innerWidth")
    await shot(browser, tmp_path / "console-overview-narrow.png")

    # The same figure, worked out here from the timelines up to the page's moment.
    end = _t(shown["end"])
    run = always = 0.0
    for sid in {s["id"] for s in server.all_sessions()} | {leaver}:
        events = api.get(f"/v1/sessions/{sid}/events").json()["items"]
        r, a = expected_seconds(events, end)
        run, always = run + r, always + a
    saved = round(round(always / 3600, 3) - round(run / 3600, 3), 3)
    print(f"saved {saved} h of {always / 3600:.3f} h always-on (page: {saved_text})")
    assert saved > 0
    assert float(shown["savedHours"]) == saved
    assert saved_text == f"{saved:.3f}"
    assert "€" in money_text  # at the configured price, in the configured currency
    assert "€0.40" in await browser.do("text", selector="#price")
    assert await browser.do("blocked") == []
    assert browser.page_errors() == []
