"""The swarm runtime end to end: ``dormant serve`` with a template of ``runtime = "swarm"`` on the
project's single-node Swarm (Docker Engine, ``scripts/docker-up.sh``).

A session serves through dormant's proxy, sleeps to 0 replicas with no task container running,
is woken by a request through the proxy, and its service goes with its deletion; a user's volume
outlives the session and is mounted again by the user's next one. dormant killed with SIGKILL
while sessions are created and deleted (at each crash point, and at a random moment of a burst)
and restarted converges: the services equal the live sessions.

This run's services and volumes are removed afterwards, also on failure, and checked gone.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from tests.e2e.proxy_support import cookies_for, sleep, state, wakes

from ..integration.engines import CONTAINER_PORT, DOCKER, IMAGE, RUN_ID, RUN_LABEL
from ..integration.swarm_support import (
    replicas,
    run_services,
    run_volumes,
    swarm_cleanup,
    task_containers,
)
from .test_docker_chaos import TRANSITIONAL, Api, once

if TYPE_CHECKING:
    from .conftest import Server

pytestmark = pytest.mark.e2e

LABELS = {RUN_LABEL: RUN_ID}


@pytest.fixture
def swarm() -> Iterator[str]:
    yield from swarm_cleanup()


def swarm_server(
    server_factory: Callable[..., Server], host: str, tmp_path: Path, *, start: bool = True
) -> Server:
    config = tmp_path / "dormant.toml"
    config.write_text(
        f'default_template = "box"\n\n[templates.box]\nruntime = "swarm"\nimage = "{IMAGE}"\n'
        f"port = {CONTAINER_PORT}\nstop_timeout = 1\nstart_timeout = 60\n"
        # the image serves /www: a user's files under /www/data are on their volume
        'volumes = { "data-{tenant}-{user}" = "/www/data" }\n'
    )
    return server_factory(  # type: ignore[no-any-return]
        start=start,
        DORMANT_CONFIG=str(config),
        DORMANT_SWARM_HOST=host,
        DORMANT_DOCKER_SCOPE=f"{RUN_LABEL}={RUN_ID}",
        DORMANT_RECONCILE_INTERVAL="2",
        DORMANT_RECONCILE_SETTLE="0",
        DORMANT_RATE_LIMIT="100000",
        DORMANT_RATE_BURST="100000",
    )


def write_in(sid: str, script: str) -> None:
    [task] = task_containers(f"dormant-{sid}", running=True)
    DOCKER.cli("exec", task["Id"], "sh", "-c", script)


def test_serve_sleep_wake_delete_and_a_users_volume_in_the_next_session(
    server_factory: Callable[..., Server], swarm: str, tmp_path: Path
) -> None:
    server = swarm_server(server_factory, swarm, tmp_path)
    api = server.client()
    made = api.post("/v1/sessions?wait=90", json={"user_id": "gina", "labels": LABELS})
    assert made.status_code == 201 and made.json()["state"] == "running", made.text
    sid = made.json()["id"]
    name = f"dormant-{sid}"
    assert replicas(name) == 1
    write_in(sid, f"echo 'note of {sid}' > /www/data/note.txt")

    jar = cookies_for(server, sid)
    with httpx.Client(cookies=jar, timeout=90) as client:
        page = client.get(f"{server.proxy_url}/s/{sid}/")
        assert page.status_code == 200 and b"dormant test container" in page.content
        note = client.get(f"{server.proxy_url}/s/{sid}/data/note.txt")
        assert (note.status_code, note.text) == (200, f"note of {sid}\n")

        sleep(server, sid)
        assert replicas(name) == 0
        assert task_containers(name, running=True) == []  # nothing runs while it sleeps

        woken = client.get(f"{server.proxy_url}/s/{sid}/")  # the request wakes it
        assert woken.status_code == 200 and woken.content == page.content
    assert state(server, sid) == "running" and wakes(server, sid) == 1
    assert replicas(name) == 1

    assert api.delete(f"/v1/sessions/{sid}?wait=60").status_code == 202
    server.wait_gone(sid, timeout=60)
    server.wait_until(lambda: name not in run_services(), timeout=60, what="service removed")
    assert task_containers(name) == []
    assert "data-default-gina" in run_volumes()  # the user's volume stays

    again = api.post("/v1/sessions?wait=90", json={"user_id": "gina", "labels": LABELS})
    assert again.status_code == 201 and again.json()["state"] == "running", again.text
    second = again.json()["id"]
    with httpx.Client(cookies=cookies_for(server, second), timeout=90) as client:
        kept = client.get(f"{server.proxy_url}/s/{second}/data/note.txt")
    assert (kept.status_code, kept.text) == (200, f"note of {sid}\n")  # mounted again
    assert api.delete(f"/v1/sessions/{second}?wait=60").status_code == 202
    server.wait_gone(second, timeout=60)


def converged(api: Api) -> tuple[bool, str]:
    """No session in a transitional state, and this run's services are the live sessions'."""
    sessions = []
    cursor = None
    while True:
        params = {"limit": "200", **({"cursor": cursor} if cursor else {})}
        page = api.call("GET", "/v1/sessions", (200,), params=params).json()
        sessions += page["items"]
        if not (cursor := page["next_cursor"]):
            break
    stuck = [(s["id"], s["state"]) for s in sessions if s["state"] in TRANSITIONAL]
    expected = {f"dormant-{s['id']}" for s in sessions}
    actual = set(run_services())
    return not stuck and expected == actual, (
        f"stuck={stuck} sessions-without-service={sorted(expected - actual)} "
        f"services-without-session={sorted(actual - expected)}"
    )


def wait_converged(server: Server, api: Api) -> None:
    why: list[str] = []

    def check() -> bool:
        ok, detail = converged(api)
        why[:] = [detail]
        return ok

    server.wait_until(check, timeout=180, interval=0.5, what="convergence", detail=lambda: why)


def test_sigkill_during_creates_and_deletes_then_restart_converges(
    server_factory: Callable[..., Server], swarm: str, tmp_path: Path
) -> None:
    server = swarm_server(server_factory, swarm, tmp_path, start=False)
    crash_dir = tmp_path / "crash"
    crash_dir.mkdir()
    server.env["DORMANT_TEST_CRASH_DIR"] = str(crash_dir)
    server.start()
    api = Api(server)
    try:
        for point in ("after-intent", "after-create", "before-state-update", "after-remove"):
            proc = server.proc
            assert proc is not None
            body = {"user_id": f"crash-{point}", "labels": LABELS}
            sid = ""
            if point == "after-remove":
                sid = str(api.call("POST", "/v1/sessions?wait=90", (201,), json=body).json()["id"])
                (crash_dir / point).touch()
                once(api, "DELETE", f"/v1/sessions/{sid}", 202)
            else:
                (crash_dir / point).touch()
                sid = once(api, "POST", "/v1/sessions", 201, json=body) or ""
            server.wait_until(lambda p=proc: p.poll() is not None, timeout=120, what=point)  # type: ignore[misc]
            assert proc.returncode == -9, f"expected SIGKILL at {point}, got {proc.returncode}"
            server.proc = None
            server.start()
            wait_converged(server, api)
            if point == "after-remove":
                assert api.state(sid) is None  # the delete was recorded before the crash
            elif sid:
                assert api.state(sid) in ("running", "sleeping"), (point, api.state(sid))

        # a burst of creates and deletes, dormant killed in the middle of it
        keep = [
            str(api.call("POST", "/v1/sessions", (201,), json={"user_id": f"k{i}"}).json()["id"])
            for i in range(3)
        ]
        for sid in keep:
            api.wait_state(sid, {"running"})

        def churn(index: int) -> None:
            if index < len(keep):
                api.call("DELETE", f"/v1/sessions/{keep[index]}", (202, 404), timeout=30)
            else:
                api.call("POST", "/v1/sessions", (201,), json={"user_id": f"b{index}"}, timeout=30)

        with ThreadPoolExecutor(max_workers=6) as pool:
            futures = [pool.submit(churn, i) for i in range(6)]
            time.sleep(random.uniform(0.3, 1.0))
            server.kill()  # mid-burst: creates and deletes in flight
            server.start()
            for future in futures:
                future.result()
        wait_converged(server, api)
        for sid in keep:  # deletes the API acknowledged are carried out after the restart
            assert api.state(sid) is None
    finally:
        api.close()
    left = [s["id"] for s in server.all_sessions()]
    for sid in left:
        server.client().delete(f"/v1/sessions/{sid}")
    for sid in left:
        server.wait_gone(sid, timeout=60)
    server.wait_until(lambda: not run_services(), timeout=60, what="services removed")
