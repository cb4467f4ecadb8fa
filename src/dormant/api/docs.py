"""``/docs`` (Swagger UI) and ``/redoc`` (ReDoc) from assets shipped in the package.

FastAPI's pages load their scripts, styles, fonts and favicon from CDNs and Google, so they are
blank on a machine without internet access (an operator's laptop on a plane, an air-gapped
cluster). The bundles in ``docs_assets/`` are the npm packages' own files (copied by
``tests/e2e/js/vendor.mjs``, licences beside them); here they are served under
``/docs/assets/``, and the pages refer to nothing else.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, swagger_ui_default_parameters
from fastapi.responses import HTMLResponse, Response

from dormant.api.errors import error_response

ASSETS_PREFIX = "/docs/assets"

#: What may be fetched from ``/docs/assets/``, with its content type; nothing else is served.
_TYPES = {
    "swagger-ui-bundle.js": "application/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon-32x32.png": "image/png",
    "redoc.standalone.js": "application/javascript; charset=utf-8",
}

#: The URLs carry the content's hash (``?v=``), so a browser may keep a file for long: an
#: upgrade changes the URL. The ETag serves revalidation after that.
CACHE_CONTROL = "public, max-age=604800"


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


@cache
def asset(name: str) -> Asset | None:
    """The packaged file ``name`` (read once), or None when it is not one of the docs' assets."""
    media_type = _TYPES.get(name)
    if media_type is None:
        return None
    body = resources.files("dormant.api").joinpath("docs_assets", name).read_bytes()
    return Asset(body, media_type, f'"{hashlib.sha256(body).hexdigest()[:32]}"')


def asset_url(name: str) -> str:
    found = asset(name)
    assert found is not None, name
    return f"{ASSETS_PREFIX}/{name}?v={found.etag.strip(chr(34))[:12]}"


def install_docs(app: FastAPI, openapi_url: str = "/openapi.json") -> None:
    """Serve ``/docs``, ``/redoc`` and their assets on ``app`` (created with ``docs_url=None``
    and ``redoc_url=None``)."""
    title = f"{app.title} API"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=title,
            swagger_js_url=asset_url("swagger-ui-bundle.js"),
            swagger_css_url=asset_url("swagger-ui.css"),
            swagger_favicon_url=asset_url("favicon-32x32.png"),
            # validatorUrl: no badge asking swagger.io to validate the document.
            swagger_ui_parameters={**swagger_ui_default_parameters, "validatorUrl": None},
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=title,
            redoc_js_url=asset_url("redoc.standalone.js"),
            redoc_favicon_url=asset_url("favicon-32x32.png"),
            with_google_fonts=False,  # the system's fonts: nothing from Google
        )

    @app.get(ASSETS_PREFIX + "/{name}", include_in_schema=False)
    async def docs_asset(name: str, request: Request) -> Response:
        found = asset(name)
        if found is None:
            return error_response(404, "not_found", f"no such asset: {name[:100]}")
        headers = {"Cache-Control": CACHE_CONTROL, "ETag": found.etag}
        if request.headers.get("if-none-match") == found.etag:
            return Response(status_code=304, headers=headers)
        return Response(found.body, media_type=found.media_type, headers=headers)
