"""Issue 8: a create request's ``env`` is an allow-list. A tenant key cannot set a variable that
makes the host run code (``PYTHONWARNINGS`` + ``BROWSER``, ``LD_PRELOAD``, ...): the answer is
422 naming it and nothing starts. A template's ``env_allow`` lets listed variables through."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Server

pytestmark = pytest.mark.e2e

REFUSED = ["PYTHONWARNINGS", "BROWSER", "LD_PRELOAD", "PYTHONPATH", "NODE_OPTIONS", "BASH_ENV"]

#: Writes its environment to env.txt in its work directory, then serves that directory.
DUMP_AND_SERVE = f"env > env.txt && exec {sys.executable} -m http.server {{port}} --bind 127.0.0.1"

CONFIG = f"""
[templates.modes]
command = ["/bin/sh", "-c", '{DUMP_AND_SERVE}']
env = {{PYTHONUNBUFFERED = "1", MODE = "operator-default"}}
env_allow = ["MODE", "GIT_*"]

[templates.open]
command = ["/bin/sh", "-c", '{DUMP_AND_SERVE}']
env_allow = ["*"]
"""


@pytest.fixture
def server(server_factory: Callable[..., Server], tmp_path: Path) -> Server:
    config = tmp_path / "dormant.toml"
    config.write_text(CONFIG)
    return server_factory(DORMANT_CONFIG=str(config))


def tenant(server: Server) -> httpx.Client:
    key = server.cli("keys", "create", "--tenant", "acme").stdout.strip()
    client = server.client(key)
    assert client.get("/v1/sessions").status_code == 200
    return client


def error_of(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 422, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    return dict(body["error"])


def processes_with(token: str) -> list[int]:
    """Every process on the host whose environment carries ``token``."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if token.encode() in Path(entry.path, "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_host_controlled_variables_are_refused_and_nothing_starts(
    server: Server, tmp_path: Path
) -> None:
    client = tenant(server)
    before = tree(server.data_dir)
    token = f"dormant-probe-{uuid.uuid4().hex}"
    for name in REFUSED:
        for template in ("default", "modes", "open"):  # "open" allows "*"
            error = error_of(
                client.post(
                    "/v1/sessions",
                    json={"user_id": "mallory", "template": template, "env": {name: token}},
                )
            )
            assert error == {
                "code": "invalid",
                "message": f"env {name!r} is never taken from a request: it controls how the "
                "host loads, finds or runs programs",
            }

    # the classic: a warning filter that imports antigravity, which opens $BROWSER
    pwned = tmp_path / "pwned"
    exploit = {
        "PYTHONWARNINGS": "ignore::antigravity.x",
        "BROWSER": f"/bin/sh -c 'touch {pwned}' #%s",
        "MODE": token,
    }
    error = error_of(
        client.post("/v1/sessions", json={"user_id": "mallory", "template": "open", "env": exploit})
    )
    assert error["code"] == "invalid"
    assert "'BROWSER'" in error["message"]

    # reserved for dormant: same answer code, its own reason
    error = error_of(
        client.post("/v1/sessions", json={"user_id": "mallory", "env": {"DORMANT_SESSION": "x"}})
    )
    assert error == {
        "code": "invalid",
        "message": "env 'DORMANT_SESSION' is reserved: dormant sets it for every session",
    }

    assert server.all_sessions() == []
    assert client.get("/v1/sessions").json()["items"] == []
    assert server.marked() == {}
    assert processes_with(token) == []
    assert tree(server.data_dir) == before
    assert not pwned.exists()


def test_env_allow_lets_listed_variables_through(server: Server) -> None:
    client = tenant(server)
    error = error_of(client.post("/v1/sessions", json={"user_id": "ada", "env": {"MODE": "fast"}}))
    assert error == {
        "code": "invalid",
        "message": "env 'MODE' is not allowed by template 'default' (env_allow: none)",
    }
    error = error_of(
        client.post(
            "/v1/sessions",
            json={"user_id": "ada", "template": "modes", "env": {"MODE": "fast", "COLOUR": "red"}},
        )
    )
    assert error == {
        "code": "invalid",
        "message": "env 'COLOUR' is not allowed by template 'modes' (env_allow: MODE, GIT_*)",
    }
    assert server.all_sessions() == []

    response = client.post(
        "/v1/sessions",
        json={
            "user_id": "ada",
            "template": "modes",
            "env": {"MODE": "fast", "GIT_AUTHOR_NAME": "Ada Lovelace"},
        },
    )
    assert response.status_code == 201, response.text
    session = server.wait_state(response.json()["id"], "running")
    served = server.port_answers(session["port"], "/env.txt")
    assert served is not None and served.status_code == 200
    env = dict(line.split("=", 1) for line in served.text.splitlines() if "=" in line)
    assert env["MODE"] == "fast"  # the request's, over the template's default
    assert env["GIT_AUTHOR_NAME"] == "Ada Lovelace"
    assert env["PYTHONUNBUFFERED"] == "1"  # the operator's template env is trusted
    assert env["DORMANT_SESSION"] == session["id"]
    assert "PYTHONPATH" not in env and "VIRTUAL_ENV" not in env

    assert client.delete(f"/v1/sessions/{session['id']}").status_code == 202
    server.wait_gone(session["id"])
