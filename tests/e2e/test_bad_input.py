"""Bad input gets a clear JSON error with the right status, and changes nothing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx
import pytest

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.e2e.conftest import Server

pytestmark = pytest.mark.e2e

BIG = 70 * 1024  # over the default 64 KB body limit
JSON = {"content-type": "application/json"}


class World:
    """The shared server, a running session of tenant ``default``, and other keys."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.sid = server.create("victim", labels={"team": "blue"})["id"]
        self.port = server.wait_state(self.sid, "running")["port"]
        self.other_key = server.cli("keys", "create", "--tenant", "other").stdout.strip()

    def snapshot(self) -> dict[str, Any]:
        """Everything a bad request must leave alone."""
        sessions = {
            s["id"]: {
                k: s[k]
                for k in (
                    "state",
                    "user_id",
                    "port",
                    "labels",
                    "last_activity",
                    "last_seen_at",
                    "keepalive_until",
                    "busy_until",
                )
            }
            for s in self.server.all_sessions()
        }
        stats = self.server.client().get("/v1/stats").json()
        events = self.server.client().get(f"/v1/sessions/{self.sid}/events").json()["items"]
        return {
            "sessions": sessions,
            "by_state": stats["sessions_by_state"],
            "events": len(events),
            "processes": sorted(self.server.marked()),
            "dirs": sorted(p.name for p in self.server.runtime_root.iterdir()),
        }


@pytest.fixture(scope="module")
def world(module_server: Server) -> World:
    return World(module_server)


@pytest.fixture
def unchanged(world: World) -> Iterator[World]:
    """Asserts that the test left sessions, timelines, processes and directories alone."""
    before = world.snapshot()
    yield world
    assert world.snapshot() == before


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error["code"], str) and error["code"], body
    assert isinstance(error["message"], str) and error["message"].strip(), body
    if code is not None:
        assert error["code"] == code, body
    assert "Traceback" not in response.text
    return str(error["message"])


# --- authentication and tenants ------------------------------------------------------------


def test_missing_and_wrong_keys(unchanged: World) -> None:
    server = unchanged.server
    admin_id = server.key.split("_")[1]
    anonymous = server.client(auth=False)
    message = assert_error(anonymous.get("/v1/sessions"), 401, "unauthorized")
    assert "X-API-Key" in message
    assert_error(anonymous.post("/v1/sessions", json={"user_id": "x"}), 401, "unauthorized")
    assert_error(anonymous.delete(f"/v1/sessions/{unchanged.sid}"), 401, "unauthorized")
    for wrong in (
        "garbage",
        "dk_000000000000_nope",
        f"dk_{admin_id}_not-the-secret",
        server.key + "x",
        "dk_" + "a" * 300,
    ):
        client = server.client(wrong)
        assert_error(client.get("/v1/sessions"), 401, "unauthorized")
        assert_error(client.post(f"/v1/sessions/{unchanged.sid}/sleep"), 401, "unauthorized")
        assert_error(client.delete(f"/v1/sessions/{unchanged.sid}"), 401, "unauthorized")


def test_revoked_key(unchanged: World) -> None:
    server = unchanged.server
    key = server.cli("keys", "create", "--tenant", "revokee").stdout.strip()
    key_id = key.split("_")[1]
    client = server.client(key)
    assert client.get("/v1/sessions").status_code == 200

    result = server.cli("keys", "revoke", key_id)
    assert f"revoked {key_id}" in result.stdout
    message = assert_error(client.get("/v1/sessions"), 401, "unauthorized")
    assert "revoked" in message
    assert_error(client.post("/v1/sessions", json={"user_id": "x"}), 401, "unauthorized")

    again = server.cli("keys", "revoke", key_id, check=False)
    assert again.returncode == 1
    assert "no active key" in again.stderr
    assert "Traceback" not in again.stderr


