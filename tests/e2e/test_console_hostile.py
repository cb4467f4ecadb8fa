"""Issue 12: the console's sign-in refuses what it should. A wrong key is 401 (and counts
against the failed-key limiter), a forged, expired or revoked sign-in is 401, a state change
without the CSRF header or from another site is 403, another tenant's session is 404, and the
pages say what may run in them (CSP)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from dormant.api.console.signin import COOKIE, CookieAuth
from tests.e2e.conftest import Server

pytestmark = pytest.mark.e2e


@contextmanager
def console(server: Server, key: str) -> Iterator[tuple[httpx.Client, dict[str, Any]]]:
    """A client signed in to the console with ``key`` (the cookie in its jar), and ``me``."""
    with httpx.Client(base_url=server.url, timeout=30.0) as client:
        response = client.post("/ui/api/signin", json={"key": key})
        assert response.status_code == 200, response.text
        yield client, response.json()


def error_of(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    return str(body["error"]["message"])


def test_sign_in_sets_a_strict_httponly_cookie_bound_to_the_key(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=30.0) as client:
        response = client.post("/ui/api/signin", json={"key": server.key})
        assert response.status_code == 200, response.text
        cookie = response.headers["set-cookie"]
        assert cookie.startswith(f"{COOKIE}=")
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
        assert "Secure" not in cookie  # plain http here; https would add it
        me = response.json()
        assert me["admin"] is True and me["key_id"] == server.key.split("_")[1]
        assert len(me["csrf"]) >= 32
        # Over https (here: a TLS terminator on loopback, which uvicorn trusts) it is Secure.
        https = httpx.post(
            f"{server.url}/ui/api/signin",
            json={"key": server.key},
            headers={"X-Forwarded-Proto": "https"},
        )
        assert https.status_code == 200 and "Secure" in https.headers["set-cookie"]
        # The cookie alone reads the REST API, scoped like the key.
        assert client.get("/v1/sessions").status_code == 200
        assert client.get("/ui/api/me").json()["csrf"] == me["csrf"]
        # Signing out clears it.
        out = client.post("/ui/api/signout")
        assert out.status_code == 200
        assert (
            f'{COOKIE}=""' in out.headers["set-cookie"] or "Max-Age=0" in out.headers["set-cookie"]
        )
        client.cookies.clear()
        error_of(client.get("/ui/api/me"), 401, "unauthorized")


def test_wrong_keys_are_401_and_count_against_the_address(server_factory: Any) -> None:
    server = server_factory(DORMANT_AUTH_FAILURE_LIMIT="3")
    with httpx.Client(base_url=server.url, timeout=30.0) as client:
        message = error_of(
            client.post("/ui/api/signin", json={"key": "dk_00_nope"}), 401, "unauthorized"
        )
        assert "invalid API key" in message
        error_of(client.post("/ui/api/signin", json={"key": "nonsense"}), 401, "unauthorized")
        # The REST API and the sign-in share one failed-key limiter per address.
        error_of(
            client.get("/v1/sessions", headers={"X-API-Key": "dk_01_nope"}), 401, "unauthorized"
        )
        error_of(client.post("/ui/api/signin", json={"key": "dk_02_nope"}), 429, "rate_limited")
        error_of(client.post("/ui/api/signin", json={}), 422, "invalid_request")
        assert "set-cookie" not in client.post("/ui/api/signin", json={"key": "x"}).headers


def test_forged_expired_and_revoked_sign_ins_are_401(server: Server) -> None:
    acme = server.cli("keys", "create", "--tenant", "acme").stdout.strip().split()[-1]
    acme_id = acme.split("_")[1]
    secret = (Path(server.home) / "dormant-gateway.secret").read_text().strip()
    with httpx.Client(base_url=server.url, timeout=30.0) as client:
        for forged in ("abc.def", "", "x" * 600):
            client.cookies.set(COOKIE, forged)
            error_of(client.get("/v1/sessions"), 401, "unauthorized")
        # Signed with the right secret but expired: refused.
        auth = CookieAuth(secret, _no_lookup, 60, clock=lambda: time.time() - 3600)
        expired, _ = auth.issue(acme_id)
        client.cookies.set(COOKIE, expired)
        assert "expired" in error_of(client.get("/ui/api/me"), 401, "unauthorized")
        # Signed with another secret: refused.
        other, _ = CookieAuth("another secret", _no_lookup, 60).issue(acme_id)
        client.cookies.set(COOKIE, other)
        error_of(client.get("/v1/sessions"), 401, "unauthorized")
    with console(server, acme) as (client, me):
        assert me["tenant"] == "acme" and me["admin"] is False
        assert client.get("/v1/sessions").status_code == 200
        server.cli("keys", "revoke", acme_id)
        assert "revoked" in error_of(client.get("/v1/sessions"), 401, "unauthorized")
        error_of(client.get("/ui/api/sessions"), 401, "unauthorized")


async def _no_lookup(key_id: str) -> None:
    return None


def test_state_changes_need_the_csrf_header_and_the_same_site(server: Server) -> None:
    sid = server.create("carol")["id"]
    server.wait_state(sid, "running")
    with console(server, server.key) as (client, me):
        path = f"/v1/sessions/{sid}/sleep"
        error_of(client.post(path), 403, "forbidden")
        error_of(client.post(path, headers={"X-CSRF-Token": "not-it"}), 403, "forbidden")
        error_of(client.delete(f"/v1/sessions/{sid}"), 403, "forbidden")
        csrf = {"X-CSRF-Token": me["csrf"]}
        cross = {**csrf, "Sec-Fetch-Site": "cross-site"}
        error_of(client.post(path, headers=cross), 403, "forbidden")
        error_of(
            client.get("/v1/sessions", headers={"Sec-Fetch-Site": "cross-site"}), 403, "forbidden"
        )
        unchanged = server.session(sid)
        assert unchanged is not None and unchanged["state"] == "running"  # nothing happened
        assert client.post(path, headers=csrf).status_code == 202
        server.wait_state(sid, "sleeping")
        # Reads need no token; a sign-in from another origin is refused.
        assert client.get(f"/v1/sessions/{sid}").status_code == 200
        response = client.post(
            "/ui/api/signin", json={"key": server.key}, headers={"Origin": "https://evil.example"}
        )
        error_of(response, 403, "forbidden")


def test_a_tenant_sees_only_its_own_sessions(server: Server) -> None:
    theirs = server.create("dave")["id"]
    acme = server.cli("keys", "create", "--tenant", "acme").stdout.strip().split()[-1]
    mine = server.client(acme).post("/v1/sessions", json={"user_id": "erin"}).json()["id"]
    with console(server, acme) as (client, me):
        csrf = {"X-CSRF-Token": me["csrf"]}
        error_of(client.get(f"/v1/sessions/{theirs}"), 404, "not_found")
        error_of(client.get(f"/v1/sessions/{theirs}/events"), 404, "not_found")
        error_of(client.post(f"/v1/sessions/{theirs}/sleep", headers=csrf), 404, "not_found")
        error_of(client.get(f"/ui/api/sessions/{theirs}/presence"), 404, "not_found")
        table = client.get("/ui/api/sessions").json()
        assert [s["id"] for s in table["items"]] == [mine]
        assert table["total"] == 1 and table["facets"]["tenants"] == ["acme"]
        # Asking for another tenant's rows finds none rather than leaking them.
        assert client.get("/ui/api/sessions", params={"tenant": "default"}).json()["total"] == 0
    with console(server, server.key) as (client, _):
        everything = client.get("/ui/api/sessions", params={"sort": "user", "order": "asc"}).json()
        assert [s["user_id"] for s in everything["items"]] == ["dave", "erin"]


def test_pages_and_bad_queries(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=30.0) as client:
        page = client.get("/ui")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        csp = page.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert page.headers["x-content-type-options"] == "nosniff"
        session_page = client.get("/ui/sessions/abc123")
        assert f"frame-src {server.proxy_url}" in session_page.headers["content-security-policy"]
        assert client.get("/ui/static/console.css").headers["content-type"].startswith("text/css")
        error_of(client.get("/ui/static/..%2Fsignin.py"), 404, "not_found")
        error_of(client.get("/ui/static/nope.js"), 404, "not_found")
        error_of(client.get("/ui/sessions/a%3Cb"), 422, "invalid_request")
        error_of(client.get("/ui/api/sessions"), 401, "unauthorized")
    with console(server, server.key) as (client, _):
        error_of(client.get("/ui/api/sessions", params={"sort": "x"}), 422, "invalid")
        error_of(client.get("/ui/api/sessions", params={"state": "x"}), 422, "invalid")
        error_of(client.get("/ui/api/sessions", params={"per_page": "999"}), 422, "invalid_request")
