"""Templates of the docker runtime checked and turned into the Engine API's container body:
every value a tenant's template can carry is validated here, before any engine is asked (the
engines accept e.g. a negative memory limit). Used by the swarm and kubernetes runtimes too."""

from __future__ import annotations

import logging
import math
import re
from typing import Any

from dormant.errors import (
    InvalidInput,
)
from dormant.runtimes.base import (
    RETAIN_RULES,
    ContainerSpec,
)

log = logging.getLogger("dormant.runtimes.docker")

# Limits checked before the engine is asked (it accepts e.g. a negative memory limit).
MIN_MEMORY = 6 * 1024**2  # Docker refuses less than 6 MiB
MAX_MEMORY = 256 * 1024**3
MAX_CPUS = 256.0
MAX_PIDS = 1_000_000
MAX_TIMEOUT = 3600.0
_MEMORY = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_CAPABILITY = re.compile(r"^(ALL|(CAP_)?[A-Z][A-Z0-9_]{1,40})$")
_NETWORK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_TMPFS_OPTIONS = re.compile(r"^[A-Za-z0-9=,._-]{0,200}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,200}$")
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./-]{0,62}$")
_VOLUME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")
#: A container user: a name or uid, optionally ``:group`` (name or gid).
_USER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,63})?$")
_PATH_CHARS = re.compile(r"^/[^\x00-\x1f\x7f,:]{0,1023}$")
MIN_SHM = 1024**2
MAX_SHM = 64 * 1024**3


def parse_memory(value: str | int) -> int:
    """``"512m"``, ``"2g"``, ``"1.5GiB"`` or a number of bytes -> bytes, within Docker's bounds."""
    if isinstance(value, bool):
        raise InvalidInput(f"memory must be a size like 512m, not {value!r}")
    if isinstance(value, int):
        size = float(value)
    else:
        match = _MEMORY.match(str(value).strip())
        if not match:
            raise InvalidInput(f"memory must look like 512m or 2g, got {value!r}")
        size = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if not MIN_MEMORY <= size <= MAX_MEMORY:
        raise InvalidInput(f"memory must be between 6m and 256g, got {value!r}")
    return int(size)


def parse_shm_size(value: str | int) -> int:
    """``"64m"``, ``"1g"`` or bytes -> bytes, between 1m and 64g."""
    if isinstance(value, bool):
        raise InvalidInput(f"shm_size must be a size like 64m, not {value!r}")
    match = _MEMORY.match(str(value).strip())
    if not match:
        raise InvalidInput(f"shm_size must look like 64m or 1g, got {value!r}")
    size = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if not MIN_SHM <= size <= MAX_SHM:
        raise InvalidInput(f"shm_size must be between 1m and 64g, got {value!r}")
    return int(size)


def check_path(what: str, path: str, *, root_ok: bool = False) -> None:
    """An absolute path without ``..``, control characters, ``,`` or ``:`` (``InvalidInput``
    naming ``what`` otherwise)."""
    if (
        not isinstance(path, str)
        or not _PATH_CHARS.match(path)
        or ".." in path.split("/")
        or (path.rstrip("/") == "" and not root_ok)
    ):
        raise InvalidInput(
            f"{what} must be an absolute path{'' if root_ok else ' below /'} without '..', "
            f"',' or ':', got {path!r}"
        )


def validate_mounts(spec: ContainerSpec) -> None:
    """Volumes and binds: valid names and paths, a known retain rule, one mount per target."""
    targets: dict[str, str] = {path.rstrip("/"): "tmpfs" for path in spec.tmpfs}
    names: set[str] = set()
    for volume in spec.volumes:
        if not _VOLUME.match(volume.name):
            raise InvalidInput(f"volumes: {volume.name!r} is not a valid volume name")
        if volume.retain not in RETAIN_RULES:
            raise InvalidInput(f"volumes: {volume.name}: unknown retain rule {volume.retain!r}")
        if volume.name in names:
            raise InvalidInput(f"volumes: {volume.name} is mounted twice")
        names.add(volume.name)
        check_path(f"volumes: the target of {volume.name}", volume.target)
        _claim_target(targets, volume.target, f"volume {volume.name}")
    for bind in spec.binds:
        check_path("binds: a host path", bind.source)
        check_path(f"binds: the target of {bind.source}", bind.target)
        _claim_target(targets, bind.target, f"bind {bind.source}")


def _claim_target(targets: dict[str, str], target: str, what: str) -> None:
    key = target.rstrip("/")
    if key in targets:
        raise InvalidInput(f"{what} and {targets[key]} are both mounted at {target}")
    targets[key] = what