def test_other_tenants_session_is_not_found(unchanged: World) -> None:
    client = unchanged.server.client(unchanged.other_key)
    sid = unchanged.sid
    until = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    calls: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", f"/v1/sessions/{sid}", {}),
        ("GET", f"/v1/sessions/{sid}/events", {}),
        ("POST", f"/v1/sessions/{sid}/sleep", {}),
        ("POST", f"/v1/sessions/{sid}/wake", {}),
        ("POST", f"/v1/sessions/{sid}/activity", {"json": {"kind": "command"}}),
        ("POST", f"/v1/sessions/{sid}/keepalive", {"json": {"until": until}}),
        ("POST", f"/v1/sessions/{sid}/busy", {"json": {"until": until}}),
        ("DELETE", f"/v1/sessions/{sid}", {}),
    ]
    for method, path, kwargs in calls:
        assert_error(client.request(method, path, **kwargs), 404, "not_found")
    listing = client.get("/v1/sessions")
    assert listing.status_code == 200
    assert listing.json() == {"items": [], "next_cursor": None}
    assert client.post("/v1/users/victim/logout").json()["deleted"] == []
    assert sum(client.get("/v1/stats").json()["sessions_by_state"].values()) == 0


# --- bodies, parameters, paths -------------------------------------------------------------

SID = "{sid}"


def case(
    name: str,
    method: str,
    path: str,
    kwargs: dict[str, Any],
    status: int,
    code: str,
    words: list[str],
    marks: Any = (),
) -> Any:
    """One bad request: what to send, the status and code expected, and words the message
    must contain."""
    return pytest.param(method, path, kwargs, status, code, words, id=name, marks=marks)


