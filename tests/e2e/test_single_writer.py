"""SQLite has one writer: a second ``dormant serve`` on the same SQLite database refuses to start
and names the live instance; a killed predecessor does not count. ``GET /v1/instances`` shows the
live instances with their leases, to admin keys only."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

from .conftest import dormant_executable

if TYPE_CHECKING:
    from .conftest import Server

pytestmark = pytest.mark.e2e


def second_serve(server: Server, port: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [dormant_executable(), "serve"],
        cwd=server.home,
        env={**server.env, "DORMANT_PORT": str(port), "DORMANT_PROXY_PORT": "0"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_second_server_on_one_sqlite_file_refuses_to_start(
    server_factory: Callable[..., Server],
) -> None:
    first = server_factory()
    listed = first.client().get("/v1/instances")
    assert listed.status_code == 200, listed.text
    (me,) = listed.json()["items"]
    assert me["this"] is True and me["pid"] == first.proc.pid  # type: ignore[union-attr]
    assert me["lease_until"] > me["heartbeat_at"]
    tenant_key = first.cli("keys", "create", "--tenant", "acme").stdout.strip()
    forbidden = first.client(tenant_key).get("/v1/instances")
    assert forbidden.status_code == 403 and forbidden.json()["error"]["code"] == "forbidden"

    other_port = first.session_ports[-1]
    refused = second_serve(first, other_port)
    assert refused.returncode == 1, refused
    assert f"instance {me['id']}" in refused.stderr and "PostgreSQL" in refused.stderr
    assert first.client().get("/healthz").status_code == 200  # the first one is untouched

    first.kill()  # a dead predecessor does not block a restart
    first.start()
    (again,) = first.client().get("/v1/instances").json()["items"]
    assert again["id"] != me["id"] and again["this"] is True
