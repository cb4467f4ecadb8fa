"""What the ``kubernetes`` runtime asks the API server to store: Pod, PodTemplate and PVC manifests.

Everything here is pure (no API calls): names, labels and annotations, the checks a template
must pass (:func:`validate`), and the manifests built from a :class:`ContainerSpec`.

**Labels and annotations.** Kubernetes label values are at most 63 characters of
``[A-Za-z0-9_.-]`` starting and ending with a letter or digit; dormant's labels (a tenant's user
id, a template name) need not be. :func:`label_value` keeps a valid value as it is and turns any
other into a readable, unambiguous one (its safe characters and a hash of the whole). The exact
labels dormant gave are kept, as JSON, in the ``dormant.labels`` annotation: that is what the
runtime reports (and the reconciler judges), the Kubernetes labels are only for selecting
(``dormant.managed=true``) and for people running ``kubectl get -l``. ``dormant.created`` is an
ISO timestamp and stays out of the labels (annotation only). A label key that Kubernetes cannot
take is kept in the annotation only.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from typing import Any

from dormant.errors import InvalidInput
from dormant.runtimes.base import (
    CREATED_LABEL,
    MANAGED_LABEL,
    SESSION_LABEL,
    ContainerSpec,
    VolumeMount,
)
from dormant.runtimes.docker import check_path, parse_memory, parse_shm_size, validate_mounts

#: The exact labels dormant gave (JSON): what the runtime reports as a container's labels.
LABELS_ANNOTATION = "dormant.labels"
#: A PersistentVolumeClaim's volume name as dormant knows it (the claim's name may be hashed).
VOLUME_ANNOTATION = "dormant.volume"
#: A session's ``retain="session"`` claims (JSON list of volume names), removed with it.
SESSION_VOLUMES_ANNOTATION = "dormant.session-volumes"
START_TIMEOUT_ANNOTATION = "dormant.start-timeout"
STOP_TIMEOUT_ANNOTATION = "dormant.stop-timeout"
#: The one container of a session's pod.
CONTAINER = "session"

MAX_TIMEOUT = 3600.0
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_UNSAFE_VALUE = re.compile(r"[^A-Za-z0-9_.-]+")
_UNSAFE_NAME = re.compile(r"[^a-z0-9-]+")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_NUMERIC_USER = re.compile(r"^(\d{1,10})(?::(\d{1,10}))?$")
_CAPABILITY = re.compile(r"^(ALL|(CAP_)?[A-Z][A-Z0-9_]{1,40})$")
_TMPFS_SIZE = re.compile(r"(?:^|,)size=([^,]+)")
_HASH_CHARS = 10


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_CHARS]


def label_value(value: str) -> str:
    """``value`` as a valid Kubernetes label value: itself when valid, else its safe characters
    (at most 52) and a hash of the whole, so that two different values never meet."""
    if len(value) <= 63 and _LABEL_VALUE.match(value):
        return value
    reduced = _UNSAFE_VALUE.sub("-", value)[:52].strip("-_.")
    return f"{reduced}-{_digest(value)}" if reduced else _digest(value)


def label_key_ok(key: str) -> bool:
    """Whether ``key`` is a Kubernetes label (and annotation) key: ``[prefix/]name``."""
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return False
    return len(name) <= 63 and bool(_LABEL_NAME.match(name))


def kube_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """The Kubernetes labels for dormant's ``labels`` (see the module: no timestamps)."""
    return {
        key: label_value(value)
        for key, value in labels.items()
        if key != CREATED_LABEL and label_key_ok(key)
    }


def original_labels(meta: Mapping[str, Any]) -> dict[str, str]:
    """The labels dormant gave an object (its ``dormant.labels`` annotation), or its Kubernetes
    labels when the annotation is missing or malformed (an object made by hand)."""
    raw = (meta.get("annotations") or {}).get(LABELS_ANNOTATION)
    if isinstance(raw, str):
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in parsed.items()
        ):
            return parsed
    return {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}


