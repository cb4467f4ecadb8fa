"""Issue 12: ``/docs`` (Swagger UI) and ``/redoc`` (ReDoc) render without internet access.

Headless Chromium opens both pages of a real ``dormant serve`` with every request to another
origin than the server's aborted and recorded (``onlyOrigin``): the operations must appear, and
no request may have been attempted elsewhere (a CDN, Google Fonts, a validator badge). The
assets' answers are checked over HTTP: content type, caching headers, revalidation, licences
shipped beside them. Screenshots are kept in ``DORMANT_SCREENSHOT_DIR`` when that is set.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import httpx
import pytest

import dormant.api
from tests.e2e.conftest import Server
from tests.e2e.gateway_support import Browser

pytestmark = pytest.mark.e2e

PNG = b"\x89PNG\r\n\x1a\n"
ASSETS = Path(dormant.api.__file__).parent / "docs_assets"
PACKAGE_JSON = Path(__file__).parent / "js" / "package.json"


@pytest.fixture
def server(module_server: Server) -> Server:
    """Every test here only reads (pages, assets, headers): one server for the module."""
    return module_server


async def _shot(browser: Browser, path: Path) -> None:
    await browser.do("screenshot", path=str(path))
    assert path.read_bytes()[:8] == PNG
    if keep := os.environ.get("DORMANT_SCREENSHOT_DIR"):
        shutil.copyfile(path, Path(keep) / path.name)


async def _body_text(browser: Browser) -> str:
    return str(await browser.do("eval", expr="document.body.innerText"))


async def test_swagger_ui_renders_the_operations_offline(
    server: Server, browser: Browser, tmp_path: Path
) -> None:
    await browser.ready()
    await browser.do("onlyOrigin", origin=server.url)
    assert await browser.do("open", url=f"{server.url}/docs") == 200
    # Swagger UI draws one block per operation, its path in data-path.
    sleep = '.opblock-summary-path[data-path="/v1/sessions/{session_id}/sleep"]'
    await browser.do("waitFor", selector=sleep, timeout=30000)
    text = await _body_text(browser)
    assert "dormant API" in await browser.do("eval", expr="document.title")
    assert "Per-user containers that run only while people use them." in text
    paths = await browser.do(
        "eval",
        expr="[...document.querySelectorAll('.opblock-summary-path')]"
        ".map(e => e.getAttribute('data-path'))",
    )
    assert "/v1/sessions" in paths
    assert "/v1/sessions/{session_id}/wake" in paths
    await _shot(browser, tmp_path / "docs-swagger.png")
    assert await browser.do("blocked") == []
    assert browser.page_errors() == []


async def test_redoc_renders_the_operations_offline(
    server: Server, browser: Browser, tmp_path: Path
) -> None:
    await browser.ready()
    await browser.do("onlyOrigin", origin=server.url)
    assert await browser.do("open", url=f"{server.url}/redoc") == 200
    # ReDoc draws each operation's summary as a heading and its path in the right-hand panel.
    await browser.do("waitFor", selector='h2:has-text("Create Session")', timeout=30000)
    text = await _body_text(browser)
    assert "/v1/sessions/{session_id}/sleep" in text
    assert "Per-user containers that run only while people use them." in text
    await _shot(browser, tmp_path / "docs-redoc.png")
    assert await browser.do("blocked") == []
    assert browser.page_errors() == []


def _asset_urls(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]+)"', html)


def test_pages_refer_only_to_packaged_assets(server: Server) -> None:
    anonymous = server.client(auth=False)
    for page in ("/docs", "/redoc"):
        response = anonymous.get(page)
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/html; charset=utf-8"
        urls = _asset_urls(response.text)
        assert urls, response.text
        assert all(url.startswith("/docs/assets/") for url in urls), urls
        assert "fonts.googleapis" not in response.text
        assert "cdn." not in response.text


def test_assets_have_content_types_and_caching_headers(server: Server) -> None:
    anonymous = server.client(auth=False)
    urls = {
        url.split("?")[0].rsplit("/", 1)[1]: url
        for page in ("/docs", "/redoc")
        for url in _asset_urls(anonymous.get(page).text)
    }
    expected = {
        "swagger-ui-bundle.js": "application/javascript; charset=utf-8",
        "swagger-ui.css": "text/css; charset=utf-8",
        "favicon-32x32.png": "image/png",
        "redoc.standalone.js": "application/javascript; charset=utf-8",
    }
    assert sorted(urls) == sorted(expected)
    for name, url in urls.items():
        response = anonymous.get(url)
        assert response.status_code == 200, url
        assert response.headers["content-type"] == expected[name]
        assert response.headers["cache-control"] == "public, max-age=604800"
        assert response.content == (ASSETS / name).read_bytes()
        etag = response.headers["etag"]
        assert re.fullmatch(r'"[0-9a-f]{32}"', etag)
        assert url.endswith(f"?v={etag[1:13]}")  # a new file is a new URL
        again = anonymous.get(url, headers={"If-None-Match": etag})
        assert again.status_code == 304
        assert again.content == b""
        assert again.headers["etag"] == etag
        stale = anonymous.get(url, headers={"If-None-Match": '"0"'})
        assert stale.status_code == 200


def test_only_the_docs_assets_are_served(server: Server) -> None:
    anonymous = server.client(auth=False)
    for name in ("versions.json", "redoc.LICENSE", "..%2Fapp.py", "%2e%2e%2fdocs.py", "nope.js"):
        response = anonymous.get(f"/docs/assets/{name}")
        assert response.status_code == 404, name
        assert response.json()["error"]["code"] == "not_found"
    outside = httpx.get(f"{server.url}/docs/assets/../../openapi.json", timeout=10)
    assert outside.status_code == 200  # the client normalises ..: it is /openapi.json itself
    assert outside.json()["info"]["title"] == "dormant"


def test_the_vendored_bundles_are_the_pinned_versions_with_licences() -> None:
    pinned = json.loads(PACKAGE_JSON.read_text())["devDependencies"]
    vendored = json.loads((ASSETS / "versions.json").read_text())
    assert vendored == {name: pinned[name] for name in ("swagger-ui-dist", "redoc")}
    for licence in ("swagger-ui.LICENSE", "swagger-ui.NOTICE", "redoc.LICENSE"):
        assert (ASSETS / licence).stat().st_size > 40, licence
    assert "MIT" in (ASSETS / "redoc.LICENSE").read_text()
    assert "Apache License" in (ASSETS / "swagger-ui.LICENSE").read_text()