# fmt: off
_CASES = [
    case("unknown-template", "POST", "/v1/sessions",
         {"json": {"user_id": "u", "template": "nope"}}, 422, "invalid", ["template", "nope"]),
    case("negative-sleep-after", "POST", "/v1/sessions",
         {"json": {"user_id": "u", "policy": {"sleep_after": -5}}}, 422, "invalid",
         ["sleep_after"]),
    case("absurd-sleep-after", "POST", "/v1/sessions",
         {"json": {"user_id": "u", "policy": {"sleep_after": "999d"}}}, 422, "invalid",
         ["sleep_after"]),
    case("unreadable-duration", "POST", "/v1/sessions",
         {"json": {"user_id": "u", "policy": {"delete_after": "soon"}}}, 422, "invalid",
         ["delete_after"]),
    case("infinite-duration", "POST", "/v1/sessions",
         {"content": '{"user_id": "u", "policy": {"sleep_after": 1e999}}', "headers": JSON},
         422, "invalid", ["sleep_after"]),
    case("huge-integer-duration", "POST", "/v1/sessions",
         {"content": '{"user_id": "u", "policy": {"sleep_after": 1' + "0" * 400 + "}}",
          "headers": JSON}, 422, "invalid", ["sleep_after"]),
    case("warn-not-before-sleep", "POST", "/v1/sessions",
         {"json": {"user_id": "u", "policy": {"sleep_after": "5m", "warn_before": "10m"}}},
         422, "invalid", ["warn_before"]),
    case("unknown-policy-setting", "POST", "/v1/sessions",
         {"json": {"user_id": "u", "policy": {"sleep_soon": 1}}}, 422, "invalid",
         ["sleep_soon"]),
    case("bool-policy-value", "POST", "/v1/sessions",
         {"json": {"user_id": "u", "policy": {"sleep_after": True}}}, 422, "invalid",
         ["sleep_after"]),
    case("policy-not-object", "POST", "/v1/sessions",
         {"json": {"user_id": "u", "policy": [1]}}, 422, "invalid_request", ["policy"]),
    case("malformed-json", "POST", "/v1/sessions",
         {"content": '{"user_id": ', "headers": JSON}, 422, "malformed_json", ["JSON"]),
    case("body-not-utf8", "POST", "/v1/sessions",
         {"content": b'{"user_id": "\xff\xfe"}', "headers": JSON}, 422, "malformed_json",
         ["JSON", "UTF-8"]),
    case("json-3000-deep", "POST", "/v1/sessions",
         {"content": "[" * 3000 + "]" * 3000, "headers": JSON}, 422, "malformed_json",
         ["JSON", "nested too deeply"]),
    case("token-ttl-bool", "POST", f"/v1/sessions/{SID}/tokens",
         {"content": '{"ttl": true}', "headers": JSON}, 422, "invalid_request", ["ttl"]),
    case("token-ttl-string", "POST", f"/v1/sessions/{SID}/tokens",
         {"content": '{"ttl": "600"}', "headers": JSON}, 422, "invalid_request", ["ttl"]),
    case("token-ttl-tiny", "POST", f"/v1/sessions/{SID}/tokens",
         {"content": '{"ttl": 1e-300}', "headers": JSON}, 422, "invalid_request",
         ["ttl", "greater than or equal to 1"]),
    case("unknown-field", "POST", "/v1/sessions",
         {"json": {"user_id": "u", "colour": "red"}}, 422, "unknown_field", ["colour"]),
    case("missing-user", "POST", "/v1/sessions",
         {"json": {}}, 422, "invalid_request", ["user_id"]),
    case("bad-user-id", "POST", "/v1/sessions",
         {"json": {"user_id": "../../etc"}}, 422, "invalid_request", ["user_id"]),
    case("body-not-object", "POST", "/v1/sessions",
         {"json": [1, 2]}, 422, "invalid_request", []),
    case("huge-body", "POST", "/v1/sessions",
         {"json": {"user_id": "u", "labels": {"big": "x" * BIG}}}, 413, "payload_too_large",
         ["larger"]),
    case("huge-body-chunked", "POST", "/v1/sessions",
         {"content": iter([b'{"user_id": "u", "labels": {"big": "', b"x" * BIG, b'"}}']),
          "headers": JSON}, 413, "payload_too_large", ["larger"]),
    case("reserved-label", "POST", "/v1/sessions",
         {"json": {"user_id": "u", "labels": {"dormant.session": "x"}}}, 422,
         "invalid_request", ["reserved"]),
    case("bad-label-key", "POST", "/v1/sessions",
         {"json": {"user_id": "u", "labels": {"a b": "x"}}}, 422, "invalid_request", ["label"]),
    case("env-port", "POST", "/v1/sessions",
         {"json": {"user_id": "u", "env": {"PORT": "1"}}}, 422, "invalid", ["PORT", "reserved"]),
    case("env-dormant", "POST", "/v1/sessions",
         {"json": {"user_id": "u", "env": {"DORMANT_RUNTIME_ROOT": "/"}}}, 422,
         "invalid", ["DORMANT_RUNTIME_ROOT", "reserved"]),
    case("env-host-controlled", "POST", "/v1/sessions",
         {"json": {"user_id": "u", "env": {"LD_PRELOAD": "/tmp/x.so"}}}, 422, "invalid",
         ["LD_PRELOAD", "never taken from a request"]),
    case("env-not-allowed", "POST", "/v1/sessions",
         {"json": {"user_id": "u", "env": {"MODE": "x"}}}, 422, "invalid",
         ["MODE", "not allowed by template 'default'"]),
    case("env-bad-name", "POST", "/v1/sessions",
         {"json": {"user_id": "u", "env": {"1X": "1"}}}, 422, "invalid_request", ["env"]),
    case("env-nul", "POST", "/v1/sessions",
         {"json": {"user_id": "u", "env": {"X": "a\u0000b"}}}, 422, "invalid_request", ["NUL"]),
    case("wrong-state-filter", "GET", "/v1/sessions?state=snoozing",
         {}, 422, "invalid", ["state"]),
    case("wrong-level-filter", "GET", "/v1/sessions?level=sleepy",
         {}, 422, "invalid", ["level"]),
    case("zero-limit", "GET", "/v1/sessions?limit=0", {}, 422, "invalid_request", ["limit"]),
    case("huge-limit", "GET", "/v1/sessions?limit=100000",
         {}, 422, "invalid_request", ["limit"]),
    case("long-cursor", "GET", "/v1/sessions?cursor=" + "z" * 100,
         {}, 422, "invalid_request", ["cursor"]),
    case("invalid-activity-kind", "POST", f"/v1/sessions/{SID}/activity",
         {"json": {"kind": "dance"}}, 422, "invalid", ["dance", "command"]),
    case("activity-unknown-field", "POST", f"/v1/sessions/{SID}/activity",
         {"json": {"kind": "command", "by": "me"}}, 422, "unknown_field", ["by"]),
    case("activity-far-future", "POST", f"/v1/sessions/{SID}/activity",
         {"json": {"kind": "command", "at": "2999-01-01T00:00:00Z"}}, 422, "invalid",
         ["future"]),
    case("activity-naive-time", "POST", f"/v1/sessions/{SID}/activity",
         {"json": {"kind": "command", "at": "2020-01-01T00:00:00"}}, 422, "invalid_request",
         ["at"]),
    case("keepalive-missing-until", "POST", f"/v1/sessions/{SID}/keepalive",
         {"json": {}}, 422, "invalid_request", ["until"]),
    case("keepalive-garbage-until", "POST", f"/v1/sessions/{SID}/keepalive",
         {"json": {"until": "tomorrow"}}, 422, "invalid_request", ["until"]),
    case("busy-beyond-bound", "POST", f"/v1/sessions/{SID}/busy",
         {"json": {"until": "2999-01-01T00:00:00Z"}}, 422, "invalid", ["until"]),
    case("unknown-session", "GET", "/v1/sessions/doesnotexist", {}, 404, "not_found", []),
    case("unknown-session-delete", "DELETE", "/v1/sessions/doesnotexist",
         {}, 404, "not_found", []),
    case("unknown-session-wake", "POST", "/v1/sessions/doesnotexist/wake",
         {}, 404, "not_found", []),
    case("unknown-session-activity", "POST", "/v1/sessions/doesnotexist/activity",
         {"json": {"kind": "command"}}, 404, "not_found", []),
    case("unknown-session-events", "GET", "/v1/sessions/doesnotexist/events",
         {}, 404, "not_found", []),
    case("unknown-path", "GET", "/v1/nothing-here", {}, 404, "not_found", []),
    case("wrong-method", "PUT", "/v1/sessions", {"json": {}}, 405, "method_not_allowed", []),
]
# fmt: on


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "code", "words"),
    _CASES,
)
def test_bad_request(
    unchanged: World,
    method: str,
    path: str,
    kwargs: dict[str, Any],
    status: int,
    code: str,
    words: list[str],
) -> None:
    client = unchanged.server.client()
    response = client.request(method, path.replace(SID, unchanged.sid), **kwargs)
    message = assert_error(response, status, code)
    for word in words:
        assert word in message, message


