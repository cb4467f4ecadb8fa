"""The API's refusals: malformed bodies, strict numbers, Retry-After, the OpenAPI document."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from dormant.api import create_api
from dormant.api.auth import create_key
from dormant.reconciler import Reconciler
from tests.unit.conftest import Rig, make_engine

JSON = {"content-type": "application/json"}


@pytest.fixture
async def api(rig: Rig) -> AsyncIterator[httpx.AsyncClient]:
    key = await create_key(rig.store, "default", True, "test", rig.clock.now())
    app = create_api(rig.engine, Reconciler(rig.engine))
    transport = httpx.ASGITransport(app=app, client=("192.0.2.7", 4321))
    async with httpx.AsyncClient(
        transport=transport, base_url="http://dormant", headers={"X-API-Key": key}
    ) as client:
        yield client


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return dict(body["error"])


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b'{"user_id": "\xff\xfe"}', "UTF-8"),
        (b"\xc3\x28", "UTF-8"),
        (b"[" * 3000 + b"]" * 3000, "nested too deeply"),
        (b'{"a":' * 3000 + b"1" + b"}" * 3000, "nested too deeply"),
    ],
    ids=["invalid-utf8-in-string", "invalid-utf8", "array-3000-deep", "object-3000-deep"],
)
async def test_unparsable_bodies_are_malformed_json(
    api: httpx.AsyncClient, content: bytes, why: str
) -> None:
    error = error_of(await api.post("/v1/sessions", content=content, headers=JSON), 422)
    assert error["code"] == "malformed_json"
    assert "not valid JSON" in error["message"] and why in error["message"]
    assert error["details"] == [{"field": "body", "problem": error["message"]}]


async def test_a_deep_but_parsable_body_is_still_validated(api: httpx.AsyncClient) -> None:
    """Not every deep document is refused as malformed: 200 levels parse, and are then judged."""
    deep = "[" * 200 + "]" * 200
    response = await api.post(
        "/v1/sessions", content=f'{{"user_id": "u", "labels": {deep}}}', headers=JSON
    )
    error = error_of(response, 422)
    assert error["code"] == "invalid_request"
    assert "labels" in error["message"]


@pytest.mark.parametrize(
    ("ttl", "words"),
    [
        ("true", ["ttl", "valid number"]),
        ('"600"', ["ttl", "valid number"]),
        ("1e-300", ["ttl", "greater than or equal to 1"]),
        ("0.5", ["ttl", "greater than or equal to 1"]),
        ("86401", ["ttl", "less than or equal to 86400"]),
        ("[600]", ["ttl", "valid number"]),
    ],
)
async def test_token_ttl_is_a_strict_number(
    api: httpx.AsyncClient, ttl: str, words: list[str]
) -> None:
    response = await api.post(
        "/v1/sessions/whatever/tokens", content=f'{{"ttl": {ttl}}}', headers=JSON
    )
    error = error_of(response, 422)
    assert error["code"] == "invalid_request"
    for word in words:
        assert word in error["message"], error


async def test_port_exhaustion_says_when_to_come_back(rig: Rig) -> None:
    engine = make_engine(rig.store, rig.runtime, rig.clock, "one-port", ports=range(30000, 30001))
    rig.others.append(engine)  # drained before the store closes
    key = await create_key(rig.store, "default", True, "test", rig.clock.now())
    app = create_api(engine, Reconciler(engine))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://dormant",
        headers={"X-API-Key": key},
    ) as client:
        first = await client.post("/v1/sessions", json={"user_id": "a"})
        assert first.status_code == 201, first.text
        refused = await client.post("/v1/sessions", json={"user_id": "b"})
        error = error_of(refused, 503)
        assert error["code"] == "capacity_exhausted"
        assert refused.headers["retry-after"] == "10"
    await engine.drain()


async def test_method_not_allowed_keeps_allow(api: httpx.AsyncClient) -> None:
    response = await api.put("/v1/sessions", json={})
    assert error_of(response, 405)["code"] == "method_not_allowed"
    assert response.headers["allow"] == "GET, POST"


# --- the OpenAPI document -----------------------------------------------------------------------


@pytest.fixture
async def openapi(api: httpx.AsyncClient) -> dict[str, Any]:
    response = await api.get("/openapi.json")
    assert response.status_code == 200
    return dict(response.json())


def test_openapi_describes_the_real_error_shape(openapi: dict[str, Any]) -> None:
    schemas = openapi["components"]["schemas"]
    assert schemas["Error"]["properties"] == {"error": {"$ref": "#/components/schemas/ErrorDetail"}}
    assert schemas["Error"]["required"] == ["error"]
    detail = schemas["ErrorDetail"]
    assert detail["required"] == ["code", "message"]
    assert detail["properties"]["code"]["type"] == "string"
    assert detail["additionalProperties"] is True
    text = json.dumps(openapi)
    assert "HTTPValidationError" not in text
    assert '"detail"' not in text


def _statuses(openapi: dict[str, Any], path: str, method: str) -> set[str]:
    return set(openapi["paths"][path][method]["responses"])


@pytest.mark.parametrize(
    ("path", "method", "expected"),
    [
        ("/v1/sessions", "post", {"201", "401", "408", "413", "422", "429", "503"}),
        ("/v1/sessions", "get", {"200", "401", "422", "429", "503"}),
        ("/v1/sessions/{session_id}", "get", {"200", "401", "404", "429", "503"}),
        # ?wait= is validated: 422 for a bad one
        ("/v1/sessions/{session_id}", "delete", {"202", "401", "404", "409", "422", "429", "503"}),
        (
            "/v1/sessions/{session_id}/sleep",
            "post",
            {"202", "401", "404", "409", "422", "429", "503"},
        ),
        (
            "/v1/sessions/{session_id}/tokens",
            "post",
            {"201", "401", "404", "408", "409", "413", "422", "429", "503"},
        ),
        (
            "/v1/sessions/{session_id}/links",
            "post",
            {"201", "401", "404", "408", "409", "413", "422", "429", "503"},
        ),
        (
            "/v1/users/{user_id}/sessions/{name}",
            "put",
            {"200", "201", "401", "408", "409", "413", "422", "429", "503"},
        ),
        ("/v1/stats", "get", {"200", "401", "429", "503"}),
        ("/healthz", "get", {"200", "503"}),
        ("/readyz", "get", {"200", "503"}),
    ],
)
def test_openapi_lists_the_statuses_answered(
    openapi: dict[str, Any], path: str, method: str, expected: set[str]
) -> None:
    assert _statuses(openapi, path, method) == expected
    for status in expected - {"200", "201", "202"}:
        response = openapi["paths"][path][method]["responses"][status]
        schema = response["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/Error"}
        assert ("Retry-After" in response.get("headers", {})) == (status in ("429", "503"))


async def test_every_operation_documents_the_errors(openapi: dict[str, Any]) -> None:
    operations = [(p, m, op) for p, item in openapi["paths"].items() for m, op in item.items()]
    # with GET /v1/instances, POST /v1/sessions/{id}/links and PUT /v1/users/{id}/sessions/{name}
    # ... and GET /v1/templates, /v1/policies, /v1/sessions/{id}/policy
    assert len(operations) == 22
    for path, method, operation in operations:
        responses = operation["responses"]
        assert "503" in responses, (path, method)
        if path.startswith("/v1/"):
            assert {"401", "429"} <= set(responses), (path, method)
        if "requestBody" in operation:
            assert {"413", "422"} <= set(responses), (path, method)


async def test_a_real_refusal_matches_the_documented_schema(
    api: httpx.AsyncClient, openapi: dict[str, Any]
) -> None:
    """The body a client gets for each documented kind of refusal has the documented shape."""
    detail = openapi["components"]["schemas"]["ErrorDetail"]
    refusals = [
        await api.get("/v1/sessions", headers={"X-API-Key": ""}),
        await api.get("/v1/sessions/nope"),
        await api.post("/v1/sessions", json={"user_id": "u", "colour": 1}),
        await api.post("/v1/sessions", content=b"{", headers=JSON),
    ]
    assert [r.status_code for r in refusals] == [401, 404, 422, 422]
    for response in refusals:
        error = response.json()["error"]
        for field in detail["required"]:
            assert isinstance(error[field], str) and error[field]
