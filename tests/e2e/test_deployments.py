"""A deployment owns its containers. Deployment A (its own database) runs sessions on Podman;
deployment B, started from another folder with another database, first without a scope and then
with A's scope, creates, reconciles, and is SIGKILLed and restarted: none of A's containers may be
touched, A's running ones keep serving, and B's containers are exactly B's live sessions."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from ..integration import podman
from ..integration.podman import CONTAINER_PORT, IMAGE, RUN_ID, RUN_LABEL
from .conftest import dormant_executable

if TYPE_CHECKING:
    from .conftest import Server

pytestmark = pytest.mark.e2e

CONFIG = f"""
default_template = "box"

[templates.box]
runtime = "docker"
image = "{IMAGE}"
port = {CONTAINER_PORT}
stop_timeout = 1
"""


def containers_of(deployment: str) -> dict[str, str]:
    """``name -> state`` of every container carrying this deployment's id."""
    out = podman.podman(
        "ps", "-a", "--format", "json", "--filter", f"label=dormant.deployment={deployment}"
    ).stdout
    return {str(r["Names"][0]): str(r["State"]) for r in json.loads(out or "[]")}


def deployment_of(server: Server, sid: str) -> str:
    out = podman.podman(
        "inspect", "--format", '{{index .Config.Labels "dormant.deployment"}}', f"dormant-{sid}"
    ).stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{16}", out), out
    return out


def sweep(server: Server) -> None:
    """Let the started server's reconciler run a few times (its interval is 1 s)."""
    time.sleep(3.5)
    assert server.proc is not None and server.proc.poll() is None, server.log_tail()


def test_a_second_deployment_never_touches_the_first_ones_containers(
    server_factory: Callable[..., Server], docker_host: str, tmp_path: Path
) -> None:
    config = tmp_path / "dormant.toml"
    config.write_text(CONFIG)
    scope = f"{RUN_LABEL}={RUN_ID}"
    common = {
        "DORMANT_CONFIG": str(config),
        "DORMANT_DOCKER_HOST": docker_host,
        "DORMANT_RECONCILE_INTERVAL": "1",
    }
    a = server_factory(ports=20, DORMANT_DOCKER_SCOPE=scope, **common)
    a_ids = [a.create(f"a{i}", labels={RUN_LABEL: RUN_ID})["id"] for i in range(10)]
    for sid in a_ids:
        a.wait_state(sid, "running", timeout=120)
    for sid in a_ids[:4]:
        assert a.client().post(f"/v1/sessions/{sid}/sleep").status_code == 202
    for sid in a_ids[:4]:
        a.wait_state(sid, "sleeping", timeout=60)
    a_deployment = deployment_of(a, a_ids[0])
    a_containers = containers_of(a_deployment)
    assert set(a_containers) == {f"dormant-{s}" for s in a_ids}

    # B: another folder (server_factory's second home), another database, no scope at first.
    b = server_factory(ports=20, start=False, **common)
    assert b.home != a.home
    b_ids: list[str] = []
    for scoped in (False, True):
        if scoped:
            b.env["DORMANT_DOCKER_SCOPE"] = scope
        b.start()
        b_ids.append(b.create("b", labels={RUN_LABEL: RUN_ID})["id"])
        b.wait_state(b_ids[-1], "running", timeout=120)
        plan = b.cli("reconcile", "--dry-run").stdout
        ignored = re.search(r"ignored (\d+) container\(s\) of other deployments", plan)
        assert ignored is not None and int(ignored.group(1)) >= 10, plan
        assert "remove-orphan" not in plan, plan
        b.cli("reconcile")
        for _ in range(2):
            b.kill()
            b.start()
            sweep(b)
        b.stop()

    # A third server on A's (taken) API port exits before it touches anything.
    c = server_factory(ports=5, start=False, **common)
    taken = subprocess.run(
        [dormant_executable(), "serve"],
        cwd=c.home,
        env={**c.env, "DORMANT_PORT": str(a.port)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert taken.returncode != 0 and "cannot listen" in taken.stderr, taken
    assert not (c.home / "dormant.db").exists()

    # A's containers are all there, in the state A left them, and its running ones serve.
    assert containers_of(a_deployment) == a_containers
    for sid in a_ids:
        current = a.session(sid)
        assert current is not None
        expected = "sleeping" if sid in a_ids[:4] else "running"
        assert current["state"] == expected, current
        if expected == "running":
            assert podman.http_get(current["port"]) is not None, sid
    # B's containers are exactly B's live sessions.
    b.start()
    b_live = {s["id"] for s in b.all_sessions()}
    assert b_live == set(b_ids)
    b_deployment = deployment_of(b, b_ids[0])
    assert b_deployment != a_deployment
    assert set(containers_of(b_deployment)) == {f"dormant-{s}" for s in b_live}
    stats = b.client().get("/v1/stats").json()
    assert stats["orphans_removed"] == 0, stats
