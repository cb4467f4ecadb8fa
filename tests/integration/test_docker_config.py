"""docker templates in dormant.toml: every value is validated when the configuration loads, with
an error that names the setting (no engine involved)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dormant.config import load_settings
from dormant.errors import InvalidInput
from dormant.runtimes.docker import DockerRuntime
from dormant.server import build_runtimes

GOOD = """
[templates.box]
runtime = "docker"
image = "localhost/dormant-httpd:2"
port = 8080
resources = { cpus = 1.5, memory = "512m", pids_limit = 256 }
read_only = true
tmpfs = { "/tmp" = "rw,size=64m" }
cap_drop = ["ALL"]
no_new_privileges = true
network_mode = "bridge"
"""


def load(tmp_path: Path, text: str, **env: str) -> object:
    path = tmp_path / "dormant.toml"
    path.write_text(text)
    return load_settings(path, environ=env)


def test_a_full_docker_template_loads_and_builds_the_runtime(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        GOOD,
        DORMANT_DOCKER_HOST="unix:///run/x.sock",
        DORMANT_DOCKER_SCOPE="team=a,env=t",
    )
    tpl = settings.catalog().templates["box"]  # type: ignore[attr-defined]
    assert tpl.runtime == "docker" and tpl.image == "localhost/dormant-httpd:2"
    assert tpl.read_only and tpl.no_new_privileges and tpl.cap_drop == ("ALL",)
    assert tpl.tmpfs == {"/tmp": "rw,size=64m"} and tpl.network_mode == "bridge"
    runtimes = build_runtimes(settings)  # type: ignore[arg-type]
    assert isinstance(runtimes["docker"], DockerRuntime)
    assert runtimes["docker"].host == "unix:///run/x.sock"
    assert runtimes["docker"].scope == {"team": "a", "env": "t"}  # type: ignore[attr-defined]


@pytest.mark.parametrize("scope", ["team", "=a", "team=", "dormant.session=x"])
def test_a_bad_docker_scope_is_refused(tmp_path: Path, scope: str) -> None:
    with pytest.raises(InvalidInput, match="scope"):
        settings = load(tmp_path, GOOD, DORMANT_DOCKER_SCOPE=scope)
        build_runtimes(settings)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ('resources = { memory = "-512m" }', "memory"),
        ('resources = { memory = "1m" }', "memory"),
        ("resources = { cpus = 0 }", "cpus"),
        ("resources = { cpus = -1 }", "cpus"),
        ("resources = { cpus = 1000 }", "cpus"),
        ("resources = { pids_limit = 0 }", "pids_limit"),
        ("port = 0", "port"),
        ("port = 70000", "port"),
        ('tmpfs = { "tmp" = "" }', "tmpfs"),
        ('cap_drop = ["all; rm"]', "cap_drop"),
        ('network_mode = "container:db"', "network_mode"),
        ("stop_timeout = -1", "stop_timeout"),
    ],
)
def test_bad_values_are_refused_with_the_setting_named(
    tmp_path: Path, change: str, message: str
) -> None:
    key = change.split("=")[0].strip()
    text = "\n".join(line for line in GOOD.splitlines() if not line.startswith(key)) + "\n"
    with pytest.raises(InvalidInput, match=message) as caught:
        load(tmp_path, text + change + "\n")
    assert "templates.box" in str(caught.value)


@pytest.mark.parametrize(("drop", "message"), [("image", "image"), ("port", "port")])
def test_a_docker_template_needs_an_image_and_a_port(
    tmp_path: Path, drop: str, message: str
) -> None:
    text = "\n".join(line for line in GOOD.splitlines() if not line.startswith(drop))
    with pytest.raises(InvalidInput, match=message):
        load(tmp_path, text)


def test_a_port_range_outside_the_allowed_ports_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="port range"):
        load(tmp_path, GOOD, DORMANT_PORT_RANGE="80-90")


def test_the_swarm_volume_driver_is_a_setting_passed_to_the_runtime(tmp_path: Path) -> None:
    swarm = '[templates.box]\nruntime = "swarm"\nimage = "localhost/dormant-httpd:2"\nport = 8080\n'
    settings = load(tmp_path, swarm, DORMANT_SWARM_VOLUME_DRIVER="rexray/ebs:latest")
    assert settings.swarm_volume_driver == "rexray/ebs:latest"  # type: ignore[attr-defined]
    runtimes = build_runtimes(settings)  # type: ignore[arg-type]
    assert runtimes["swarm"].volume_driver == "rexray/ebs:latest"  # type: ignore[attr-defined]
    with pytest.raises(InvalidInput, match="swarm_volume_driver"):
        load(tmp_path, swarm, DORMANT_SWARM_VOLUME_DRIVER="local; rm -rf /")