def owner_metadata(name: str, namespace: str, labels: Mapping[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": namespace,
        "labels": kube_labels(labels),
        "annotations": {LABELS_ANNOTATION: json.dumps(dict(labels), sort_keys=True)},
    }


def claim_name(volume: str) -> str:
    """The PersistentVolumeClaim name of dormant's volume ``volume``: itself when it is a valid
    DNS subdomain of at most 63 characters, else lower-cased safe characters and a hash."""
    if len(volume) <= 63 and _DNS_SUBDOMAIN.match(volume):
        return volume
    reduced = _UNSAFE_NAME.sub("-", volume.lower())[:52].strip("-")
    return f"{reduced}-{_digest(volume)}" if reduced else f"v-{_digest(volume)}"


def quantity(size: int) -> str:
    """Bytes as a Kubernetes quantity (``"67108864"``: exact, no unit rounding)."""
    return str(size)


def _tmpfs_size(path: str, options: str) -> str | None:
    match = _TMPFS_SIZE.search(options)
    return None if match is None else quantity(parse_shm_size(match.group(1)))


def validate(spec: ContainerSpec) -> None:
    """Refuse (``InvalidInput``, naming the setting) what a pod cannot be or dormant must not
    ask of a cluster: host paths, Docker networks, a per-container pids limit, user names."""
    if len(spec.name) > 63 or not _DNS_LABEL.match(spec.name):
        raise InvalidInput(
            f"invalid pod name {spec.name!r}: lower-case letters, digits and '-', at most 63"
        )
    if not spec.image or len(spec.image) > 300 or any(c.isspace() for c in spec.image):
        raise InvalidInput(f"the kubernetes runtime needs an image; got {spec.image!r}")
    if spec.container_port is None or not 1 <= spec.container_port <= 65535:
        raise InvalidInput(
            f"the kubernetes runtime needs the template's port (1-65535), got "
            f"{spec.container_port!r}"
        )
    if spec.binds:
        raise InvalidInput(
            "binds: the kubernetes runtime mounts no host paths (a pod may run on any node); "
            "use volumes"
        )
    if spec.network is not None or spec.network_mode is not None:
        raise InvalidInput(
            "network and network_mode are Docker settings: a pod is reached at its own address"
        )
    if spec.resources.pids_limit is not None:
        raise InvalidInput(
            "pids_limit: Kubernetes limits processes per node (kubelet podPidsLimit), not per "
            "pod; leave it out of a kubernetes template"
        )
    cpus = spec.resources.cpus
    if cpus is not None and (not math.isfinite(cpus) or not 0.001 <= cpus <= 256):
        raise InvalidInput(f"cpus must be between 0.001 and 256, got {cpus!r}")
    if spec.resources.memory is not None:
        parse_memory(spec.resources.memory)
    for what, value in (("start_timeout", spec.start_timeout), ("stop_timeout", spec.stop_timeout)):
        if not math.isfinite(value) or not 0 <= value <= MAX_TIMEOUT:
            raise InvalidInput(f"{what} must be between 0 and {MAX_TIMEOUT:g}s, got {value!r}")
    if spec.user is not None and not _NUMERIC_USER.match(spec.user):
        raise InvalidInput(
            f"user {spec.user!r}: a pod runs as a numeric uid (optionally uid:gid), not a name"
        )
    for cap in spec.cap_drop:
        if not _CAPABILITY.match(cap):
            raise InvalidInput(f"cap_drop: {cap!r} is not a capability name (e.g. ALL, NET_RAW)")
    for key in spec.env:
        if not _ENV_NAME.match(key):
            raise InvalidInput(f"environment variable name {key!r} is not valid")
    if spec.workdir is not None:
        check_path("workdir", spec.workdir, root_ok=True)
    if spec.shm_size is not None:
        parse_shm_size(spec.shm_size)
    for path, options in spec.tmpfs.items():
        check_path("tmpfs", path)
        _tmpfs_size(path, options)
    validate_mounts(spec)
    if spec.shm_size is not None and any(p.rstrip("/") == "/dev/shm" for p in spec.tmpfs):
        raise InvalidInput("shm_size and a tmpfs at /dev/shm are the same mount; set one")
    for key in spec.labels:
        if key.startswith("dormant.") and not label_key_ok(key):
            raise InvalidInput(f"label {key!r} is not a valid Kubernetes label key")


def _container(spec: ContainerSpec) -> dict[str, Any]:
    assert spec.container_port is not None
    env = spec.container_env()
    security: dict[str, Any] = {
        "readOnlyRootFilesystem": spec.read_only,
        "allowPrivilegeEscalation": not spec.no_new_privileges,
    }
    if spec.cap_drop:
        security["capabilities"] = {"drop": [c.removeprefix("CAP_") for c in spec.cap_drop]}
    if spec.user is not None:
        match = _NUMERIC_USER.match(spec.user)
        assert match is not None
        security["runAsUser"] = int(match.group(1))
        if match.group(2) is not None:
            security["runAsGroup"] = int(match.group(2))
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.image,
        # Pulled once per node, then every wake starts from the node's copy: no registry
        # round trip (or registry outage) on the way to serving, even for a ``:latest`` tag.
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"containerPort": spec.container_port, "protocol": "TCP"}],
        "env": [{"name": k, "value": v} for k, v in env.items()],
        "securityContext": security,
        # The kubelet puts the tail of the output in the termination message when the
        # container fails: a start that fails can say why without reading logs.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "readinessProbe": {
            "tcpSocket": {"port": spec.container_port},
            "periodSeconds": 1,
            "failureThreshold": 1,
        },
    }
    command = spec.container_command()
    if command is not None:
        # ``command`` is the image's CMD on the docker runtime: Kubernetes calls that ``args``.
        container["args"] = command
    if spec.workdir is not None:
        container["workingDir"] = spec.workdir
    res = spec.resources
    amounts: dict[str, str] = {}
    if res.cpus is not None:
        amounts["cpu"] = f"{max(1, round(res.cpus * 1000))}m"
    if res.memory is not None:
        amounts["memory"] = quantity(parse_memory(res.memory))
    if amounts:
        # Requests equal to limits: the scheduler reserves what the template allows.
        container["resources"] = {"requests": dict(amounts), "limits": dict(amounts)}
    mounts = [
        {"name": f"v{i}", "mountPath": v.target, "readOnly": v.read_only}
        for i, v in enumerate(spec.volumes)
    ]
    mounts += [{"name": f"t{i}", "mountPath": path} for i, path in enumerate(spec.tmpfs)]
    if spec.shm_size is not None:
        mounts.append({"name": "shm", "mountPath": "/dev/shm"})
    if mounts:
        container["volumeMounts"] = mounts
    return container


