"""Configuration: ``DORMANT_*`` environment variables over an optional ``dormant.toml``.

With neither, dormant runs on SQLite (``./dormant.db``) with the ``process`` runtime and a default
template. Every value is validated here, at the boundary, with an error that names the setting.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from dormant.engine import Catalog, Template
from dormant.engine.limits import Limits
from dormant.engine.ports import parse_port_range
from dormant.engine.probes import Probe, ProbeKind
from dormant.engine.volumes import VolumeTemplate, check_pattern, pattern_fields, render_name
from dormant.errors import InvalidInput
from dormant.policy import (
    ADAPTIVE_PRESET,
    DEFAULT_PRESET,
    PRESETS,
    PolicySettings,
    adaptive_policy,
    build_adaptive,
    build_policy,
)
from dormant.policy.durations import parse_duration
from dormant.runtimes import BindMount, ContainerSpec, Resources, VolumeMount
from dormant.runtimes.base import RETAIN_SESSION, RETAIN_USER
from dormant.runtimes.process import resolve_user

KNOWN_RUNTIMES = ("process", "docker", "swarm", "kubernetes")
#: Runtimes that run an image (a template names ``image`` and ``port``; volumes, networks,
#: isolation apply). Each checks what it cannot do in its ``Runtime.validate``.
CONTAINER_RUNTIMES = ("docker", "swarm", "kubernetes")
_MEMORY = re.compile(r"^(\d+(?:\.\d+)?)([kmg]?)b?$", re.IGNORECASE)
_MEMORY_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_ENV_PATTERN = re.compile(r"^[A-Za-z0-9_*?]{1,128}$")


class ResourcesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cpus: float | None = Field(default=None, gt=0, le=64)
    memory: str | None = None
    pids_limit: int | None = Field(default=None, ge=1, le=100_000)

    @field_validator("memory")
    @classmethod
    def _memory(cls, value: str | None) -> str | None:
        if value is None:
            return None
        match = _MEMORY.match(value.strip())
        if not match:
            raise ValueError("memory must look like 512m or 2g")
        size = float(match.group(1)) * _MEMORY_UNITS[match.group(2).lower()]
        if not 6 * 1024**2 <= size <= 256 * 1024**3:  # Docker refuses less than 6 MiB
            raise ValueError("memory must be between 6m and 256g")
        return value.strip().lower()


class ProxyActivityConfig(BaseModel):
    """``[templates.NAME.proxy_activity]``: ``ignore`` lists requests that are only polling or
    health checks (``"GET /api/status"``, ``"/metrics"``, ``*`` wildcards); ``streaming``
    (``"background"``, the default, or ``"ignore"``) says whether a long response to an open
    client keeps the session busy (up to the policy's ``max_busy``)."""

    model_config = ConfigDict(extra="forbid")
    ignore: list[str] = Field(default_factory=list, max_length=200)
    streaming: str = Field(default="background", pattern="^(background|ignore)$")

    @field_validator("ignore")
    @classmethod
    def _ignore(cls, rules: list[str]) -> list[str]:
        for rule in rules:
            method, sep, path = rule.strip().partition(" ")
            pattern = path.strip() if sep else method
            if not pattern.startswith(("/", "*")) or (sep and not method.isalpha()):
                raise ValueError(
                    f"proxy_activity.ignore entry {rule!r} must look like '/path' or "
                    "'GET /path' (with * wildcards)"
                )
        return rules


class ReadyConfig(BaseModel):
    """``ready = {http = "/healthz"}`` (2xx/3xx passes), ``{tcp = true}`` (the default: the port
    accepts a connection) or ``{exec = ["cmd", "arg"]}`` (docker: exit status 0 passes), with
    a ``timeout`` per probe (seconds)."""

    model_config = ConfigDict(extra="forbid")
    http: str | None = Field(default=None, max_length=2000, pattern=r"^/[^\s]*$")
    tcp: bool | None = None
    exec: list[str] | None = Field(default=None, min_length=1, max_length=64)
    timeout: float = Field(default=2.0, gt=0, le=60)

    @model_validator(mode="after")
    def _one(self) -> ReadyConfig:
        kinds = [k for k in (self.http, self.tcp, self.exec) if k is not None]
        if len(kinds) > 1:
            raise ValueError("ready takes one of http, tcp or exec")
        if self.tcp is False:
            raise ValueError("ready.tcp can only be true (leave it out for the default)")
        return self

    def probe(self) -> Probe:
        if self.http is not None:
            return Probe(ProbeKind.HTTP, path=self.http, timeout=self.timeout)
        if self.exec is not None:
            return Probe(ProbeKind.EXEC, command=tuple(self.exec), timeout=self.timeout)
        return Probe(ProbeKind.TCP, timeout=self.timeout)


class VolumeConfig(BaseModel):
    """``volumes = { "home-{tenant}-{user}" = { target = "/home/dev", retain = "user" } }``;
    the short form ``"home-{tenant}-{user}" = "/home/dev"`` takes the defaults. ``retain``
    defaults to ``"session"`` when the name holds ``{session}``, else ``"user"``."""

    model_config = ConfigDict(extra="forbid")
    target: str = Field(min_length=2, max_length=1024)
    retain: str | None = Field(default=None, pattern="^(user|session)$")
    read_only: bool = False


class BindConfig(BaseModel):
    """``binds = { "/srv/shared" = { target = "/shared", read_only = false } }``; the short
    form ``"/srv/shared" = "/shared"`` is read-only. The host path must be inside the
    operator's ``bind_allow``."""

    model_config = ConfigDict(extra="forbid")
    target: str = Field(min_length=2, max_length=1024)
    read_only: bool = True


#: Placeholder values used to check volume names and mounts at load.
_SAMPLE_VALUES = {"tenant": "t", "user": "u", "session": "s", "template": "p"}


class TemplateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    runtime: str = "process"
    command: list[str] | None = None
    image: str | None = Field(default=None, max_length=300)
    port: int | None = Field(default=None, ge=1, le=65535)
    env: dict[str, str] = Field(default_factory=dict)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    policy: str = "default"
    start_timeout: float = Field(default=30.0, gt=0, le=600)
    stop_timeout: float = Field(default=5.0, ge=0, le=300)
    # Isolation (docker runtime): read-only root with tmpfs mounts ({"/tmp": "size=64m"}),
    # capabilities to drop (["ALL"]), no-new-privileges, and the network mode.
    read_only: bool = False
    tmpfs: dict[str, str] = Field(default_factory=dict, max_length=32)
    cap_drop: list[str] = Field(default_factory=list, max_length=64)
    no_new_privileges: bool = False
    network_mode: str | None = Field(default=None, max_length=128)
    #: Docker runtime: a network the sessions' containers join (made if missing) instead of
    #: publishing a host port; dormant reaches them at their address on it, and allocates no
    #: host port for them.
    network: str | None = Field(default=None, min_length=1, max_length=128)
    #: Variables a create request may set (names or ``fnmatch`` patterns like ``GIT_*``); none
    #: by default. ``env`` above is the operator's and is not checked.
    env_allow: list[str] = Field(default_factory=list, max_length=256)
    #: Process runtime: run the sessions as this host user (name or uid); needs dormant to run
    #: as root unless it is dormant's own user. Docker runtime: the container's user (name,
    #: uid or uid:gid).
    user: str | None = Field(default=None, min_length=1, max_length=129)
    #: Docker runtime: named volumes (``{tenant}``, ``{user}``, ``{session}``, ``{template}``
    #: in the name) with a retain rule, host paths from ``bind_allow``, the working directory
    #: and the size of /dev/shm.
    volumes: dict[str, str | VolumeConfig] = Field(default_factory=dict, max_length=32)
    binds: dict[str, str | BindConfig] = Field(default_factory=dict, max_length=32)
    workdir: str | None = Field(default=None, min_length=1, max_length=1024)
    shm_size: str | None = Field(default=None, min_length=1, max_length=32)
    #: Process runtime: a home directory (``HOME``, ``{home}``) kept per ``"user"`` (across
    #: that user's sessions, like a ``retain = "user"`` volume) or per ``"session"``.
    home: str | None = Field(default=None, pattern="^(user|session)$")
    #: The session proxy: seconds a request waits for a wake (then 503 + Retry-After); no
    #: access cookie needed (``public``); where browsers without one go (``login_url``, given
    #: ``?next=``); and ``proxy_activity``: what traffic counts as activity.
    wake_timeout: float = Field(default=60.0, gt=0, le=3600)
    public: bool = False
    login_url: str | None = Field(default=None, max_length=2000, pattern=r"^(https?://|/)\S*$")
    proxy_activity: ProxyActivityConfig = Field(default_factory=lambda: ProxyActivityConfig())
    #: Health: how serving is judged (``ready``), how often it is checked while running
    #: (seconds; 0: never), after how many misses in a row it is restarted, and how many
    #: restarts within an hour before it is failed.
    ready: ReadyConfig = Field(default_factory=lambda: ReadyConfig())
    health_interval: float = Field(default=120.0, ge=0, le=86400)
    health_failures: int = Field(default=3, ge=1, le=100)
    restart: int = Field(default=3, ge=0, le=100)

    @field_validator("runtime")
    @classmethod
    def _runtime(cls, value: str) -> str:
        if value not in KNOWN_RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(KNOWN_RUNTIMES)}")
        return value

    @field_validator("env_allow")
    @classmethod
    def _env_allow(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            if not _ENV_PATTERN.match(pattern):
                raise ValueError(
                    f"env_allow entry {pattern!r} must be a variable name or a pattern of "
                    "A-Z a-z 0-9 _ * ? (1-128 characters)"
                )
        return patterns

    @model_validator(mode="after")
    def _user_runtime(self) -> TemplateConfig:
        if self.ready.exec is not None and self.runtime not in CONTAINER_RUNTIMES:
            raise ValueError("ready.exec runs in a container: it needs a container runtime")
        if self.user is not None and self.runtime == "process":
            try:
                resolve_user(self.user)
            except InvalidInput as exc:
                raise ValueError(f"user: {exc}") from None
        if self.network is not None and self.runtime not in CONTAINER_RUNTIMES:
            raise ValueError("network is for container runtimes (a process serves on a host port)")
        if self.runtime not in CONTAINER_RUNTIMES:
            for name in ("volumes", "binds", "workdir", "shm_size"):
                if getattr(self, name):
                    raise ValueError(
                        f"{name} is for container runtimes (a process template has home = "
                        '"user" or "session" for a kept directory)'
                    )
        elif self.home is not None:
            raise ValueError("home is for the process runtime (a container template has volumes)")
        return self

    def volume_templates(self) -> tuple[VolumeTemplate, ...]:
        """``volumes`` as the engine takes them (checked: names, placeholders, rules)."""
        found = []
        for pattern, raw in self.volumes.items():
            volume = VolumeConfig(target=raw) if isinstance(raw, str) else raw
            retain = volume.retain or (
                RETAIN_SESSION if "session" in pattern_fields(pattern) else RETAIN_USER
            )
            check_pattern(pattern, retain)
            found.append(VolumeTemplate(pattern, volume.target, retain, volume.read_only))
        return tuple(found)

    def bind_mounts(self) -> tuple[BindMount, ...]:
        """``binds`` with their host paths resolved (symbolic links, ``..``); the allow-list
        is checked by ``Settings.catalog``."""
        mounts = []
        for source, raw in self.binds.items():
            bind = BindConfig(target=raw) if isinstance(raw, str) else raw
            real = os.path.realpath(source) if source.startswith("/") else source
            mounts.append(BindMount(real, bind.target, bind.read_only))
        return tuple(mounts)

    @model_validator(mode="after")
    def _container(self) -> TemplateConfig:
        if self.runtime in CONTAINER_RUNTIMES:
            from dormant.runtimes import runtime_class

            try:
                volumes = tuple(
                    VolumeMount(
                        render_name(v.pattern, _SAMPLE_VALUES), v.target, v.retain, {}, v.read_only
                    )
                    for v in self.volume_templates()
                )
            except InvalidInput as exc:
                raise ValueError(f"volumes: {exc}") from None
            if not self.image:
                raise ValueError(f"the {self.runtime} runtime needs an image")
            if self.port is None:
                raise ValueError(
                    f"the {self.runtime} runtime needs port (the port inside the container)"
                )
            probe = ContainerSpec(
                name="dormant-template-check",
                session_id="check",
                labels={},
                port=None if self.network is not None else 1024,
                command=self.command,
                image=self.image,
                env=self.env,
                container_port=self.port,
                resources=Resources(**self.resources.model_dump()),
                start_timeout=self.start_timeout,
                stop_timeout=self.stop_timeout,
                read_only=self.read_only,
                tmpfs=self.tmpfs,
                cap_drop=tuple(self.cap_drop),
                no_new_privileges=self.no_new_privileges,
                network_mode=self.network_mode,
                network=self.network,
                user=self.user,
                volumes=volumes,
                binds=self.bind_mounts(),
                workdir=self.workdir,
                shm_size=self.shm_size,
            )
            try:
                runtime_class(self.runtime).validate(probe)
            except InvalidInput as exc:
                raise ValueError(str(exc)) from None
        return self


class LimitsConfig(BaseModel):
    """``[limits]`` (or ``DORMANT_LIMITS_<NAME>``): admission. Running sessions in all, per
    tenant (``tenants = { acme = 10 }`` overrides ``running_per_tenant`` for a tenant; the
    variable takes ``acme=10,beta=2``), per user; sessions running or sleeping per user. A
    create or wake beyond one waits in a FIFO queue for up to ``queue_timeout``. Nothing set:
    nothing is queued."""

    model_config = ConfigDict(extra="forbid")
    running: int | None = Field(default=None, ge=1, le=10_000_000)
    running_per_tenant: int | None = Field(default=None, ge=1, le=10_000_000)
    tenants: dict[str, int] = Field(default_factory=dict, max_length=10_000)
    running_per_user: int | None = Field(default=None, ge=1, le=10_000_000)
    sessions_per_user: int | None = Field(default=None, ge=1, le=10_000_000)
    queue_timeout: float = Field(default=300.0, gt=0, le=86400)
    evict_idle: bool = False
    active_within: float = Field(default=120.0, ge=0, le=86400)

    @field_validator("queue_timeout", "active_within", mode="before")
    @classmethod
    def _duration(cls, value: object) -> float:
        return parse_duration(value, name="duration")

    @field_validator("tenants", mode="before")
    @classmethod
    def _tenants(cls, value: object) -> object:
        if isinstance(value, str):
            pairs = [part.strip() for part in value.split(",") if part.strip()]
            parsed: dict[str, str] = {}
            for pair in pairs:
                name, sep, limit = pair.partition("=")
                if not sep or not name.strip():
                    raise ValueError(f"tenants must look like name=N[,name=N], not {pair!r}")
                parsed[name.strip()] = limit.strip()
            return parsed
        return value

    @field_validator("tenants")
    @classmethod
    def _positive(cls, value: dict[str, int]) -> dict[str, int]:
        for name, limit in value.items():
            if limit < 1:
                raise ValueError(f"tenants.{name} must be at least 1")
        return value

    def to_limits(self) -> Limits:
        return Limits(
            running=self.running,
            running_per_tenant=self.running_per_tenant,
            tenants=dict(self.tenants),
            running_per_user=self.running_per_user,
            sessions_per_user=self.sessions_per_user,
            queue_timeout=self.queue_timeout,
            evict_idle=self.evict_idle,
            active_within=self.active_within,
        )


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    database_url: str = "sqlite+aiosqlite:///./dormant.db"
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    port_range: str = "8000-8100"
    reconcile_interval: float = Field(default=120.0, gt=0, le=86400)
    data_dir: str | None = None
    flush_interval: float = Field(default=1.0, gt=0, le=1.0)
    runtime_concurrency: int = Field(default=8, ge=1, le=256)
    #: The Docker Engine API of the docker runtime (``DORMANT_DOCKER_HOST``); default
    #: ``DOCKER_HOST`` or ``unix:///var/run/docker.sock``.
    docker_host: str | None = Field(default=None, max_length=500)
    #: ``key=value[,key=value]``: labels that confine the docker runtime to its own containers
    #: (several deployments or test runs on one engine); ``DORMANT_DOCKER_SCOPE``. The swarm
    #: runtime takes the same scope for its services.
    docker_scope: str | None = Field(default=None, max_length=500)
    #: The swarm runtime's Docker Engine API, a Swarm manager (``DORMANT_SWARM_HOST``);
    #: default ``docker_host``'s default.
    swarm_host: str | None = Field(default=None, max_length=500)
    #: The volume driver of the volumes the swarm runtime makes (``DORMANT_SWARM_VOLUME_DRIVER``,
    #: a plugin every node has): then volumes are not pinned to the node that made them.
    swarm_volume_driver: str | None = Field(
        default=None, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:/-]*$"
    )
    #: The kubernetes runtime: the namespace its pods and claims live in, and where its
    #: credentials come from: in-cluster (a service account) when dormant runs in a pod, else
    #: this kubeconfig file (default ``KUBECONFIG`` or ``~/.kube/config``) and context.
    kubernetes_namespace: str = Field(
        default="default", max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
    )
    kubernetes_kubeconfig: str | None = Field(default=None, max_length=1000)
    kubernetes_context: str | None = Field(default=None, max_length=253)
    #: How long operations wait for an unreachable runtime before failing (seconds).
    runtime_outage_patience: float = Field(default=300.0, ge=0, le=86400)
    #: How long background operations wait out an unreachable database (seconds); a store
    #: error never turns a runtime step that worked into ``failed``.
    store_outage_patience: float = Field(default=300.0, ge=0, le=86400)
    #: Deleted sessions (rows, timelines, operations) are purged this long after deletion
    #: (``DORMANT_RETENTION``: seconds or ``"30d"``).
    retention: float = Field(default=30 * 86400.0, ge=60, le=3660 * 86400)
    #: The reconciler judges a container an orphan only once it, and its session's deletion,
    #: are this old (seconds): what happened moments ago may not be in both views yet.
    reconcile_settle: float = Field(default=30.0, ge=0, le=3600)
    rate_limit: float = Field(default=200.0, gt=0)
    rate_burst: int = Field(default=400, ge=1)
    max_body_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024**2)
    #: Seconds a request has to finish its headers (from its first byte) and its body (from
    #: the end of its headers); slower ones get 408 and are closed.
    http_header_timeout: float = Field(default=10.0, gt=0, le=3600)
    http_body_timeout: float = Field(default=30.0, gt=0, le=3600)
    #: Open HTTP and WebSocket connections at most (kept under the open-file limit).
    http_max_connections: int = Field(default=2000, ge=1, le=1_000_000)
    #: Failed API keys per client address within the window before it gets 429 for a window.
    auth_failure_limit: int = Field(default=20, ge=1, le=100_000)
    auth_failure_window: float = Field(default=60.0, gt=0, le=86400)
    instance_id: str | None = None
    default_template: str = "default"
    log_level: str = "INFO"
    log_format: str = "json"
    policy: str = DEFAULT_PRESET
    templates: dict[str, TemplateConfig] = Field(default_factory=dict)
    policies: dict[str, dict[str, Any]] = Field(default_factory=dict)
    #: ``DORMANT_POLICY_<SETTING>`` overrides of the default policy.
    policy_overrides: dict[str, Any] = Field(default_factory=dict)
    #: Real-time gateway: the JWT secret (else kept in ``dormant-gateway.secret``, 0600, next to
    #: the database), token lifetime, capacity, and activity events per second per connection.
    gateway_secret: str | None = Field(default=None, min_length=32, max_length=512)
    gateway_token_ttl: float = Field(default=600.0, gt=0, le=86400)
    gateway_max_connections: int = Field(default=10_000, ge=1, le=1_000_000)
    gateway_max_connections_per_session: int = Field(default=100, ge=1, le=100_000)
    gateway_activity_rate: float = Field(default=20.0, gt=0, le=10_000)
    gateway_activity_burst: int = Field(default=40, ge=1, le=100_000)
    gateway_cors_origins: str = "*"
    #: An Engine.IO socket without a valid Socket.IO connect by then is closed (seconds).
    gateway_handshake_timeout: float = Field(default=10.0, gt=0, le=600)
    #: How often live connections' API keys are checked for revocation (and how long a key
    #: lookup is cached), seconds.
    gateway_key_check_interval: float = Field(default=5.0, gt=0, le=3600)
    #: Several replicas: a Redis URL (``DORMANT_REDIS_URL``, e.g. ``redis://host:6379/0``)
    #: carries the gateway's rooms, session events, presence and broadcasts between them; the
    #: channel (also the prefix of its keys) must be the same on every replica of a deployment.
    #: Without a URL the gateway is one process and needs no Redis.
    redis_url: str | None = None
    redis_channel: str = Field(default="dormant", min_length=1, max_length=200)
    #: The session proxy (wake on request): its port (0: off), address (default ``host``),
    #: the domain that routes ``{session}.{domain}`` by host, the address clients use to reach
    #: it (links and the API's ``url``; default ``http://proxy_host:proxy_port``), upstream
    #: connect and read timeouts (seconds), and how long an access cookie lasts.
    proxy_port: int = Field(default=8081, ge=0, le=65535)
    proxy_host: str | None = Field(default=None, max_length=200)
    proxy_domain: str | None = Field(
        default=None, max_length=200, pattern=r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$"
    )
    proxy_public_url: str | None = Field(default=None, max_length=500, pattern=r"^https?://\S+$")
    proxy_connect_timeout: float = Field(default=5.0, gt=0, le=600)
    proxy_read_timeout: float = Field(default=300.0, gt=0, le=86400)
    proxy_cookie_ttl: float = Field(default=86400.0, ge=60, le=30 * 86400)
    #: Addresses whose X-Forwarded-For/-Proto the proxy believes (a TLS terminator in front),
    #: comma-separated; seconds a kept-alive client may stay idle (and have to send a head);
    #: open client connections at most.
    proxy_trusted_peers: str = Field(default="127.0.0.1,::1", max_length=2000)
    proxy_idle_timeout: float = Field(default=75.0, gt=0, le=3600)
    proxy_max_connections: int = Field(default=10_000, ge=1, le=1_000_000)
    #: Host paths (and what is below them) that templates may bind-mount into containers
    #: (``DORMANT_BIND_ALLOW``: comma-separated); none by default.
    bind_allow: list[str] = Field(default_factory=list, max_length=64)
    #: A ``retain = "user"`` volume (or process home) is removed this long after its owner's
    #: last session ended (at most ``retention``: the store forgets ended sessions then), by
    #: a job that runs every ``volume_prune_interval`` seconds.
    volume_retention: float = Field(default=30 * 86400.0, ge=0, le=3660 * 86400)
    volume_prune_interval: float = Field(default=600.0, gt=0, le=86400)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    #: The operator's console (``/ui``): how long a sign-in lasts (seconds), and what one
    #: container-hour costs (in ``currency``), to show what sleeping saved in money as well as
    #: in hours (0: hours only).
    console_session_ttl: float = Field(default=8 * 3600.0, ge=60, le=30 * 86400)
    price_per_container_hour: float = Field(default=0.0, ge=0, le=1_000_000)
    currency: str = Field(default="USD", min_length=1, max_length=8, pattern=r"^[A-Za-z$€£¥]+$")

    @field_validator(
        "retention",
        "store_outage_patience",
        "reconcile_settle",
        "volume_retention",
        "volume_prune_interval",
        mode="before",
    )
    @classmethod
    def _duration(cls, value: object) -> float:
        return parse_duration(value, name="duration")

    @field_validator("bind_allow", mode="before")
    @classmethod
    def _bind_allow(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list):
            resolved = []
            for path in value:
                if not isinstance(path, str) or not path.startswith("/"):
                    raise ValueError(f"entry {path!r} must be an absolute host path")
                real = os.path.realpath(path)
                if real == "/":
                    raise ValueError(f"entry {path!r} would allow every host path")
                resolved.append(real)
            return resolved
        return value

    @model_validator(mode="after")
    def _volume_retention(self) -> Settings:
        if self.volume_retention > self.retention:
            raise ValueError(
                "volume_retention must not exceed retention: ended sessions are forgotten "
                "after retention, and a user volume's retention counts from the last one"
            )
        return self

    def check_binds(
        self, template: str, given: tuple[str, ...], binds: tuple[BindMount, ...]
    ) -> None:
        """Refuse (``InvalidInput`` naming the setting) a bind outside ``bind_allow``; ``binds``
        have their host paths (``given``) resolved already (symbolic links, ``..``)."""
        for source, bind in zip(given, binds, strict=True):
            real = bind.source
            inside = any(real == root or real.startswith(root + "/") for root in self.bind_allow)
            if not inside:
                allowed = ", ".join(self.bind_allow) or "none"
                raise InvalidInput(
                    f"templates.{template}.binds: host path {source!r} (resolved: {real}) "
                    f"is not inside bind_allow (DORMANT_BIND_ALLOW: {allowed})"
                )

    @field_validator("port_range")
    @classmethod
    def _ports(cls, value: str) -> str:
        parse_port_range(value)
        return value

    @field_validator("docker_scope")
    @classmethod
    def _scope(cls, value: str | None) -> str | None:
        if value is not None:
            cls.parse_scope(value)
        return value

    @staticmethod
    def parse_scope(value: str | None) -> dict[str, str]:
        scope: dict[str, str] = {}
        for part in (value or "").split(","):
            key, sep, label = part.strip().partition("=")
            if not part.strip():
                continue
            if not sep or not key or not label:
                raise ValueError(f"docker_scope must look like key=value[,key=value], not {part!r}")
            scope[key] = label
        return scope

    def docker_scope_labels(self) -> dict[str, str]:
        return self.parse_scope(self.docker_scope)

    def resolved_data_dir(self) -> Path:
        if self.data_dir:
            return Path(self.data_dir)
        return self.database_dir() / "dormant-data"

    def database_dir(self) -> Path:
        prefix = "sqlite+aiosqlite:///"
        if self.database_url.startswith(prefix):
            return Path(self.database_url[len(prefix) :]).resolve().parent
        return Path.cwd()

    def admin_key_file(self) -> Path:
        return self.database_dir() / "dormant-admin.key"

    def gateway_secret_file(self) -> Path:
        return self.database_dir() / "dormant-gateway.secret"

    def catalog(self) -> Catalog:
        policies: dict[str, PolicySettings] = {**PRESETS, ADAPTIVE_PRESET: adaptive_policy()}
        for name, raw in self.policies.items():
            body = dict(raw)
            base = str(body.pop("preset", DEFAULT_PRESET))
            adaptive = base == ADAPTIVE_PRESET  # learned sleep_after (dormant.policy.adaptive)
            policies[name] = build_adaptive(body) if adaptive else build_policy(base, body)
        if self.policy == ADAPTIVE_PRESET:
            policies["default"] = build_adaptive(self.policy_overrides)
        elif self.policy not in self.policies:  # a preset; a [policies.NAME] is taken below
            policies["default"] = build_policy(self.policy, self.policy_overrides)
        if self.policy in self.policies:
            policies["default"] = policies[self.policy].with_overrides(self.policy_overrides)
        templates = {"default": Template(name="default", policy="default")}
        for name, cfg in self.templates.items():
            if cfg.policy not in policies:
                raise InvalidInput(f"templates.{name}.policy: unknown policy {cfg.policy!r}")
            binds = cfg.bind_mounts()
            self.check_binds(name, tuple(cfg.binds), binds)
            templates[name] = Template(
                name=name,
                runtime=cfg.runtime,
                command=cfg.command,
                image=cfg.image,
                port=cfg.port,
                env=cfg.env,
                resources=Resources(**cfg.resources.model_dump()),
                policy=cfg.policy,
                start_timeout=cfg.start_timeout,
                stop_timeout=cfg.stop_timeout,
                read_only=cfg.read_only,
                tmpfs=dict(cfg.tmpfs),
                cap_drop=tuple(cfg.cap_drop),
                no_new_privileges=cfg.no_new_privileges,
                network_mode=cfg.network_mode,
                network=cfg.network,
                env_allow=tuple(cfg.env_allow),
                user=cfg.user,
                volumes=cfg.volume_templates(),
                binds=binds,
                home=cfg.home,
                workdir=cfg.workdir,
                shm_size=cfg.shm_size,
                wake_timeout=cfg.wake_timeout,
                public=cfg.public,
                login_url=cfg.login_url,
                proxy_ignore=tuple(cfg.proxy_activity.ignore),
                proxy_streaming=cfg.proxy_activity.streaming == "background",
                ready=cfg.ready.probe(),
                health_interval=cfg.health_interval,
                health_failures=cfg.health_failures,
                restart=cfg.restart,
            )
        if self.default_template not in templates:
            raise InvalidInput(f"default_template {self.default_template!r} is not defined")
        return Catalog(
            templates=templates, policies=policies, default_template=self.default_template
        )


