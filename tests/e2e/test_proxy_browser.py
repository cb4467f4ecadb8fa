"""Issue 10: Chromium opening a sleeping session's URL sees the waiting page (no asset from
anywhere but dormant), then the session's own page once it serves, without a manual reload.

The screenshots are written to the test's directory, and kept in ``DORMANT_SCREENSHOT_DIR`` when
that is set (``examples/proxy-waiting.png`` and ``examples/proxy-session.png`` are two)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import Server
from tests.e2e.gateway_support import Browser
from tests.e2e.proxy_support import create, proxy_config, sleep, wakes

pytestmark = pytest.mark.e2e

PNG = b"\x89PNG\r\n\x1a\n"


async def _shot(browser: Browser, path: Path) -> None:
    await browser.do("screenshot", path=str(path))
    assert path.read_bytes()[:8] == PNG
    if keep := os.environ.get("DORMANT_SCREENSHOT_DIR"):
        shutil.copyfile(path, Path(keep) / path.name)


async def test_chromium_sees_the_waiting_page_then_the_session(
    server_factory: Callable[..., Server], tmp_path: Path, browser: Browser
) -> None:
    config = proxy_config(tmp_path / "dormant.toml")
    server = server_factory(DORMANT_CONFIG=str(config))
    sid = create(server, template="slow")  # starts 2 s after it is asked to
    sleep(server, sid)
    link = server.client().post(f"/v1/sessions/{sid}/links").json()["url"]
    await browser.ready()
    await browser.do("onlyOrigin", origin=server.proxy_url)

    status = await browser.do("open", url=link)  # the link, its 302, then the waiting page
    assert status == 503
    assert await browser.do("eval", expr="location.pathname") == f"/s/{sid}/"  # token gone
    assert "Waking your session" in await browser.do("text", selector="h1")
    await _shot(browser, tmp_path / "proxy-waiting.png")

    url = await browser.do("waitFor", selector="text=hello from", timeout=30000)
    assert url == f"{server.proxy_url}/s/{sid}/"
    assert await browser.do("text", selector="h1") == f"hello from {sid}"
    await _shot(browser, tmp_path / "proxy-session.png")

    assert await browser.do("blocked") == []  # nothing asked of any other origin
    assert browser.page_errors() == []
    assert wakes(server, sid) == 1
    cookie = await browser.do("eval", expr="document.cookie")
    assert "dormant_access" not in cookie  # HttpOnly: no script reads it
