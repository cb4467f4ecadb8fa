"""The console's pages and static files: one page chrome (nav bar, sign-in panel, confirm
dialog, shared stylesheet), strict security headers, and assets shipped in the package.

Pages are shells: their scripts ask the API for everything they show (with the console's
cookie), and write it as text nodes, never as markup, so nothing a user named can run.
"""

from __future__ import annotations

import hashlib
import html
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import HTMLResponse, Response

from dormant.errors import NotFound

STATIC = resources.files("dormant.api.console") / "static"
#: ``name.ext`` or ``vendor/name.ext``: no other directory, no ``..``, no hidden file.
_ASSET = re.compile(r"^(?:vendor/)?[A-Za-z0-9][A-Za-z0-9._-]*\.(css|js|svg|png)$")
_TYPES = {
    "css": "text/css; charset=utf-8",
    "js": "application/javascript; charset=utf-8",
    "svg": "image/svg+xml",
    "png": "image/png",
}
SessionId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


@cache
def asset(name: str) -> Asset | None:
    """A static file of the console by name (only plain names: no path reaches elsewhere)."""
    match = _ASSET.match(name)
    if match is None:
        return None
    file = STATIC / name
    if not file.is_file():
        return None
    body = file.read_bytes()
    return Asset(body, _TYPES[match.group(1)], f'"{hashlib.sha256(body).hexdigest()[:16]}"')


def has_asset(name: str) -> bool:
    return asset(name) is not None


def security_headers(frame_src: str | None = None) -> dict[str, str]:
    """What every console response says about itself: scripts, styles, connections only from
    here; never framed; frames (the session preview) only from the sessions' origin."""
    csp = [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        f"frame-src {frame_src}" if frame_src else "frame-src 'none'",
    ]
    return {
        "Content-Security-Policy": "; ".join(csp),
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "same-origin",
        "Cross-Origin-Opener-Policy": "same-origin",
    }


CURRENT = ' aria-current="page"'


def render_page(
    title: str,
    main: str,
    scripts: list[str],
    *,
    active: str = "",
    frame_src: str | None = None,
    styles: tuple[str, ...] = (),
) -> HTMLResponse:
    """A console page: the shared chrome around ``main`` (trusted markup, no user data),
    loading ``scripts`` and ``styles`` besides console.css (names under ``/ui/static/``;
    missing ones are left out)."""
    nav = "".join(
        f'<a href="{href}"{CURRENT if key == active else ""}>{label}</a>'
        for key, href, label in (
            ("sessions", "/ui", "Sessions"),
            ("overview", "/ui/overview", "Overview"),
            ("docs", "/docs", "API docs"),
        )
    )
    tags = "".join(
        f'<script src="/ui/static/{name}?v={_version(name)}" defer></script>'
        for name in ["console.js", *scripts]
        if has_asset(name)
    )
    links = "".join(
        f'<link rel="stylesheet" href="/ui/static/{name}?v={_version(name)}">'
        for name in styles
        if has_asset(name)
    )
    body = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)} · dormant</title>
<link rel="stylesheet" href="/ui/static/console.css?v={_version("console.css")}">
{links}<link rel="icon" href="/ui/static/favicon.svg">
</head><body>
<header class="bar"><a class="brand" href="/ui">dormant</a><nav>{nav}</nav>
<span class="who" id="who"></span>
<button type="button" id="signout" class="link" hidden>Sign out</button></header>
<section id="signin" class="signin" hidden>
<h1>Sign in</h1>
<form id="signin-form" autocomplete="off">
<label for="signin-key">API key</label>
<input id="signin-key" name="key" type="password" required maxlength="200"
 placeholder="dk_…" autocomplete="current-password">
<button type="submit">Sign in</button>
<p class="error" id="signin-error" role="alert"></p>
</form>
<p class="hint">The key is exchanged for a browser session; it is not stored in the page.</p>
</section>
<main id="main" hidden>{main}</main>
<dialog id="confirm"><form method="dialog">
<p id="confirm-text"></p><div id="confirm-extra"></div>
<menu><button value="cancel" type="submit" class="secondary">Cancel</button>
<button value="ok" type="submit" id="confirm-ok">Confirm</button></menu>
</form></dialog>
<div id="toast" role="status" aria-live="polite"></div>
{tags}
</body></html>"""
    headers = {**security_headers(frame_src), "Cache-Control": "no-store"}
    return HTMLResponse(body, headers=headers)


def _version(name: str) -> str:
    found = asset(name)
    return found.etag.strip('"')[:8] if found is not None else "0"


SESSIONS_MAIN = """
<div class="head"><h1>Sessions</h1><span id="total" class="muted"></span>
<span id="live" class="live" title="changes are pushed as they happen">connecting…</span></div>
<form id="filters" class="filters" role="search">
<input id="q" type="search" placeholder="Search user, id or name" maxlength="200"
 aria-label="Search">