def test_wrong_content_type(unchanged: World) -> None:
    response = unchanged.server.client().post(
        "/v1/sessions",
        content=json.dumps({"user_id": "u"}),
        headers={"content-type": "text/plain"},
    )
    assert_error(response, 422)


# --- limits that need a server of their own ------------------------------------------------


def test_port_exhaustion(server_factory: Callable[..., Server]) -> None:
    server = server_factory(ports=2)
    first, second = server.create("a"), server.create("b")
    for s in (first, second):
        server.wait_state(s["id"], "running")
    assert {first["port"], second["port"]} == set(server.session_ports)
    before = (
        sorted(s["id"] for s in server.all_sessions()),
        sorted(server.marked()),
        sorted(p.name for p in server.runtime_root.iterdir()),
        server.client().get("/v1/stats").json()["sessions_by_state"],
    )

    response = server.client().post("/v1/sessions", json={"user_id": "c"})
    message = assert_error(response, 503, "capacity_exhausted")
    assert "no free port" in message
    assert "DORMANT_PORT_RANGE" in message
    assert response.headers["retry-after"] == "10"
    after = (
        sorted(s["id"] for s in server.all_sessions()),
        sorted(server.marked()),
        sorted(p.name for p in server.runtime_root.iterdir()),
        server.client().get("/v1/stats").json()["sessions_by_state"],
    )
    assert after == before

    # a delete gives the port back
    assert server.client().delete(f"/v1/sessions/{first['id']}").status_code == 202
    server.wait_gone(first["id"])
    server.wait_until(
        lambda: first["id"] in {s["id"] for s in server.all_sessions(state="deleted")},
        what="the delete to finish",
    )
    third = server.create("c")
    assert third["port"] in server.session_ports
    server.wait_state(third["id"], "running")


def test_rate_limit(server_factory: Callable[..., Server]) -> None:
    server = server_factory(DORMANT_RATE_LIMIT="5", DORMANT_RATE_BURST="5")
    other = server.cli("keys", "create", "--tenant", "calm").stdout.strip()

    async def burst() -> list[httpx.Response]:
        async with server.async_client() as client:
            return await asyncio.gather(*(client.get("/v1/sessions") for _ in range(20)))

    responses = asyncio.run(burst())
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 429}, statuses
    assert 200 in statuses
    limited = [r for r in responses if r.status_code == 429]
    assert limited, statuses
    message = assert_error(limited[0], 429, "rate_limited")
    assert "5" in message
    assert int(limited[0].headers["retry-after"]) >= 1
    # the bucket is per key: another key is not limited
    assert server.client(other).get("/v1/sessions").status_code == 200
    # and the limited key gets through again once its bucket refills
    server.wait_until(
        lambda: server.client().get("/v1/sessions").status_code == 200,
        timeout=10,
        interval=0.3,
        what="the bucket to refill",
    )
