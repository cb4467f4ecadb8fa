"""The Kubernetes manifests, checked offline against the API's OpenAPI schemas (the JSON
schemas that kubernetes-validate ships; strict: unknown fields are errors): dormant's own
(``deploy/kubernetes``), and the Pod, PodTemplate and PersistentVolumeClaim that the kubernetes
runtime writes. A deliberately broken copy must fail, or the check proves nothing."""

from __future__ import annotations

import copy
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from dormant.config import load_settings
from dormant.runtimes import ContainerSpec, Resources, VolumeMount
from dormant.runtimes.kubernetes_spec import claim_manifest, pod_manifest, pod_template_manifest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
#: The oldest Kubernetes these manifests claim to work with (the schemas of that minor).
VERSION = "1.29"


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No network: any attempt to open a connection fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access during an offline check: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield


def documents(name: str) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]
    assert docs, name
    return docs


def check(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, VERSION, strict=True)


@pytest.mark.parametrize("name", ["rbac.yaml", "dormant.yaml"])
def test_deploy_manifests_validate(name: str) -> None:
    for doc in documents(name):
        check(doc)


def test_the_manifests_hold_what_dormant_needs() -> None:
    kinds = {
        (d["kind"], d["metadata"]["name"])
        for n in ("rbac.yaml", "dormant.yaml")
        for d in documents(n)
    }
    assert {
        ("ServiceAccount", "dormant"),
        ("Role", "dormant-sessions"),
        ("RoleBinding", "dormant-sessions"),
        ("Deployment", "dormant"),
        ("Service", "dormant"),
        ("ConfigMap", "dormant-config"),
    } <= kinds
    (role,) = [d for d in documents("rbac.yaml") if d["kind"] == "Role"]
    granted = {r: set(rule["verbs"]) for rule in role["rules"] for r in rule["resources"]}
    assert granted == {
        "pods": {"get", "list", "watch", "create", "delete"},
        "podtemplates": {"get", "list", "create", "delete"},
        "persistentvolumeclaims": {"get", "list", "create", "delete"},
    }
    (deployment,) = [d for d in documents("dormant.yaml") if d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "dormant"
    assert pod["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/healthz"


def test_the_config_map_is_a_configuration_dormant_loads(tmp_path: Path) -> None:
    (config_map,) = [d for d in documents("dormant.yaml") if d["kind"] == "ConfigMap"]
    path = tmp_path / "dormant.toml"
    path.write_text(config_map["data"]["dormant.toml"])
    settings = load_settings(path, environ={})  # templates checked by the runtime's validate
    assert settings.templates["notebook"].runtime == "kubernetes"
    assert settings.kubernetes_namespace == "dormant"


@pytest.mark.parametrize(
    ("name", "kind", "breakage"),
    [
        ("dormant.yaml", "Deployment", lambda d: d["spec"].update(replicas="one")),
        ("dormant.yaml", "Service", lambda d: d["spec"]["ports"][0].update(port="eighty")),
        ("rbac.yaml", "Role", lambda d: d["rules"][0].update(verb=["get"])),  # unknown field
        ("rbac.yaml", "RoleBinding", lambda d: d.pop("roleRef")),
    ],
)
def test_a_broken_copy_does_not_validate(name: str, kind: str, breakage: Any) -> None:
    (doc,) = [d for d in documents(name) if d["kind"] == kind]
    check(doc)
    broken = copy.deepcopy(doc)
    breakage(broken)
    with pytest.raises(kubernetes_validate.ValidationError):
        check(broken)


def full_spec() -> ContainerSpec:
    labels = {
        "dormant.managed": "true",
        "dormant.session": "s1",
        "dormant.user": "Ünïcode user",
        "dormant.created": "2026-12-01T00:10:00+00:00",
    }
    volume_labels = {"dormant.managed": "true", "dormant.user": "Ünïcode user"}
    return ContainerSpec(
        name="dormant-s1",
        session_id="s1",
        labels=labels,
        port=None,
        command=["serve", "{port}"],
        image="localhost/dormant-httpd:2",
        env={"A": "1"},
        container_port=8080,
        resources=Resources(cpus=0.25, memory="128m"),
        read_only=True,
        tmpfs={"/tmp": "size=16m"},
        cap_drop=("ALL",),
        no_new_privileges=True,
        user="1000:1000",
        volumes=(VolumeMount("home_t_Alice", "/home", "user", volume_labels),),
        workdir="/srv",
        shm_size="64m",
    )


def test_what_the_runtime_writes_validates() -> None:
    pod = pod_manifest(full_spec(), "dormant")
    check(pod)
    check(pod_template_manifest(pod, []))
    claim = claim_manifest(full_spec().volumes[0], "dormant", "1Gi", "fast")
    check(claim)
    broken = copy.deepcopy(pod)
    broken["spec"]["containers"][0]["securityContext"]["runAsUser"] = "root"
    with pytest.raises(kubernetes_validate.ValidationError):
        check(broken)