def _volumes(spec: ContainerSpec) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [
        {"name": f"v{i}", "persistentVolumeClaim": {"claimName": claim_name(v.name)}}
        for i, v in enumerate(spec.volumes)
    ]
    for i, (path, options) in enumerate(spec.tmpfs.items()):
        memory: dict[str, Any] = {"medium": "Memory"}
        size = _tmpfs_size(path, options)
        if size is not None:
            memory["sizeLimit"] = size
        volumes.append({"name": f"t{i}", "emptyDir": memory})
    if spec.shm_size is not None:
        volumes.append(
            {
                "name": "shm",
                "emptyDir": {
                    "medium": "Memory",
                    "sizeLimit": quantity(parse_shm_size(spec.shm_size)),
                },
            }
        )
    return volumes


def pod_manifest(spec: ContainerSpec, namespace: str) -> dict[str, Any]:
    """The session's Pod (validated first). Kept in a PodTemplate while it sleeps."""
    validate(spec)
    metadata = owner_metadata(spec.name, namespace, spec.labels)
    metadata["annotations"].update(
        {
            START_TIMEOUT_ANNOTATION: f"{spec.start_timeout:g}",
            STOP_TIMEOUT_ANNOTATION: f"{spec.stop_timeout:g}",
        }
    )
    body: dict[str, Any] = {
        # dormant starts it again itself (at wake): a container that exits is seen, not hidden.
        "restartPolicy": "Never",
        # A session runs a tenant's code: it gets no credentials for the cluster, and no
        # variables naming the namespace's services.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": math.ceil(spec.stop_timeout),
        "containers": [_container(spec)],
    }
    volumes = _volumes(spec)
    if volumes:
        body["volumes"] = volumes
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": body}


def pod_template_manifest(pod: Mapping[str, Any], session_volumes: list[str]) -> dict[str, Any]:
    """The PodTemplate that keeps a session's pod while it sleeps (the same name and labels)."""
    metadata = json.loads(json.dumps(pod["metadata"]))
    metadata["annotations"][SESSION_VOLUMES_ANNOTATION] = json.dumps(session_volumes)
    template = {"metadata": pod["metadata"], "spec": pod["spec"]}
    return {"apiVersion": "v1", "kind": "PodTemplate", "metadata": metadata, "template": template}


def claim_manifest(
    volume: VolumeMount, namespace: str, size: str, storage_class: str | None
) -> dict[str, Any]:
    """A volume's PersistentVolumeClaim (one node writes it: ReadWriteOnce)."""
    metadata = owner_metadata(claim_name(volume.name), namespace, volume.labels)
    metadata["annotations"][VOLUME_ANNOTATION] = volume.name
    spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": size}},
    }
    if storage_class is not None:
        spec["storageClassName"] = storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": metadata,
        "spec": spec,
    }


def session_of(meta: Mapping[str, Any]) -> str | None:
    return original_labels(meta).get(SESSION_LABEL)


def is_managed(meta: Mapping[str, Any]) -> bool:
    """Whether an object carries ``dormant.managed=true`` (checked here as well: a server may
    ignore a label selector, as kmock's emulator does)."""
    return (meta.get("labels") or {}).get(MANAGED_LABEL) == "true"
