"""A backend for the example page: it owns the API key, creates a session, and hands the
browser short-lived gateway tokens (the browser never sees the API key).

    python examples/demo.py --dormant http://127.0.0.1:8080 --key "$(cat dormant-admin.key)"

prints one JSON line ``{"url": ..., "session_id": ...}``; open the url. Serves:

- ``/``         the example page (``index.html``), which loads ``/static/dormant.js`` from dormant;
- ``/config``   ``{dormant_url, session_id}``;
- ``/token``    ``{token, expires_at}``: a fresh token for the session, minted with the API key.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from dormant.client import ApiError, Client

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dormant", default=os.environ.get("DORMANT_URL", "http://127.0.0.1:8080"))
    parser.add_argument("--key", default=os.environ.get("DORMANT_API_KEY"), help="an API key")
    parser.add_argument("--user", default="alice", help="the session's user")
    parser.add_argument("--name", default=None, help="the participant name shown in presence")
    parser.add_argument("--session", default=None, help="use this session instead of a new one")
    parser.add_argument(
        "--policy", default=None, help='policy overrides as JSON, e.g. {"sleep_after": "5m"}'
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args(argv)
    if not args.key:
        parser.error("--key (or DORMANT_API_KEY) is required")

    try:
        policy = json.loads(args.policy) if args.policy else None
    except ValueError as exc:
        parser.error(f"--policy is not JSON: {exc}")
    client = Client(args.dormant, args.key)
    try:
        session_id = args.session or client.create_session(args.user, policy=policy)["id"]
    except ApiError as exc:
        print(f"dormant refused: {exc}", file=sys.stderr)
        return 1
    config = {"dormant_url": client.url, "session_id": session_id}

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, directory=str(HERE), **kw)

        def do_GET(self) -> None:
            if self.path == "/config":
                self._json(200, config)
            elif self.path == "/token":
                try:
                    token = client.token(session_id, name=args.name)
                except ApiError as exc:
                    self._json(exc.status, {"error": {"code": exc.code, "message": exc.message}})
                    return
                self._json(200, {"token": token.token, "expires_at": token.expires_at.isoformat()})
            elif self.path in ("/", "/index.html"):
                self.path = "/index.html"
                super().do_GET()
            else:
                self._json(404, {"error": {"code": "not_found", "message": "not here"}})

        def _json(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *values: Any) -> None:
            pass

    httpd = ThreadingHTTPServer((args.host, args.port), Handler)
    host, port = httpd.server_address[:2]
    print(json.dumps({"url": f"http://{host}:{port}/", "session_id": session_id}), flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
