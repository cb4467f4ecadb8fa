"""Truthful telemetry through the real server (``dormant serve``): metric values after known
actions, the audit trail in timelines and logs, refusals logged as warnings, two-part reasons,
timelines of deleted sessions, and the configuration read endpoints."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from tests.e2e.conftest import Server, wait_until


def metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    series = f"{name}{{{wanted}}}" if labels else name
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        # labels come in the exporter's order: compare them as sets
        if _same_series(key, series):
            return float(value)
    raise AssertionError(f"{series} not exported")


def _same_series(a: str, b: str) -> bool:
    def parts(s: str) -> tuple[str, frozenset[str]]:
        name, _, rest = s.partition("{")
        return name, frozenset(p for p in rest.rstrip("}").split(",") if p)

    return parts(a) == parts(b)


def log_lines(server: Server) -> list[dict[str, Any]]:
    out = []
    for line in server.logs().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def test_metrics_count_what_happened_and_the_timeline_names_the_actor(server: Server) -> None:
    api = server.client()
    key_id = server.key.split("_")[1]
    actor = f"key {key_id} (tenant default, admin)"
    metrics = api.get("/metrics").text
    # every label value is there before anything happened
    assert metric(metrics, "dormant_sessions_created_total") == 0
    for kind in ("create", "start", "stop", "remove"):
        assert (
            metric(metrics, "dormant_operations_finished_total", kind=kind, outcome="failed") == 0
        )

    ids = [server.create(f"user{i}")["id"] for i in range(3)]
    for sid in ids:
        server.wait_state(sid, "running")
    assert api.post(f"/v1/sessions/{ids[0]}/sleep", params={"wait": 20}).json()["outcome"]["ok"]
    assert api.post(f"/v1/sessions/{ids[0]}/wake", params={"wait": 20}).json()["outcome"]["ok"]
    assert api.delete(f"/v1/sessions/{ids[1]}", params={"wait": 20}).json()["outcome"]["ok"]

    metrics = api.get("/metrics").text
    assert metric(metrics, "dormant_sessions_created_total") == 3
    assert metric(metrics, "dormant_operations_finished_total", kind="create", outcome="done") == 3
    assert metric(metrics, "dormant_operations_finished_total", kind="stop", outcome="done") == 1
    assert metric(metrics, "dormant_operations_finished_total", kind="start", outcome="done") == 1
    assert metric(metrics, "dormant_operations_finished_total", kind="remove", outcome="done") == 1
    assert metric(metrics, "dormant_operations_duration_seconds_count", kind="create") == 3
    assert metric(metrics, "dormant_operations_duration_seconds_sum", kind="create") > 0
    assert metric(metrics, "dormant_wakes_duration_seconds_count") == 1
    assert metric(metrics, "dormant_sessions_queued_count") == 0

    stats = api.get("/v1/stats").json()
    assert stats["sessions_by_state"] == {"running": 2, "deleted": 1}
    assert sum(stats["sessions_by_level"].values()) == 2
    assert stats["transitions_by_reason"]["create"] == {"create": 3}
    assert stats["transitions_by_reason"]["sleep"] == {"manual": 1}
    assert stats["transitions_by_reason"]["delete"] == {"manual": 1}

    # the deleted session's timeline is still there, and says who did it
    assert api.get(f"/v1/sessions/{ids[1]}").status_code == 404
    events = api.get(f"/v1/sessions/{ids[1]}/events").json()["items"]
    assert events[0]["reason"] == f"create requested by {actor}"
    assert events[-1]["to_state"] == "deleted"
    assert events[-1]["reason"] == f"delete requested by {actor}"
    slept = api.get(f"/v1/sessions/{ids[0]}/events").json()["items"]
    assert f"sleep requested by {actor}" in [e["reason"] for e in slept]

    audit = [e for e in log_lines(server) if e.get("logger") == "dormant.audit"]
    said = {(e["action"], e["session"]) for e in audit}
    assert {("create", ids[0]), ("sleep", ids[0]), ("wake", ids[0]), ("delete", ids[1])} <= said
    assert all(e["level"] == "info" and e["key_id"] == key_id for e in audit)
    # (the admin key is printed once at first start, outside the JSON log lines)
    assert not any(server.key in json.dumps(e) for e in log_lines(server))


def test_refusals_are_warnings_with_key_id_and_capacity_is_logged(
    server_factory: Callable[..., Server],
) -> None:
    server = server_factory(ports=1)
    api = server.client()
    key_id = server.key.split("_")[1]
    server.wait_state(server.create("a")["id"], "running")
    assert api.post("/v1/sessions", json={"user_id": "b"}).status_code == 503
    assert api.get("/v1/sessions/nope").status_code == 404

    def refusals() -> list[dict[str, Any]]:
        return [e for e in log_lines(server) if e.get("msg", "").startswith("refused ")]

    wait_until(lambda: len(refusals()) >= 2, timeout=5, what="two refusals in the log")
    capacity, missing = refusals()[:2]
    assert (capacity["level"], capacity["status"], capacity["code"]) == (
        "warning",
        503,
        "capacity_exhausted",
    )
    assert capacity["key_id"] == key_id and capacity["path"] == "/v1/sessions"
    assert (missing["status"], missing["code"], missing["path"]) == (
        404,
        "not_found",
        "/v1/sessions/nope",
    )


def test_why_and_the_configuration_endpoints(server: Server) -> None:
    api = server.client()
    session = server.create("carol", policy={"sleep_after": "20m"})
    running = server.wait_state(session["id"], "running")
    assert re.fullmatch(
        r"running since \d\d:\d\d, no activity yet; sleeps in 19m\d+s \(idle\)|"
        r"running since \d\d:\d\d, no activity yet; sleeps in 20m \(idle\)",
        running["why"],
    ), running["why"]
    policy = api.get(f"/v1/sessions/{session['id']}/policy").json()
    assert policy["values"]["sleep_after"] == 1200
    templates = api.get("/v1/templates").json()["items"]
    assert [t["name"] for t in templates] == ["default"]
    assert policy["policy"] == templates[0]["policy"]
    policies = {p["name"]: p["values"] for p in api.get("/v1/policies").json()["items"]}
    assert policies["balanced"]["sleep_after"] == 900
    # the session's values are its policy's, with its own override
    assert {**policies[policy["policy"]], "sleep_after": 1200} == policy["values"]
