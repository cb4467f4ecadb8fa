"""What every container backend (docker, swarm, kubernetes) gives a session from its spec: the
environment and the command with its placeholders filled in."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from dormant.runtimes import ContainerSpec
from dormant.runtimes.docker_spec import container_config
from dormant.runtimes.kubernetes_spec import pod_manifest

BASE = ContainerSpec(
    name="dormant-s1",
    session_id="s1",
    labels={"dormant.managed": "true"},
    port=20001,
    image="example/app:1",
    container_port=8080,
)


def spec(**changes: Any) -> ContainerSpec:
    return replace(BASE, **changes)


def test_the_template_cannot_override_what_dormant_sets() -> None:
    env = spec(env={"A": "1", "PORT": "1", "DORMANT_SESSION": "forged"}).container_env()
    assert env == {
        "A": "1",
        "PORT": "8080",
        "DORMANT_SESSION": "s1",
        "DORMANT_CONTAINER": "dormant-s1",
    }


def test_placeholders_are_filled_and_no_command_means_the_images() -> None:
    made = spec(command=["serve", "--port={port}", "{session}", "{workdir}"], workdir="/w")
    assert made.container_command() == ["serve", "--port=8080", "s1", "/w"]
    assert spec(command=["{workdir}"]).container_command() == ["/"]
    assert spec().container_command() is None


def test_docker_and_kubernetes_carry_the_same_environment_and_command() -> None:
    made = spec(command=["serve", "{port}"], env={"A": "1"})
    docker = container_config(made)
    (container,) = pod_manifest(made, "default")["spec"]["containers"]
    assert docker["Cmd"] == container["args"] == ["serve", "8080"]
    assert docker["Env"] == [f"{e['name']}={e['value']}" for e in container["env"]]
    assert "Cmd" not in container_config(spec())
