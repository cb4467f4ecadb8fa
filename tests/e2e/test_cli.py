"""The CLI against a real ``dormant serve``: JSON that is the API's objects, tables that cut
nothing, every session command, errors as ``error: <message>`` (or the error object in JSON
mode), and DORMANT_URL with a trailing ``/v1`` or a wrong path."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .conftest import Server

pytestmark = pytest.mark.e2e

LONG_USER = "grace.hopper-the-admiral@example.org"  # 36 characters: ls used to cut at 14


def cli_json(server: Server, *args: str, **env: str) -> Any:
    result = server.cli(*args, "--json", **env)
    return json.loads(result.stdout)


def test_create_ls_show_and_policy_as_json_and_tables(server: Server) -> None:
    made = cli_json(
        server,
        "sessions",
        "create",
        "--user",
        LONG_USER,
        "--label",
        "team=ml",
        "-l",
        "stage=dev",
        "--policy",
        "sleep_after=30m",
        "--wait",
        "30",
    )
    sid = made["id"]
    assert made["state"] == "running"
    assert made["user_id"] == LONG_USER
    assert {k: v for k, v in made["labels"].items() if not k.startswith("dormant.")} == {
        "team": "ml",
        "stage": "dev",
    }
    resolved = cli_json(server, "sessions", "policy", sid)
    assert resolved["session_id"] == sid
    assert resolved["values"]["sleep_after"] == 1800
    assert resolved["values"]["delete_after"] == 86400

    listed = cli_json(server, "sessions", "ls", "--label", "team=ml")
    assert [s["id"] for s in listed["items"]] == [sid]
    assert cli_json(server, "sessions", "ls", "--label", "team=web") == {"items": []}
    api = server.session(sid)
    assert api is not None

    table = server.cli("sessions", "ls").stdout.splitlines()
    header = table[0].split()
    assert header[:5] == ["ID", "TENANT", "USER", "TEMPLATE", "STATE"]
    assert header[-2:] == ["URL", "WHY"]
    row = table[1]
    assert row.split()[:5] == [sid, "default", LONG_USER, "default", "running"]
    assert api["url"] and api["url"] in row.split()
    # the WHY column is the server's two-part reason (its countdown moves between the calls)
    happened, _, _ = api["why"].partition("; ")
    assert happened.startswith("running since") and f"{happened}; sleeps in " in row

    shown = server.cli("sessions", "show", sid).stdout
    fields = dict(line.split(":", 1) for line in shown.split("\n\n")[0].splitlines())
    assert fields["user"].strip() == LONG_USER
    assert fields["labels"].strip().startswith("team=ml, stage=dev")
    assert "sleep_after" not in shown  # the policy is its own command
    assert "create requested by key" in shown

    as_json = cli_json(server, "sessions", "show", sid)
    assert as_json["session"]["id"] == sid
    assert [e["to_state"] for e in as_json["events"][:3]] == ["creating", "starting", "running"]


def test_named_create_gets_the_same_session(server: Server) -> None:
    first = cli_json(server, "sessions", "create", "--user", "nina", "--name", "work")
    again = cli_json(server, "sessions", "create", "--user", "nina", "--name", "work")
    other = cli_json(server, "sessions", "create", "--user", "nina", "--name", "scratch")
    assert again["id"] == first["id"] and first["name"] == "work"
    assert other["id"] != first["id"]
    listed = cli_json(server, "sessions", "ls", "--user", "nina", "--name", "work")
    assert [s["id"] for s in listed["items"]] == [first["id"]]


def test_session_actions(server: Server) -> None:
    sid = cli_json(server, "sessions", "create", "--user", "otto", "--wait", "30")["id"]

    noted = server.cli("sessions", "activity", sid, "command").stdout.strip()
    assert noted == f"activity command recorded for {sid} (running)"
    current = server.session(sid)
    assert current is not None and current["last_activity"]["kind"] == "command"

    kept = cli_json(server, "sessions", "keepalive", sid, "--for", "2h")
    until = datetime.fromisoformat(kept["keepalive_until"].replace("Z", "+00:00"))
    created = datetime.fromisoformat(current["created_at"].replace("Z", "+00:00"))
    assert timedelta(hours=2) <= until - created < timedelta(hours=2, minutes=5)
    busy = server.cli("sessions", "busy", sid, "--until", "2000-01-01T00:00:00Z", check=False)
    assert busy.returncode == 1
    assert busy.stderr.startswith("error: "), busy.stderr
    later = (until - timedelta(minutes=30)).isoformat()
    assert cli_json(server, "sessions", "busy", sid, "--until", later)["busy_until"]
    missing = server.cli("sessions", "keepalive", sid, check=False)
    assert missing.returncode == 1
    assert "give either --for DURATION or --until TIME" in missing.stderr

    token = server.cli("sessions", "token", sid, "--name", "Otto").stdout.strip()
    assert token.count(".") == 2  # a JWT, alone on stdout
    link = server.cli("sessions", "link", sid, "--ttl", "60").stdout.strip()
    assert link.startswith(f"{server.proxy_url}/") and "dormant_token=" in link

    timeline = cli_json(server, "sessions", "events", sid)
    assert timeline["session_id"] == sid
    codes = [e["code"] for e in timeline["items"]]
    assert "keepalive" in codes and "busy" in codes, codes
    text = server.cli("sessions", "events", sid).stdout
    assert "keepalive until" in text and "requested by key" in text

    logout = cli_json(server, "sessions", "logout", "otto")
    assert logout == {"user_id": "otto", "deleted": [sid]}
    server.wait_gone(sid)


def test_show_of_a_deleted_session_prints_its_timeline(server: Server) -> None:
    sid = server.cli("sessions", "create", "--user", "dora", "--wait", "30").stdout.split()[0]
    assert server.cli("sessions", "rm", sid).stdout.strip() == f"delete requested for {sid}"
    server.wait_gone(sid)
    shown = server.cli("sessions", "show", sid)
    lines = shown.stdout.splitlines()
    assert lines[0] == f"session {sid} is deleted; its timeline:"
    assert lines[1].split() == ["AT", "EVENT", "CODE", "REASON"]
    assert "deleting -> deleted" in lines[-1]
    assert "delete requested by key" in shown.stdout
    as_json = cli_json(server, "sessions", "show", sid)
    assert as_json["session"] is None
    assert as_json["events"][-1]["to_state"] == "deleted"


def test_templates_policies_and_stats(server: Server) -> None:
    templates = cli_json(server, "templates")["items"]
    assert [t["name"] for t in templates] == ["default"]
    assert templates[0]["runtime"] == "process"
    policies = {p["name"]: p["values"] for p in cli_json(server, "policies")["items"]}
    assert policies["balanced"]["sleep_after"] == 900
    assert policies["aggressive"]["sleep_after"] == 300
    table = server.cli("policies").stdout.splitlines()
    assert table[0].split()[0] == "SETTING" and "balanced" in table[0].split()
    sleep_row = next(line.split() for line in table if line.startswith("sleep_after "))
    names = table[0].split()[1:]
    assert sleep_row[1 + names.index("balanced")] == "15m"

    server.cli("sessions", "create", "--user", "sam", "--wait", "30")
    stats = cli_json(server, "stats")
    assert stats["sessions_by_state"].get("running") == 1
    rows = [line.split() for line in server.cli("stats").stdout.splitlines()]
    assert ["state", "running", "1"] in rows


def test_errors_and_addresses(server: Server) -> None:
    refused = server.cli("sessions", "create", "--user", "eve", "--env", "FOO=bar", check=False)
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: ") and "FOO" in refused.stderr
    as_json = server.cli(
        "sessions", "create", "--user", "eve", "--env", "FOO=bar", "--json", check=False
    )
    assert as_json.returncode == 1 and as_json.stdout == ""
    error = json.loads(as_json.stderr)["error"]
    assert error["code"] == "invalid" and "FOO" in error["message"]
    unknown = server.cli("sessions", "show", "nope", "-o", "json", check=False)
    assert json.loads(unknown.stderr) == {
        "error": {"code": "not_found", "message": "session nope not found"}
    }
    bad_pair = server.cli("sessions", "create", "--user", "eve", "--label", "oops", check=False)
    assert "--label 'oops' must look like KEY=VALUE" in bad_pair.stderr

    for url in (f"{server.url}/v1", f"{server.url}/v1/", f"{server.url}/"):
        assert cli_json(server, "stats", DORMANT_URL=url)["sessions_by_state"] is not None
    wrong = server.cli("stats", check=False, DORMANT_URL=f"{server.url}/api")
    assert wrong.returncode == 1
    assert "no such API call (/api/v1/stats)" in wrong.stderr
    assert "must be dormant serve's address, like http://127.0.0.1:8080" in wrong.stderr
    bare = server.cli("stats", check=False, DORMANT_URL=f"127.0.0.1:{server.port}")
    assert bare.returncode == 1 and "is not an address dormant can use" in bare.stderr
    proxy = server.cli("stats", "--json", check=False, DORMANT_URL=server.proxy_url)
    assert proxy.returncode == 1
    assert "DORMANT_URL" in json.loads(proxy.stderr)["error"]["message"]