<select id="f-state" aria-label="State"><option value="">any state</option></select>
<select id="f-level" aria-label="Level"><option value="">any level</option></select>
<select id="f-template" aria-label="Template"><option value="">any template</option></select>
<select id="f-tenant" aria-label="Tenant"><option value="">any tenant</option></select>
</form>
<div class="table-scroll" id="table-scroll">
<table id="sessions" class="sessions"><thead><tr>
<th data-sort="user">User</th><th data-sort="tenant">Tenant</th>
<th data-sort="template">Template</th><th data-sort="state">State</th>
<th data-sort="level">Level</th><th data-sort="connections">Conns</th>
<th data-sort="activity">Last activity</th><th data-sort="next">Next action</th>
<th>URL</th><th>Actions</th></tr></thead><tbody></tbody></table>
<p id="empty" class="muted" hidden>No sessions match.</p>
</div>
<nav class="pager" aria-label="Pages">
<button type="button" id="prev" class="secondary">&lsaquo; Prev</button>
<span id="pageinfo"></span><button type="button" id="next" class="secondary">Next &rsaquo;</button>
<select id="per-page" aria-label="Rows per page"><option>25</option><option selected>50</option>
<option>100</option><option>200</option></select></nav>
"""

SESSION_MAIN = """
<p class="crumbs"><a href="/ui">Sessions</a> &rsaquo; <span id="sid"></span></p>
<div class="head"><h1 id="title">Session</h1><span id="s-state" class="state"></span>
<span id="live" class="live">connecting…</span></div>
<p id="why" class="why"></p>
<div id="actions" class="actions"></div>
<div class="grid">
<section class="card"><h2>Session</h2><dl id="facts" class="facts"></dl></section>
<section class="card"><h2>Connections</h2><dl id="presence" class="facts"></dl>
<ul id="participants" class="plain"></ul></section>
<section class="card"><h2>Policy in effect</h2><dl id="policy" class="facts"></dl></section>
<section class="card" id="usage" data-session="{sid}"><h2>Usage</h2>
{usage}</section>
</div>
<section class="card"><h2>Preview</h2>
<div class="preview-bar"><button type="button" id="preview-open">Open preview</button>
<span class="devices" role="group" aria-label="Preview width">
<button type="button" data-width="100%" class="secondary" aria-pressed="true">Desktop</button>
<button type="button" data-width="768px" class="secondary">Tablet</button>
<button type="button" data-width="390px" class="secondary">Mobile</button></span>
<span id="preview-note" class="muted"></span></div>
<div class="preview-frame"><iframe id="preview" title="Session preview"
 sandbox="allow-scripts allow-forms allow-same-origin allow-popups" referrerpolicy="no-referrer"
 hidden></iframe></div></section>
<section class="card"><h2>Timeline</h2><div class="table-scroll">
<table id="timeline" class="timeline"><thead><tr><th>When</th><th>What</th><th>Change</th>
<th>Reason</th></tr></thead><tbody></tbody></table></div></section>
"""

NO_OVERVIEW = '<p class="muted">The overview is not available in this console.</p>'
NO_USAGE = '<p class="muted">Live CPU and memory are not available in this console.</p>'

OVERVIEW_MAIN = """
<div class="head"><h1>Overview</h1></div>
<section id="overview" class="overview">{overview}</section>
"""


def pages_router(frame_src: str | None) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/ui")
    @router.get("/ui/")
    async def sessions_page() -> HTMLResponse:
        return render_page("Sessions", SESSIONS_MAIN, ["sessions.js"], active="sessions")

    @router.get("/ui/sessions/{session_id}")
    async def session_page(session_id: SessionId) -> HTMLResponse:
        usage = "" if has_asset("usage.js") else NO_USAGE
        main = SESSION_MAIN.replace("{sid}", html.escape(session_id)).replace("{usage}", usage)
        return render_page(
            f"Session {session_id}", main, ["session.js", "usage.js"], frame_src=frame_src
        )

    @router.get("/ui/overview")
    async def overview_page() -> HTMLResponse:
        missing = "" if has_asset("overview.js") else NO_OVERVIEW
        main = OVERVIEW_MAIN.replace("{overview}", missing)
        return render_page("Overview", main, ["overview.js"], active="overview")

    @router.get("/ui/static/{name:path}")
    async def static(name: Annotated[str, Path(max_length=100)]) -> Response:
        found = asset(name)
        if found is None:
            raise NotFound(f"no console asset {name[:100]!r}")
        return Response(
            found.body,
            media_type=found.media_type,
            headers={
                **security_headers(),
                "Cache-Control": "public, max-age=300",
                "ETag": found.etag,
            },
        )

    return router
