"""Named sessions (get-or-create by ``PUT /v1/users/{user_id}/sessions/{name}``), idempotent
creates (``Idempotency-Key``) and the filters of ``GET /v1/sessions``, through the API."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from dormant.api import create_api
from dormant.api.auth import create_key
from dormant.engine import Template
from dormant.reconciler import Reconciler
from tests.unit.conftest import Rig

PUT = "/v1/users/{user}/sessions/{name}"


@pytest.fixture
async def api(rig: Rig) -> AsyncIterator[httpx.AsyncClient]:
    rig.engine.catalog.templates["other"] = Template(name="other")
    key = await create_key(rig.store, "default", True, "test", rig.clock.now())
    app = create_api(rig.engine, Reconciler(rig.engine))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://dormant",
        headers={"X-API-Key": key},
    ) as client:
        yield client


async def tenant_client(rig: Rig, tenant: str) -> httpx.AsyncClient:
    key = await create_key(rig.store, tenant, False, tenant, rig.clock.now())
    app = create_api(rig.engine, Reconciler(rig.engine))
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://dormant",
        headers={"X-API-Key": key},
    )


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    return dict(response.json()["error"])


async def ids(api: httpx.AsyncClient, **params: Any) -> list[str]:
    response = await api.get("/v1/sessions", params=params)
    assert response.status_code == 200, response.text
    return [s["id"] for s in response.json()["items"]]


# --- PUT: get or create -----------------------------------------------------------------------


async def test_put_creates_then_returns_the_same_session(api: httpx.AsyncClient, rig: Rig) -> None:
    first = await api.put(PUT.format(user="gina", name="dev"), json={"labels": {"team": "ml"}})
    assert first.status_code == 201, first.text
    made = first.json()
    assert (made["name"], made["user_id"], made["template"]) == ("dev", "gina", "default")
    assert made["labels"]["team"] == "ml"
    assert first.headers["location"] == f"/v1/sessions/{made['id']}"
    await rig.settle()
    again = await api.put(PUT.format(user="gina", name="dev"), json={"labels": {"team": "x"}})
    assert again.status_code == 200, again.text
    assert again.json()["id"] == made["id"]
    assert again.json()["labels"]["team"] == "ml"  # an existing session is returned as it is
    assert again.json()["state"] == "running"
    no_body = await api.put(PUT.format(user="gina", name="dev"))
    assert (no_body.status_code, no_body.json()["id"]) == (200, made["id"])
    assert await ids(api, user_id="gina") == [made["id"]]
    shown = await api.get(f"/v1/sessions/{made['id']}")
    assert shown.json()["name"] == "dev"


async def test_a_name_is_per_user_and_template(api: httpx.AsyncClient, rig: Rig) -> None:
    a = await api.put(PUT.format(user="gina", name="dev"))
    b = await api.put(PUT.format(user="hugo", name="dev"))
    c = await api.put(PUT.format(user="gina", name="dev"), json={"template": "other"})
    d = await api.put(PUT.format(user="gina", name="default"))
    assert [r.status_code for r in (a, b, c, d)] == [201, 201, 201, 201]
    assert len({r.json()["id"] for r in (a, b, c, d)}) == 4
    again = await api.put(PUT.format(user="gina", name="dev"), json={"template": "other"})
    assert (again.status_code, again.json()["id"]) == (200, c.json()["id"])
    # unnamed sessions (POST) are as many as asked, and never the named one
    for _ in range(2):
        plain = await api.post("/v1/sessions", json={"user_id": "gina"})
        assert plain.status_code == 201 and plain.json()["name"] is None
    assert len(await ids(api, user_id="gina")) == 5
    await rig.settle()


async def test_concurrent_puts_make_one_session(api: httpx.AsyncClient, rig: Rig) -> None:
    answers = await asyncio.gather(
        *(api.put(PUT.format(user="gina", name="race")) for _ in range(20))
    )
    statuses = sorted(r.status_code for r in answers)
    assert statuses == [200] * 19 + [201], [r.text for r in answers]
    assert len({r.json()["id"] for r in answers}) == 1
    assert len(await ids(api, user_id="gina")) == 1
    await rig.settle()
    assert len(rig.runtime.containers) == 1


async def test_put_wakes_a_sleeping_session_only_when_asked(
    api: httpx.AsyncClient, rig: Rig
) -> None:
    sid = (await api.put(PUT.format(user="gina", name="dev"))).json()["id"]
    await rig.settle()
    assert (await api.post(f"/v1/sessions/{sid}/sleep")).status_code == 202
    await rig.settle()
    kept = await api.put(PUT.format(user="gina", name="dev"))
    assert (kept.status_code, kept.json()["id"], kept.json()["state"]) == (200, sid, "sleeping")
    woken = await api.put(PUT.format(user="gina", name="dev"), params={"wake": "true", "wait": 5})
    assert (woken.status_code, woken.json()["id"]) == (200, sid)
    await rig.settle()
    assert (await api.get(f"/v1/sessions/{sid}")).json()["state"] == "running"


async def test_a_deleted_session_frees_its_name(api: httpx.AsyncClient, rig: Rig) -> None:
    sid = (await api.put(PUT.format(user="gina", name="dev"))).json()["id"]
    await rig.settle()
    assert (await api.delete(f"/v1/sessions/{sid}")).status_code == 202
    while_deleting = await api.put(PUT.format(user="gina", name="dev"))
    if while_deleting.status_code == 409:  # still being deleted: said so
        assert "being deleted" in while_deleting.json()["error"]["message"]
    await rig.settle()
    fresh = await api.put(PUT.format(user="gina", name="dev"))
    if while_deleting.status_code == 201:
        assert fresh.status_code == 200
    else:
        assert fresh.status_code == 201, fresh.text
    assert fresh.json()["id"] != sid


@pytest.mark.parametrize(
    ("user", "name"),
    [
        ("gina", "Dev"),
        ("gina", "-dev"),
        ("gina", "d" * 64),
        ("gina", "dev space"),
        ("gina", "dév"),
        ("gi/na", "dev"),
        ("gi na", "dev"),
    ],
)
async def test_put_refuses_bad_names(api: httpx.AsyncClient, user: str, name: str) -> None:
    response = await api.put(f"/v1/users/{user}/sessions/{name}")
    if response.status_code == 404:  # a slash makes another path: no such route
        assert "/" in user
        return
    assert error_of(response, 422)["code"] == "invalid_request"
    assert await ids(api) == []


async def test_put_refuses_what_post_refuses(api: httpx.AsyncClient) -> None:
    unknown = await api.put(PUT.format(user="gina", name="dev"), json={"colour": "red"})
    assert error_of(unknown, 422)["code"] == "unknown_field"
    user_in_body = await api.put(PUT.format(user="gina", name="dev"), json={"user_id": "x"})
    assert error_of(user_in_body, 422)["code"] == "unknown_field"
    template = await api.put(PUT.format(user="gina", name="dev"), json={"template": "nope"})
    assert "unknown template" in error_of(template, 422)["message"]
    query = await api.put(PUT.format(user="gina", name="dev"), params={"colour": "red"})
    assert error_of(query, 422)["code"] == "unknown_field"
    assert await ids(api) == []


async def test_put_takes_the_tenant_from_the_key(rig: Rig) -> None:
    async with (
        await tenant_client(rig, "acme") as acme,
        await tenant_client(rig, "globex") as globex,
    ):
        a = await acme.put(PUT.format(user="gina", name="dev"))
        g = await globex.put(PUT.format(user="gina", name="dev"))
        assert (a.status_code, g.status_code) == (201, 201)
        assert (a.json()["tenant"], g.json()["tenant"]) == ("acme", "globex")
        assert await ids(acme) == [a.json()["id"]]
    await rig.settle()


# --- Idempotency-Key --------------------------------------------------------------------------


async def test_an_idempotency_key_answers_the_same_session(
    api: httpx.AsyncClient, rig: Rig
) -> None:
    body = {"user_id": "gina", "labels": {"run": "1"}}
    key = {"Idempotency-Key": "create-gina-1"}
    first = await api.post("/v1/sessions", json=body, headers=key)
    assert first.status_code == 201, first.text
    await rig.settle()
    again = await api.post("/v1/sessions", json=body, headers=key)
    assert again.status_code == 201, again.text
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["state"] == "running"  # the session as it is now
    assert len(await ids(api)) == 1
    # the same key with another body: refused, and nothing made
    other = await api.post("/v1/sessions", json={**body, "labels": {"run": "2"}}, headers=key)
    error = error_of(other, 422)
    assert error["code"] == "idempotency_key_reused"
    assert first.json()["id"] in error["message"]
    # without a key, or with another, a new session
    assert (await api.post("/v1/sessions", json=body)).status_code == 201
    second = await api.post("/v1/sessions", json=body, headers={"Idempotency-Key": "k2"})
    assert second.json()["id"] != first.json()["id"]
    assert len(await ids(api)) == 3
    # 24 h later the key is forgotten: a new session
    rig.clock.advance(24 * 3600 + 1)
    later = await api.post("/v1/sessions", json=body, headers=key)
    assert later.status_code == 201 and later.json()["id"] != first.json()["id"]
    assert await rig.engine.purge_idempotency() == 1  # k2 (the create-gina-1 row was renewed)
    await rig.settle()


async def test_concurrent_posts_with_one_key_make_one_session(
    api: httpx.AsyncClient, rig: Rig
) -> None:
    answers = await asyncio.gather(
        *(
            api.post("/v1/sessions", json={"user_id": "gina"}, headers={"Idempotency-Key": "x"})
            for _ in range(10)
        )
    )
    assert [r.status_code for r in answers] == [201] * 10, [r.text for r in answers]
    assert len({r.json()["id"] for r in answers}) == 1
    assert len(await ids(api)) == 1
    await rig.settle()
    assert len(rig.runtime.containers) == 1


async def test_idempotency_keys_are_per_tenant(rig: Rig) -> None:
    async with (
        await tenant_client(rig, "acme") as acme,
        await tenant_client(rig, "globex") as globex,
    ):
        headers = {"Idempotency-Key": "same"}
        a = await acme.post("/v1/sessions", json={"user_id": "u"}, headers=headers)
        g = await globex.post("/v1/sessions", json={"user_id": "u"}, headers=headers)
        assert (a.status_code, g.status_code) == (201, 201)
        assert a.json()["id"] != g.json()["id"]
    await rig.settle()


@pytest.mark.parametrize("key", ["k" * 201, "tab\there", "caf\u00e9", "nul\x7f"], ids=repr)
async def test_a_bad_idempotency_key_is_refused(api: httpx.AsyncClient, key: str) -> None:
    response = await api.post(
        "/v1/sessions", json={"user_id": "u"}, headers={"Idempotency-Key": key.encode("latin-1")}
    )
    assert error_of(response, 422)["code"] == "invalid_request"
    assert "Idempotency-Key" in response.text
    assert await ids(api) == []


# --- GET /v1/sessions filters -----------------------------------------------------------------


async def test_list_filters_by_name_template_and_labels(api: httpx.AsyncClient, rig: Rig) -> None:
    made = {}
    for user, name, template, labels in [
        ("gina", "dev", "default", {"team": "ml", "gpu": "yes"}),
        ("gina", "dev", "other", {"team": "ml"}),
        ("hugo", "dev", "default", {"team": "web"}),
        ("hugo", "scratch", "other", {}),
    ]:
        response = await api.put(
            PUT.format(user=user, name=name), json={"template": template, "labels": labels}
        )
        assert response.status_code == 201, response.text
        made[(user, template)] = response.json()["id"]
    gina_default, gina_other = made[("gina", "default")], made[("gina", "other")]
    hugo_default, hugo_other = made[("hugo", "default")], made[("hugo", "other")]

    async def found(**params: Any) -> set[str]:
        return set(await ids(api, **params))

    assert await found(name="dev") == {gina_default, gina_other, hugo_default}
    assert await found(template="other") == {gina_other, hugo_other}
    assert await found(label="team=ml") == {gina_default, gina_other}
    assert await found(label=["team=ml", "gpu=yes"]) == {gina_default}
    assert await found(label=["team=ml", "gpu=no"]) == set()
    assert await found(label="dormant.user=hugo") == {hugo_default, hugo_other}
    assert await found(name="dev", template="default", user_id="hugo") == {hugo_default}
    # pages follow the filters
    page = (await api.get("/v1/sessions", params={"name": "dev", "limit": 2})).json()
    assert len(page["items"]) == 2 and page["next_cursor"]
    rest = await ids(api, name="dev", limit=2, cursor=page["next_cursor"])
    assert {s["id"] for s in page["items"]} | set(rest) == await found(name="dev")
    assert len(rest) == 1
    await rig.settle()


@pytest.mark.parametrize(
    ("params", "code", "words"),
    [
        ({"colour": "red"}, "unknown_field", ["'colour'", "known:"]),
        ({"user": "gina"}, "unknown_field", ["'user'"]),
        ({"label": "team"}, "invalid", ["KEY=VALUE"]),
        ({"label": "bad key=x"}, "invalid", ["label key"]),
        ({"label": ["a=1", "a=2"]}, "invalid", ["two values"]),
        ({"limit": "0"}, "invalid_request", ["limit"]),
    ],
)
async def test_list_refuses_unknown_and_bad_parameters(
    api: httpx.AsyncClient, params: dict[str, Any], code: str, words: list[str]
) -> None:
    error = error_of(await api.get("/v1/sessions", params=params), 422)
    assert error["code"] == code
    for word in words:
        assert word in error["message"], error


# --- the OpenAPI document ---------------------------------------------------------------------


async def test_the_put_is_documented(api: httpx.AsyncClient) -> None:
    openapi = (await api.get("/openapi.json")).json()
    operation = openapi["paths"]["/v1/users/{user_id}/sessions/{name}"]["put"]
    assert set(operation["responses"]) == {
        "200",
        "201",
        "401",
        "408",
        "409",
        "413",
        "422",
        "429",
        "503",
    }
    for status in ("200", "201"):
        schema = operation["responses"][status]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/SessionOut"}
    params = {p["name"]: p for p in operation["parameters"]}
    assert set(params) == {"user_id", "name", "wake", "wait", "X-API-Key"}
    assert params["name"]["schema"]["maxLength"] == 63
    assert operation["requestBody"].get("required", False) is False
    create = openapi["paths"]["/v1/sessions"]["post"]
    header = next(p for p in create["parameters"] if p["name"] == "Idempotency-Key")
    assert header["in"] == "header" and header["schema"]["anyOf"][0]["maxLength"] == 200
    listing = openapi["paths"]["/v1/sessions"]["get"]
    assert {"name", "template", "label"} <= {p["name"] for p in listing["parameters"]}
