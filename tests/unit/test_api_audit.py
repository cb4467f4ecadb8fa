"""The audit trail (who acted, in the log and the timeline), the two-part ``why`` of a
session, and the read endpoints of the effective configuration."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

import httpx
import pytest

from dormant.api import create_api
from dormant.api.auth import create_key
from dormant.policy import PRESETS
from dormant.reconciler import Reconciler
from tests.unit.conftest import Rig


@dataclass
class Api:
    client: httpx.AsyncClient
    key_id: str


@pytest.fixture
async def api(rig: Rig) -> AsyncIterator[Api]:
    key = await create_key(rig.store, "acme", False, "test", rig.clock.now())
    app = create_api(rig.engine, Reconciler(rig.engine))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://dormant", headers={"X-API-Key": key}
    ) as client:
        yield Api(client, key.split("_")[1])


async def created(rig: Rig, api: Api) -> str:
    response = await api.client.post("/v1/sessions", json={"user_id": "ann"})
    assert response.status_code == 201, response.text
    await rig.settle()
    return str(response.json()["id"])


async def test_each_action_names_the_acting_key_in_the_timeline_and_the_log(
    rig: Rig, api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    actor = f"key {api.key_id} (tenant acme)"
    caplog.set_level(logging.INFO, logger="dormant.audit")
    sid = await created(rig, api)
    until = (rig.clock.now() + timedelta(minutes=30)).isoformat()
    assert (
        await api.client.post(f"/v1/sessions/{sid}/keepalive", json={"until": until})
    ).is_success
    assert (await api.client.post(f"/v1/sessions/{sid}/sleep")).status_code == 202
    await rig.settle()
    assert (await api.client.post(f"/v1/sessions/{sid}/wake")).status_code == 202
    await rig.settle()
    assert (await api.client.delete(f"/v1/sessions/{sid}")).status_code == 202
    await rig.settle()

    events = (await api.client.get(f"/v1/sessions/{sid}/events")).json()["items"]
    reasons = [(e["to_state"], e["reason"]) for e in events if e["type"] == "transition"]
    assert reasons[0] == ("creating", f"create requested by {actor}")
    assert ("stopping", f"sleep requested by {actor}") in reasons
    assert ("starting", f"wake requested by {actor}") in reasons
    assert reasons[-1] == ("deleted", f"delete requested by {actor}")
    keepalive = [e["reason"] for e in events if e["code"] == "keepalive"]
    assert keepalive == [f"keepalive until {until} requested by {actor}"]

    lines = [r.getMessage() for r in caplog.records if r.name == "dormant.audit"]
    for action in ("create", "keepalive", "sleep", "wake", "delete"):
        assert f"audit action={action} session={sid} by {actor}" in "\n".join(lines), action
    assert all(r.levelno == logging.INFO for r in caplog.records if r.name == "dormant.audit")


async def test_logout_is_audited_with_the_key(
    rig: Rig, api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dormant.audit")
    sid = await created(rig, api)
    response = await api.client.post("/v1/users/ann/logout")
    assert response.json()["deleted"] == [sid]
    await rig.settle()
    events = (await api.client.get(f"/v1/sessions/{sid}/events")).json()["items"]
    assert f"logout requested by key {api.key_id} (tenant acme)" in [e["reason"] for e in events]
    assert any(
        f"audit action=logout session=- by key {api.key_id} (tenant acme) user=ann deleted=1"
        == r.getMessage()
        for r in caplog.records
    )


async def test_a_deleted_session_keeps_its_timeline_and_answers_404_elsewhere(
    rig: Rig, api: Api
) -> None:
    sid = await created(rig, api)
    await api.client.delete(f"/v1/sessions/{sid}")
    await rig.settle()
    assert (await api.client.get(f"/v1/sessions/{sid}")).status_code == 404
    events = await api.client.get(f"/v1/sessions/{sid}/events")
    assert events.status_code == 200
    assert events.json()["items"][-1]["to_state"] == "deleted"
    assert (await api.client.get("/v1/sessions/nope/events")).status_code == 404


async def test_a_foreign_tenants_timeline_is_not_found(rig: Rig, api: Api) -> None:
    sid = await created(rig, api)
    other = await create_key(rig.store, "beta", False, "other", rig.clock.now())
    response = await api.client.get(f"/v1/sessions/{sid}/events", headers={"X-API-Key": other})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


async def test_session_json_tells_why_in_two_parts(rig: Rig, api: Api) -> None:
    sid = await created(rig, api)
    rig.clock.advance(120)
    body = (await api.client.get(f"/v1/sessions/{sid}")).json()
    # balanced: sleeps 15 min after its start, 2 min have passed
    started = rig.clock.now() - timedelta(seconds=120)
    assert body["why"] == (f"running since {started:%H:%M}, no activity yet; sleeps in 13m (idle)")
    assert body["next_action"]["action"] == "sleep"


async def test_templates_list_names_not_secret_values(rig: Rig, api: Api) -> None:
    body = (await api.client.get("/v1/templates")).json()
    assert [t["name"] for t in body["items"]] == ["default"]
    tpl = body["items"][0]
    assert tpl["default"] is True
    assert tpl["runtime"] == "process"
    assert tpl["policy"] == "balanced"
    assert tpl["env_names"] == [] and tpl["env_allow"] == []
    assert "env" not in tpl


async def test_policies_are_resolved_in_seconds(api: Api) -> None:
    body = (await api.client.get("/v1/policies")).json()
    by_name = {p["name"]: p["values"] for p in body["items"]}
    assert set(by_name) == set(PRESETS)
    assert by_name["balanced"]["sleep_after"] == 900
    assert by_name["aggressive"]["delete_after"] == 3600


async def test_a_sessions_policy_has_its_overrides(rig: Rig, api: Api) -> None:
    response = await api.client.post(
        "/v1/sessions", json={"user_id": "bob", "policy": {"sleep_after": "5m"}}
    )
    sid = response.json()["id"]
    body = (await api.client.get(f"/v1/sessions/{sid}/policy")).json()
    assert body["session_id"] == sid and body["policy"] == "balanced"
    assert body["values"]["sleep_after"] == 300
    assert body["values"]["delete_after"] == 86400
    await rig.settle()
    missing = await api.client.get("/v1/sessions/nope/policy")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


async def test_refusals_are_logged_as_warnings_with_the_key_id_never_the_key(
    rig: Rig, api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dormant.api")
    assert (await api.client.get("/v1/sessions/nope?x=secret")).status_code == 404
    bad = await api.client.get("/v1/sessions", headers={"X-API-Key": "dk_abc123_notthekey"})
    assert bad.status_code == 401
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert lines[0].startswith(f"refused 404 not_found GET /v1/sessions/nope key={api.key_id}: ")
    assert lines[1].startswith("refused 401 unauthorized GET /v1/sessions key=abc123: ")
    assert not any("secret" in line or "notthekey" in line for line in lines)
