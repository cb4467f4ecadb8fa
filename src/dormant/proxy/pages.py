"""What the proxy answers itself: the waiting page (no external asset: inline style and script)
and errors, as HTML for browsers and ``{"error": {"code", "message"}}`` for everything else."""

from __future__ import annotations

import html
import json
from http import HTTPStatus

from dormant.proxy.http1 import Request


def reason(status: int) -> str:
    """The standard reason phrase (dormant writes its own; a session's is never passed on)."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def wants_html(request: Request | None) -> bool:
    if request is None:
        return False
    return "text/html" in (request.head.get("accept") or "")


def is_navigation(request: Request) -> bool:
    """A browser opening a page (not a script's fetch): a GET that accepts HTML."""
    if request.method != "GET" or not wants_html(request):
        return False
    mode = request.head.get("sec-fetch-mode")
    return mode in (None, "navigate")


def error_body(request: Request | None, status: int, code: str, message: str) -> tuple[str, bytes]:
    """``(content type, body)`` of an error answer."""
    if wants_html(request):
        page = _ERROR.format(
            status=status, title=html.escape(reason(status)), message=html.escape(message)
        )
        return "text/html; charset=utf-8", page.encode()
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    return "application/json", body


def waiting_page(session_id: str, events_path: str, state: str) -> bytes:
    return (
        _WAITING.replace("{{session}}", html.escape(session_id))
        .replace("{{events}}", json.dumps(events_path))
        .replace("{{state}}", html.escape(state))
        .encode()
    )


_ERROR = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1"><title>{status} {title}</title>
<style>body{{font:16px system-ui,sans-serif;margin:0;display:grid;place-items:center;
min-height:100vh;background:#f6f7f9;color:#222}}main{{max-width:32rem;padding:2rem}}
h1{{font-size:1.3rem}}</style></head><body><main><h1>{status} {title}</h1><p>{message}</p>
</main></body></html>"""

_WAITING = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>Waking your session…</title>
<style>
body{font:16px system-ui,sans-serif;margin:0;display:grid;place-items:center;min-height:100vh;
background:#f6f7f9;color:#222}
main{max-width:30rem;padding:2rem;text-align:center}
.bar{height:6px;background:#dde1e7;border-radius:3px;overflow:hidden;margin:1.2rem 0}
.bar i{display:block;height:100%;width:8%;background:#3b6fd8;transition:width .4s}
#detail{color:#666;font-size:.9rem}
.failed .bar i{background:#c33}
</style></head>
<body><main id="box">
<h1>Waking your session</h1>
<div class="bar"><i id="bar"></i></div>
<p id="status" data-state="{{state}}">The session was asleep; it is starting.</p>
<p id="detail"></p>
<noscript>Reload this page in a few seconds.</noscript>
</main>
<script>
(function () {
  var steps = {sleeping: 10, stopping: 10, starting: 45, creating: 30, running: 100};
  var started = Date.now();
  var status = document.getElementById("status"), detail = document.getElementById("detail");
  var bar = document.getElementById("bar");
  function show(state, text) {
    status.dataset.state = state;
    status.textContent = text;
    bar.style.width = (steps[state] || 50) + "%";
  }
  function tick() {
    detail.textContent = Math.round((Date.now() - started) / 1000) + " s";
  }
  var timer = setInterval(tick, 1000);
  var source = new EventSource({{events}});
  source.addEventListener("state", function (e) {
    var d = JSON.parse(e.data);
    show(d.state, d.message);
  });
  source.addEventListener("ready", function () {
    show("running", "Ready: loading your session…");
    source.close(); clearInterval(timer);
    location.reload();
  });
  source.addEventListener("failed", function (e) {
    var d = JSON.parse(e.data);
    document.getElementById("box").className = "failed";
    show("failed", "The session could not be started: " + d.message);
    source.close(); clearInterval(timer);
  });
})();
</script>
</body></html>"""