def load_settings(
    config: str | Path | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """File (``--config`` or ``DORMANT_CONFIG``) first, environment variables over it."""
    env = dict(os.environ if environ is None else environ)
    data: dict[str, Any] = {}
    path = config or env.get("DORMANT_CONFIG")
    if path:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise InvalidInput(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise InvalidInput(f"config file {path}: {exc}") from None
    fields = set(Settings.model_fields) - {"templates", "policies", "policy_overrides", "limits"}
    overrides: dict[str, Any] = dict(data.pop("policy_overrides", {}) or {})
    limits: dict[str, Any] = dict(data.pop("limits", {}) or {})
    for key, value in env.items():
        if not key.startswith("DORMANT_") or key == "DORMANT_CONFIG":
            continue
        name = key[len("DORMANT_") :].lower()
        if name in fields:
            data[name] = value
        elif name.startswith("policy_"):
            overrides[name[len("policy_") :]] = value
        elif name.startswith("limits_"):
            limits[name[len("limits_") :]] = value
    data["policy_overrides"] = overrides
    data["limits"] = limits
    try:
        settings = Settings(**data)
        settings.catalog()  # validates templates and policies now, not at first use
    except ValidationError as exc:
        raise InvalidInput(_explain(exc)) from None
    return settings


def _explain(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        parts.append(f"{where}: {err['msg']}")
    return "invalid configuration: " + "; ".join(parts)
