"""Issue 10: the wake-and-serve flow with nginx ``auth_request`` in front, using exactly
``examples/nginx/forward-auth.conf``: running sessions are proxied by nginx itself; a sleeping
session's request is handed to dormant's proxy, which wakes it and answers with the session's
own page."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Server
from tests.e2e.proxy_support import (
    access_cookie,
    cookies_for,
    create,
    proxy_config,
    sleep,
    state,
    wakes,
)
from tests.e2e.replicas import REPO, Nginx

pytestmark = pytest.mark.e2e

EXAMPLE = REPO / "examples" / "nginx" / "forward-auth.conf"


def render(listen: int, proxy_port: int) -> str:
    text = EXAMPLE.read_text()
    text, n = re.subn(r"^(\s*)listen \d+;", rf"\g<1>listen 127.0.0.1:{listen};", text, flags=re.M)
    assert n == 1
    text, n = re.subn(r"server 127\.0\.0\.1:\d+;", f"server 127.0.0.1:{proxy_port};", text)
    assert n == 1
    return text


@pytest.fixture
def nginx_in_front(
    server_factory: Callable[..., Server], tmp_path: Path
) -> Iterator[tuple[Server, Nginx]]:
    server = server_factory(DORMANT_CONFIG=str(proxy_config(tmp_path / "dormant.toml")))
    nginx = Nginx(tmp_path / "nginx", [server.proxy_port])
    nginx.site.write_text(render(nginx.port, server.proxy_port))
    try:
        yield server, nginx.start()
    finally:
        nginx.stop()


def test_nginx_auth_request_wakes_and_serves(nginx_in_front: tuple[Server, Nginx]) -> None:
    server, nginx = nginx_in_front
    sid = create(server)
    jar = cookies_for(server, sid)
    value = access_cookie(jar)
    with httpx.Client(base_url=nginx.url, timeout=60) as client:
        anonymous = client.get(f"/s/{sid}/")
        assert anonymous.status_code == 401 and anonymous.headers["x-served-by"] == "dormant"
        client.cookies.set("dormant_access", value)
        direct = client.get(f"/s/{sid}/headers")
        assert direct.status_code == 200 and direct.headers["x-served-by"] == "nginx"
        assert direct.json()["path"] == "/headers"  # the prefix cut by nginx

        sleep(server, sid)
        woken = client.get(f"/s/{sid}/headers")
        assert woken.status_code == 200, woken.text
        assert woken.headers["x-served-by"] == "dormant"  # held by dormant during the wake
        assert woken.json()["session"] == sid and woken.json()["path"] == "/headers"
        assert state(server, sid) == "running" and wakes(server, sid) == 1

        again = client.get(f"/s/{sid}/")
        assert again.status_code == 200 and again.headers["x-served-by"] == "nginx"
    assert [p for p in nginx.problems() if re.search(r"\[(error|crit|alert|emerg)\]", p)] == []
