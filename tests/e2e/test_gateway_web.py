"""``/static/dormant.js``: the official socket.io-client bundle, vendored unchanged from the npm
package pinned in tests/e2e/js/package-lock.json, followed by the tracker."""

from __future__ import annotations

import json

import httpx
import pytest

from dormant import web
from tests.e2e.conftest import Server
from tests.e2e.gateway_support import JS_DIR, REPO

pytestmark = pytest.mark.e2e

VENDOR = REPO / "src" / "dormant" / "web" / "vendor"


def test_vendored_bundle_is_the_pinned_npm_package() -> None:
    package = JS_DIR / "node_modules" / "socket.io-client"
    if not package.is_dir():
        pytest.fail("run `npm ci --prefix tests/e2e/js` first (scripts/test.sh does)")
    lock = json.loads((JS_DIR / "package-lock.json").read_text())
    pinned = lock["packages"]["node_modules/socket.io-client"]["version"]
    assert json.loads((package / "package.json").read_text())["version"] == pinned
    shipped = (VENDOR / "socket.io.min.js").read_bytes()
    assert shipped == (package / "dist" / "socket.io.min.js").read_bytes(), (
        "src/dormant/web/vendor is stale: run `npm --prefix tests/e2e/js run vendor`"
    )
    assert f"Socket.IO v{pinned}".encode() in shipped[:200]
    assert (VENDOR / "socket.io-client.LICENSE").read_bytes() == (package / "LICENSE").read_bytes()


def test_server_serves_dormant_js(server: Server) -> None:
    response = httpx.get(f"{server.url}/static/dormant.js", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/javascript")
    assert response.headers["etag"] == web.dormant_js_etag()
    body = response.content
    assert body == web.dormant_js()
    assert body.startswith(b"/*!\n * Socket.IO v")
    assert b"root.Dormant = {" in body and b"sourceMappingURL" not in body
    # Needs no API key, and nothing else lives under /static.
    assert httpx.get(f"{server.url}/static/other.js", timeout=10).status_code == 404
