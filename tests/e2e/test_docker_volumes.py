"""Storage end to end: ``dormant serve`` on the docker runtime (Podman) with volumes and binds."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from ..integration import podman
from ..integration.podman import CONTAINER_PORT, IMAGE, RUN_ID, RUN_LABEL

if TYPE_CHECKING:
    from .conftest import Server

pytestmark = pytest.mark.e2e


def run_volumes() -> set[str]:
    """Volumes of this test run (the docker scope labels every volume dormant makes)."""
    out = podman.podman(
        "volume", "ls", "--format", "{{.Name}}", "--filter", f"label={RUN_LABEL}={RUN_ID}"
    )
    return set(out.stdout.split())


@pytest.fixture
def docker_host() -> Iterator[str]:
    host = podman.podman_host()
    try:
        yield host
    finally:
        podman.purge_run()
        for name in run_volumes():
            podman.podman("volume", "rm", "-f", name, check=False)
        assert podman.managed_containers() == []
        assert run_volumes() == set()


def exec_sh(session_id: str, script: str) -> str:
    return podman.podman("exec", f"dormant-{session_id}", "sh", "-c", script).stdout


def write_config(tmp_path: Path, shared: Path, binds: str) -> Path:
    config = tmp_path / "dormant.toml"
    config.write_text(
        f'default_template = "ide"\nbind_allow = ["{shared}"]\n\n'
        f'[templates.ide]\nruntime = "docker"\nimage = "{IMAGE}"\nport = {CONTAINER_PORT}\n'
        "stop_timeout = 1\n"
        'volumes = { "home-{tenant}-{user}" = "/home/dev", '
        '"scratch-{session}" = { target = "/scratch", retain = "session" } }\n'
        f"binds = {binds}\n"
    )
    return config


def test_a_users_files_survive_sleep_wake_delete_and_come_back_in_a_new_session(
    server_factory: Callable[..., Server], docker_host: str, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "motd").write_text("from the host\n")
    config = write_config(tmp_path, shared, f'{{ "{shared}" = "/shared" }}')
    server = server_factory(
        ports=20,
        DORMANT_CONFIG=str(config),
        DORMANT_DOCKER_HOST=docker_host,
        DORMANT_DOCKER_SCOPE=f"{RUN_LABEL}={RUN_ID}",
        DORMANT_VOLUME_RETENTION="2",
        DORMANT_VOLUME_PRUNE_INTERVAL="86400",  # only the first sweep, at start: prune by hand
        DORMANT_RECONCILE_SETTLE="0",
    )
    api = server.client()
    labels = {RUN_LABEL: RUN_ID}

    first = server.create("gina", labels=labels)["id"]
    server.wait_state(first, "running", timeout=120)
    exec_sh(first, "echo 'gina was here' > /home/dev/notes.txt; echo tmp > /scratch/tmp.txt")
    assert exec_sh(first, "cat /shared/motd") == "from the host\n"  # an allowed bind
    assert podman.podman(
        "exec", f"dormant-{first}", "sh", "-c", "echo x > /shared/motd", check=False
    ).returncode  # read-only by default
    home = "home-default-gina"
    scratch = f"scratch-{first}"
    assert {home, scratch} <= run_volumes()

    # sleep and wake
    assert api.post(f"/v1/sessions/{first}/sleep").status_code == 202
    server.wait_state(first, "sleeping", timeout=60)
    assert api.post(f"/v1/sessions/{first}/wake").status_code == 202
    server.wait_state(first, "running", timeout=120)
    assert exec_sh(first, "cat /home/dev/notes.txt /scratch/tmp.txt") == "gina was here\ntmp\n"

    # the container vanishes while it sleeps: the wake re-creates it, keeps the volumes, says so
    assert api.post(f"/v1/sessions/{first}/sleep").status_code == 202
    server.wait_state(first, "sleeping", timeout=60)
    podman.podman("rm", "-f", "-v", f"dormant-{first}")
    assert api.post(f"/v1/sessions/{first}/wake").status_code == 202
    server.wait_state(first, "running", timeout=120)
    assert exec_sh(first, "cat /home/dev/notes.txt") == "gina was here\n"
    events = api.get(f"/v1/sessions/{first}/events").json()
    items = events["items"] if isinstance(events, dict) else events
    notes = [e["reason"] for e in items if e.get("code") == "re-created"]
    assert notes == [f"re-created: container was missing; volumes kept ({home}, {scratch})"]

    # delete: the session's volume goes, the user's stays; a new session finds the file
    assert api.delete(f"/v1/sessions/{first}").status_code == 202
    server.wait_gone(first, timeout=60)  # 404 from "deleting" on: the removal follows
    podman.wait_for(lambda: scratch not in run_volumes(), timeout=60, what="scratch removed")
    assert home in run_volumes()
    second = server.create("gina", labels=labels)["id"]
    server.wait_state(second, "running", timeout=120)
    assert exec_sh(second, "cat /home/dev/notes.txt; ls /scratch") == "gina was here\n"

    # hal's last session ends; ivan's runs
    hal = server.create("hal", labels=labels)["id"]
    ivan = server.create("ivan", labels=labels)["id"]
    for sid in (hal, ivan):
        server.wait_state(sid, "running", timeout=120)
    assert api.delete(f"/v1/sessions/{hal}").status_code == 202
    server.wait_gone(hal, timeout=60)
    time.sleep(2.5)  # beyond DORMANT_VOLUME_RETENTION

    kept = {home, "home-default-ivan", f"scratch-{second}", f"scratch-{ivan}"}
    assert run_volumes() == kept | {"home-default-hal"}
    listing = server.cli("volumes", "ls").stdout
    rows = {line.split()[0]: line for line in listing.splitlines()[1:-1]}
    assert set(rows) == kept | {"home-default-hal"}, listing
    assert "(expired)" in rows["home-default-hal"] and "default/hal" in rows["home-default-hal"]
    assert second in rows[home] and "user" in rows[home] and "(expired)" not in rows[home]
    assert ivan in rows[f"scratch-{ivan}"] and "session" in rows[f"scratch-{ivan}"]

    dry = server.cli("volumes", "prune", "--dry-run").stdout
    assert "would remove: home-default-hal" in dry and "would remove 1 volume(s)" in dry, dry
    assert "home-default-hal" in run_volumes()
    pruned = server.cli("volumes", "prune").stdout
    assert "removed: home-default-hal" in pruned and "removed 1 volume(s)" in pruned, pruned
    assert run_volumes() == kept  # nothing else
    assert "removed 0 volume(s)" in server.cli("volumes", "prune").stdout

    for sid in (second, ivan):
        assert api.delete(f"/v1/sessions/{sid}").status_code == 202
        server.wait_gone(sid, timeout=60)
    podman.wait_for(
        lambda: run_volumes() == {home, "home-default-ivan"},  # user volumes wait for retention
        timeout=60,
        what="session volumes removed",
    )


def test_a_bind_outside_the_allow_list_is_refused_at_load(
    server_factory: Callable[..., Server], docker_host: str, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "escape").symlink_to("/etc")
    for source in ("/etc", f"{shared}/../..", f"{shared}/escape"):
        config = write_config(tmp_path, shared, f'{{ "{source}" = "/host" }}')
        server = server_factory(
            start=False, DORMANT_CONFIG=str(config), DORMANT_DOCKER_HOST=docker_host
        )
        result = server.cli("serve", check=False)
        assert result.returncode != 0
        assert f"templates.ide.binds: host path {source!r}" in result.stderr, result.stderr
        assert "is not inside bind_allow" in result.stderr
        assert not (server.home / "dormant.db").exists()  # refused before anything was made
    assert podman.managed_containers() == []