def validate_spec(spec: ContainerSpec) -> None:
    """Refuse, with a message that names the setting, anything the engine should not be given."""
    if not _NAME.match(spec.name):
        raise InvalidInput(f"invalid container name {spec.name!r}")
    if not spec.image or len(spec.image) > 300 or any(c.isspace() for c in spec.image):
        raise InvalidInput(f"the docker runtime needs an image; got {spec.image!r}")
    if spec.network is not None:
        if not _NETWORK.match(spec.network) or spec.network in ("none", "host", "bridge"):
            raise InvalidInput(
                f"network {spec.network!r} is not the name of a user-defined network"
            )
        if spec.network_mode is not None:
            raise InvalidInput("network and network_mode exclude each other; set one")
        if spec.port is not None:
            raise InvalidInput("a session on a network has no host port")
    elif spec.port is None:
        raise InvalidInput("the docker runtime needs a host port for every session")
    elif not 1024 <= spec.port <= 65535:
        raise InvalidInput(f"host port {spec.port} is outside 1024-65535")
    if spec.container_port is None:
        raise InvalidInput("the docker runtime needs the template's port (inside the container)")
    if not 1 <= spec.container_port <= 65535:
        raise InvalidInput(f"container port {spec.container_port} is outside 1-65535")
    res = spec.resources
    if res.cpus is not None and (not math.isfinite(res.cpus) or not 0.01 <= res.cpus <= MAX_CPUS):
        raise InvalidInput(f"cpus must be between 0.01 and {MAX_CPUS:g}, got {res.cpus!r}")
    if res.memory is not None:
        parse_memory(res.memory)
    if res.pids_limit is not None and not 1 <= res.pids_limit <= MAX_PIDS:
        raise InvalidInput(f"pids_limit must be between 1 and {MAX_PIDS}, got {res.pids_limit}")
    for what, value in (("start_timeout", spec.start_timeout), ("stop_timeout", spec.stop_timeout)):
        if not math.isfinite(value) or not 0 <= value <= MAX_TIMEOUT:
            raise InvalidInput(f"{what} must be between 0 and {MAX_TIMEOUT:g}s, got {value!r}")
    for path, options in spec.tmpfs.items():
        if not path.startswith("/") or ".." in path.split("/") or path == "/":
            raise InvalidInput(f"tmpfs path must be an absolute path below /, got {path!r}")
        if not _TMPFS_OPTIONS.match(options):
            raise InvalidInput(f"tmpfs options for {path} look wrong: {options!r}")
    for cap in spec.cap_drop:
        if not _CAPABILITY.match(cap):
            raise InvalidInput(f"cap_drop: {cap!r} is not a capability name (e.g. ALL, NET_RAW)")
    if spec.network_mode is not None and (
        not _NETWORK.match(spec.network_mode) or spec.network_mode.startswith("container")
    ):
        raise InvalidInput(f"network_mode {spec.network_mode!r} is not a network name")
    for key in spec.env:
        if not _ENV_NAME.match(key):
            raise InvalidInput(f"environment variable name {key!r} is not valid")
    if spec.user is not None and not _USER.match(spec.user):
        raise InvalidInput(
            f"user {spec.user!r} must be a user name or uid, optionally :group (name or gid)"
        )
    if spec.workdir is not None:
        check_path("workdir", spec.workdir, root_ok=True)
    if spec.shm_size is not None:
        parse_shm_size(spec.shm_size)
    validate_mounts(spec)


def container_config(spec: ContainerSpec) -> dict[str, Any]:
    """The Engine API body of ``POST /containers/create`` for ``spec`` (validated first)."""
    validate_spec(spec)
    assert spec.container_port is not None
    inner = f"{spec.container_port}/tcp"
    env = spec.container_env()
    host: dict[str, Any] = {
        "RestartPolicy": {"Name": "no"},
        "ReadonlyRootfs": spec.read_only,
    }
    if spec.port is not None and spec.network_mode not in ("none", "host"):
        host["PortBindings"] = {inner: [{"HostIp": "127.0.0.1", "HostPort": str(spec.port)}]}
    res = spec.resources
    if res.cpus is not None:
        host["NanoCpus"] = int(res.cpus * 1e9)
    if res.memory is not None:
        host["Memory"] = parse_memory(res.memory)
        host["MemorySwap"] = host["Memory"]  # no swap beyond the limit
    if res.pids_limit is not None:
        host["PidsLimit"] = res.pids_limit
    if spec.tmpfs:
        host["Tmpfs"] = dict(spec.tmpfs)
    if spec.cap_drop:
        host["CapDrop"] = list(spec.cap_drop)
    if spec.no_new_privileges:
        host["SecurityOpt"] = ["no-new-privileges"]
    if spec.network_mode is not None:
        host["NetworkMode"] = spec.network_mode
    if spec.network is not None:
        host["NetworkMode"] = spec.network
    if spec.shm_size is not None:
        host["ShmSize"] = parse_shm_size(spec.shm_size)
    mounts = [
        {"Type": "volume", "Source": v.name, "Target": v.target, "ReadOnly": v.read_only}
        for v in spec.volumes
    ] + [
        {"Type": "bind", "Source": b.source, "Target": b.target, "ReadOnly": b.read_only}
        for b in spec.binds
    ]
    if mounts:
        host["Mounts"] = mounts
    config: dict[str, Any] = {
        "Image": spec.image,
        "Env": [f"{k}={v}" for k, v in env.items()],
        "Labels": dict(spec.labels),
        "ExposedPorts": {inner: {}},
        "StopTimeout": math.ceil(spec.stop_timeout),
        "HostConfig": host,
    }
    command = spec.container_command()
    if command is not None:
        config["Cmd"] = command
    if spec.user is not None:
        config["User"] = spec.user
    if spec.workdir is not None:
        config["WorkingDir"] = spec.workdir
    return config
