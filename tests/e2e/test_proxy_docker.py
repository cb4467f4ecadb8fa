"""Issue 10 on the docker runtime (Podman's Docker API): a slept container is woken by one
request through the proxy, which answers with the container's own page."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Server
from tests.e2e.proxy_support import cookies_for, sleep, state, wakes

from ..integration import podman
from ..integration.podman import CONTAINER_PORT, IMAGE, RUN_ID, RUN_LABEL

pytestmark = pytest.mark.e2e


def test_a_request_wakes_a_sleeping_container(
    server_factory: Callable[..., Server], docker_host: str, tmp_path: Path
) -> None:
    config = tmp_path / "dormant.toml"
    config.write_text(
        f'default_template = "box"\n\n[templates.box]\nruntime = "docker"\n'
        f'image = "{IMAGE}"\nport = {CONTAINER_PORT}\nstop_timeout = 1\n'
    )
    server = server_factory(
        DORMANT_CONFIG=str(config),
        DORMANT_DOCKER_HOST=docker_host,
        DORMANT_DOCKER_SCOPE=f"{RUN_LABEL}={RUN_ID}",
    )
    made = server.client().post(
        "/v1/sessions?wait=60", json={"user_id": "u", "labels": {RUN_LABEL: RUN_ID}}
    )
    assert made.status_code == 201 and made.json()["state"] == "running", made.text
    sid = made.json()["id"]
    # No template is public or has a login page: refused from memory, existing or not.
    for unknown in (sid, "f" * 23):
        assert httpx.get(f"{server.proxy_url}/s/{unknown}/").status_code == 401
    jar = cookies_for(server, sid)
    with httpx.Client(cookies=jar, timeout=90) as client:
        direct = client.get(f"{server.proxy_url}/s/{sid}/")
        assert direct.status_code == 200
        sleep(server, sid)
        inspect = podman.podman("inspect", "--format", "{{.State.Running}}", f"dormant-{sid}")
        assert inspect.stdout.strip() == "false"  # asleep: the container is stopped
        woken = client.get(f"{server.proxy_url}/s/{sid}/")
        assert woken.status_code == 200
        assert woken.content == direct.content  # the container's own page, both times
    assert state(server, sid) == "running" and wakes(server, sid) == 1
    assert server.client().delete(f"/v1/sessions/{sid}?wait=60").status_code == 202
