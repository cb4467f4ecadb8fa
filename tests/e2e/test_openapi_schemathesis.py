"""Schemathesis against ``dormant serve``: requests generated from /openapi.json, valid and
invalid, sent with the admin key. No 5xx but the documented 503s, every status documented, every
body and header as documented, invalid input refused. Bounded: ``MAX_EXAMPLES`` per operation and
mode, about 30 s in all.

(schemathesis' lazy pytest integration, ``from_fixture``, does not run on pytest 9, so each
operation is a parametrized test that draws its cases with Hypothesis itself.)"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

import tests.e2e.conftest as e2e

pytestmark = pytest.mark.e2e

MAX_EXAMPLES = 20
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
POSITIVE, NEGATIVE = GenerationMode.POSITIVE, GenerationMode.NEGATIVE
#: Every operation with valid input; with invalid input those that take a body or a query
#: (the others have only free strings: nothing can be made invalid).
OPERATIONS = [
    ("POST", "/v1/sessions", [POSITIVE, NEGATIVE]),
    ("GET", "/v1/sessions", [POSITIVE, NEGATIVE]),
    ("GET", "/v1/sessions/{session_id}", [POSITIVE]),
    ("DELETE", "/v1/sessions/{session_id}", [POSITIVE]),
    ("POST", "/v1/sessions/{session_id}/activity", [POSITIVE, NEGATIVE]),
    ("POST", "/v1/sessions/{session_id}/sleep", [POSITIVE]),
    ("POST", "/v1/sessions/{session_id}/wake", [POSITIVE]),
    ("POST", "/v1/sessions/{session_id}/keepalive", [POSITIVE, NEGATIVE]),
    ("POST", "/v1/sessions/{session_id}/busy", [POSITIVE, NEGATIVE]),
    ("GET", "/v1/sessions/{session_id}/events", [POSITIVE]),
    ("GET", "/v1/sessions/{session_id}/policy", [POSITIVE]),
    ("POST", "/v1/sessions/{session_id}/tokens", [POSITIVE, NEGATIVE]),
    ("POST", "/v1/sessions/{session_id}/links", [POSITIVE, NEGATIVE]),
    ("POST", "/v1/sessions/{session_id}/broadcast", [POSITIVE, NEGATIVE]),
    ("POST", "/v1/users/{user_id}/logout", [POSITIVE]),
    ("PUT", "/v1/users/{user_id}/sessions/{name}", [POSITIVE, NEGATIVE]),
    ("GET", "/v1/stats", [POSITIVE]),
    ("GET", "/v1/templates", [POSITIVE]),
    ("GET", "/v1/policies", [POSITIVE]),
    ("GET", "/v1/instances", [POSITIVE]),
    ("GET", "/healthz", [POSITIVE]),
    ("GET", "/readyz", [POSITIVE]),
]
CASES = [
    pytest.param(method, path, mode, id=f"{method} {path} {mode.value}")
    for method, path, modes in OPERATIONS
    for mode in modes
]


class Fuzz:
    """A server of its own (ports for every session the fuzzing creates) and its document."""

    def __init__(self, home: Path) -> None:
        self.server = e2e.Server(home, ports=60).start()
        self.schema = schemathesis.openapi.from_url(f"{self.server.url}/openapi.json", timeout=10)

    def fresh_session(self) -> str:
        sid = str(self.server.create("fuzz-target")["id"])
        self.server.wait_state(sid, "running")
        return sid

    def delete_all(self) -> None:
        api = self.server.client()
        for session in self.server.all_sessions():
            response = api.delete(f"/v1/sessions/{session['id']}")
            assert response.status_code in (202, 404), response.text


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzz]:
    made = Fuzz(tmp_path_factory.mktemp("fuzz"))
    try:
        yield made
        logs = made.server.logs().splitlines()
        errors = [line for line in logs if '"level": "error"' in line]
        assert not errors, "\n".join(errors)
    finally:
        e2e._sweep([made.server])


def test_every_operation_is_fuzzed(fuzz: Fuzz) -> None:
    documented = [
        (method.upper(), path)
        for path, item in fuzz.schema.raw_schema["paths"].items()
        for method in item
        # the console's own JSON (/ui/api/...) is exercised by the console's tests
        if not path.startswith("/ui/")
    ]
    assert sorted(documented) == sorted((m, p) for m, p, _ in OPERATIONS)


@pytest.mark.parametrize(("method", "path", "mode"), CASES)
def test_operation_matches_the_document(
    fuzz: Fuzz, method: str, path: str, mode: GenerationMode
) -> None:
    operation = fuzz.schema[path][method]
    server = fuzz.server
    strategies = [operation.as_strategy(generation_mode=mode)]
    if "{session_id}" in path:
        # Cases on a real, running session too, so that the happy paths are checked.
        real = {"session_id": fuzz.fresh_session()}
        strategies.append(operation.as_strategy(generation_mode=mode, path_parameters=real))
        if path.endswith(("/keepalive", "/busy")) and mode is POSITIVE:
            # "a time in the next few hours" is more than a JSON schema can say
            soon = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
            strategies.append(operation.as_strategy(path_parameters=real, body={"until": soon}))
    statuses: dict[int, int] = {}

    @given(case=st.one_of(strategies))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def check(case: Any) -> None:
        response = case.call_and_validate(
            base_url=server.url,
            headers={"X-API-Key": server.key},
            checks=CHECKS,
            timeout=30,
        )
        assert b"Traceback" not in response.content
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

    try:
        check()
    finally:
        fuzz.delete_all()
    print(f"{method} {path} {mode.value}: {sorted(statuses.items())}")
    if mode is NEGATIVE:
        assert 422 in statuses, statuses  # some invalid input really was refused
    else:
        assert any(200 <= status < 300 for status in statuses), statuses


def test_a_real_503_matches_the_document(fuzz: Fuzz) -> None:
    """The fuzzing rarely meets a 503; this one (no free port) is checked against the document
    the same way."""
    server = fuzz.server
    operation = fuzz.schema["/v1/sessions"]["POST"]
    api = server.client()
    try:
        for i in range(len(server.session_ports)):
            filler = api.post("/v1/sessions", json={"user_id": f"filler{i}"})
            assert filler.status_code == 201, filler.text
        case = operation.Case(body={"user_id": "one-too-many"}, media_type="application/json")
        response = case.call_and_validate(
            base_url=server.url, headers={"X-API-Key": server.key}, checks=CHECKS[1:]
        )
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "capacity_exhausted"
        assert response.headers["retry-after"] == ["10"]
    finally:
        fuzz.delete_all()
        with httpx.Client(base_url=server.url, headers={"X-API-Key": server.key}) as client:
            server.wait_until(
                lambda: client.get("/v1/sessions").json()["items"] == [],
                timeout=60,
                what="the fillers to be deleted",
            )
