"""``dormant sessions rm --all-sleeping`` against ``dormant serve`` on the docker runtime."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from ..integration import podman
from ..integration.podman import CONTAINER_PORT, IMAGE, RUN_ID, RUN_LABEL

if TYPE_CHECKING:
    from .conftest import Server

pytestmark = pytest.mark.e2e


def test_rm_all_sleeping_deletes_exactly_the_sleeping_sessions(
    server_factory: Callable[..., Server], docker_host: str, tmp_path: Path
) -> None:
    config = tmp_path / "dormant.toml"
    config.write_text(
        f'default_template = "box"\n\n[templates.box]\nruntime = "docker"\n'
        f'image = "{IMAGE}"\nport = {CONTAINER_PORT}\nstop_timeout = 1\n\n'
        f'[templates.ghost]\nruntime = "docker"\nimage = "localhost/no-such-image:404"\n'
        f"port = {CONTAINER_PORT}\n"
    )
    server = server_factory(
        ports=20,
        DORMANT_CONFIG=str(config),
        DORMANT_DOCKER_HOST=docker_host,
        DORMANT_DOCKER_SCOPE=f"{RUN_LABEL}={RUN_ID}",
    )
    # an image the engine does not have: refused before a session or container exists
    refused_image = server.client().post(
        "/v1/sessions", json={"user_id": "u", "template": "ghost", "labels": {RUN_LABEL: RUN_ID}}
    )
    assert refused_image.status_code == 422, refused_image.text
    assert "no-such-image" in refused_image.json()["error"]["message"]
    assert server.all_sessions() == []

    ids = [server.create(f"u{i}", labels={RUN_LABEL: RUN_ID})["id"] for i in range(9)]
    for sid in ids:
        server.wait_state(sid, "running", timeout=120)
    sleeping, awake = ids[:6], ids[6:]
    api = server.client()
    for sid in sleeping:
        assert api.post(f"/v1/sessions/{sid}/sleep").status_code == 202
    for sid in sleeping:
        server.wait_state(sid, "sleeping", timeout=120)

    refused = server.cli("sessions", "rm", check=False)
    assert refused.returncode != 0
    assert "--all-sleeping" in refused.stderr

    dry = server.cli("sessions", "rm", "--all-sleeping", "--dry-run")
    assert "6 sleeping session(s) across 1 tenant(s)" in dry.stdout, dry.stdout
    assert all(sid in dry.stdout for sid in sleeping), dry.stdout
    unconfirmed = server.cli("sessions", "rm", "--all-sleeping", check=False)
    assert unconfirmed.returncode != 0
    assert all(server.session(sid) is not None for sid in sleeping)

    result = server.cli("sessions", "rm", "--all-sleeping", "--concurrency", "3", "--yes")
    assert "deleted 6 of 6 sleeping session(s) (3 at a time)" in result.stdout
    assert "deleting" in result.stderr  # the progress bar
    for sid in sleeping:
        assert server.session(sid) is None
    for sid in awake:
        current = server.session(sid)
        assert current is not None and current["state"] == "running"
    assert podman.container_names(podman.managed_containers()) == {f"dormant-{s}" for s in awake}

    again = server.cli("sessions", "rm", "--all-sleeping", "--yes")
    assert "no sleeping sessions" in again.stdout
