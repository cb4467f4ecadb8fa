"""Issue 10: routing by host. With ``DORMANT_PROXY_DOMAIN``, ``{session}.{domain}`` reaches the
session at its root (no prefix), its cookie is host-only for ``/``, and the API's ``url`` says
so."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.e2e.conftest import Server
from tests.e2e.proxy_support import create, proxy_config, sleep, wakes

pytestmark = pytest.mark.e2e

DOMAIN = "sessions.test"


def test_sessions_are_reached_by_host(
    server_factory: Callable[..., Server], tmp_path: Path
) -> None:
    config = proxy_config(tmp_path / "dormant.toml")
    server = server_factory(DORMANT_CONFIG=str(config), DORMANT_PROXY_DOMAIN=DOMAIN)
    sid = create(server)
    host = f"{sid}.{DOMAIN}:{server.proxy_port}"
    url = server.client().get(f"/v1/sessions/{sid}").json()["url"]
    assert url == f"http://{host}/"
    link = urlsplit(server.client().post(f"/v1/sessions/{sid}/links").json()["url"])
    assert link.netloc == host and link.path == "/"
    with httpx.Client(base_url=server.proxy_url, headers={"host": host}, timeout=60) as client:
        opened = client.get(f"/?{link.query}")
        assert opened.status_code == 302 and opened.headers["location"] == "/"
        cookie = opened.headers["set-cookie"]
        assert "Path=/;" in cookie and "Domain" not in cookie  # host-only
        value = cookie.split(";")[0].split("=", 1)[1]
        client.cookies.set("dormant_access", value)
        seen = client.get("/headers").json()
        assert seen["session"] == sid and seen["path"] == "/headers"
        assert "x-forwarded-prefix" not in seen["headers"]
        assert seen["headers"]["x-forwarded-host"] == host
        # another session's host with this cookie: 403; an unknown host: not a session
        other = create(server, "bob")
        assert client.get("/", headers={"host": f"{other}.{DOMAIN}"}).status_code == 403
        assert client.get("/", headers={"host": f"evil.{DOMAIN}"}).status_code == 404
        sleep(server, sid)
        assert client.get("/").text.endswith(f"hello from {sid}</h1>")
    assert wakes(server, sid) == 1
