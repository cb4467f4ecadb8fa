"""Templates (how a session's container is made) and the catalog of templates and policies."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from dormant.engine.probes import Probe
from dormant.engine.volumes import VolumeTemplate
from dormant.errors import InvalidInput
from dormant.policy import DEFAULT_PRESET, PRESETS, PolicySettings
from dormant.runtimes import Resources
from dormant.runtimes.base import BindMount, Runtime


@dataclass(frozen=True, slots=True)
class Template:
    name: str
    runtime: str = "process"
    command: list[str] | None = None
    image: str | None = None
    port: int | None = None  # the port inside the container; the process runtime uses the host port
    env: dict[str, str] = field(default_factory=dict)
    resources: Resources = field(default_factory=Resources)
    policy: str = DEFAULT_PRESET
    start_timeout: float = 30.0
    stop_timeout: float = 5.0
    # Isolation of container runtimes (see ContainerSpec).
    read_only: bool = False
    tmpfs: dict[str, str] = field(default_factory=dict)
    cap_drop: tuple[str, ...] = ()
    no_new_privileges: bool = False
    network_mode: str | None = None
    #: A network the container joins (docker runtime): no host port is allocated, and the
    #: session's endpoint is the container's address on that network.
    network: str | None = None
    #: Names (or ``fnmatch`` patterns such as ``GIT_*``) of variables a request may set; none by
    #: default. Loader and interpreter variables are refused whatever this says.
    env_allow: tuple[str, ...] = ()
    #: Run the session as this host user (process runtime, when dormant is root), or as this
    #: container user (docker runtime).
    user: str | None = None
    #: Storage (see dormant.engine.volumes): named volumes (docker runtime), host paths from
    #: the operator's allow-list (docker runtime, checked at load), and the process runtime's
    #: home directory kept per ``"user"`` or per ``"session"`` (``None``: none).
    volumes: tuple[VolumeTemplate, ...] = ()
    binds: tuple[BindMount, ...] = ()
    home: str | None = None
    #: Docker runtime: the container's working directory and ``/dev/shm`` size.
    workdir: str | None = None
    shm_size: str | None = None
    # The session proxy (dormant.proxy): how long a request waits for a wake; whether sessions
    # are open to anyone (no access cookie); where a browser without a cookie is sent; which
    # requests are only polling (``"GET /api/status"``, ``"/metrics"``: not activity); whether
    # a long response to an open client (a video, a stream) counts as background work.
    wake_timeout: float = 60.0
    public: bool = False
    login_url: str | None = None
    proxy_ignore: tuple[str, ...] = ()
    proxy_streaming: bool = True
    #: Serving means this probe passes (after a start, and every ``health_interval`` seconds
    #: while it runs; 0: no health checks); ``health_failures`` misses in a row restart it, at
    #: most ``restart`` times within an hour, then it is failed with the probe's output.
    ready: Probe = field(default_factory=Probe)
    health_interval: float = 120.0
    health_failures: int = 3
    restart: int = 3

    def needs_host_port(self, runtime: Runtime | type[Runtime] | None) -> bool:
        """Whether a session of this template on ``runtime`` is given a host port (from
        DORMANT_PORT_RANGE): all but those on a ``network`` and those of a runtime whose
        sessions serve on an address of their own (:attr:`Runtime.host_ports`)."""
        return self.network is None and (runtime is None or runtime.host_ports)

    def check_request_env(self, env: Mapping[str, str]) -> None:
        """Refuse (``InvalidInput``, naming the variable) what a request may not set."""
        for name in sorted(env):
            if (reason := refusal_reason(name)) is not None:
                raise InvalidInput(f"env {name!r} {reason}")
            if not env_allowed(name, self.env_allow):
                allowed = ", ".join(self.env_allow) or "none"
                raise InvalidInput(
                    f"env {name!r} is not allowed by template {self.name!r} (env_allow: {allowed})"
                )

    def session_env(self, request_env: Mapping[str, str]) -> dict[str, str]:
        """The environment of a session: the template's own (the operator's, trusted) and what
        the request set, keeping of the latter only what :meth:`check_request_env` accepts
        today (a session stored before a rule existed, or before ``env_allow`` was narrowed,
        does not carry a refused variable into its next start)."""
        allowed = {
            name: value
            for name, value in request_env.items()
            if refusal_reason(name) is None and env_allowed(name, self.env_allow)
        }
        return {**self.env, **allowed}


#: Set by dormant itself for every session.
_RESERVED = re.compile(r"^(PORT|DORMANT_.*)$", re.IGNORECASE)

#: Variables that change how a host loads, finds or interprets programs (dynamic loader,
#: interpreters and their package managers, compilers, shells, locale and path lookups, config
#: directories, proxies and certificates, pagers, browsers and editors that tools spawn). A
#: request never sets them, whatever a template's ``env_allow`` says. ``env_allow`` is the real
#: control (nothing by default); this list catches allow patterns wider than meant (``*``).
_HOST_CONTROLLED_NAMES = (
    # dynamic loader, libc
    r"LD_.*|DYLD_.*|GCONV_PATH|LOCPATH|NLSPATH|MALLOC_.*|GLIBC_TUNABLES|HOSTALIASES|RESOLV_.*"
    r"|LOCALDOMAIN|TMPDIR|TMP|TEMP"
    # interpreters, runtimes, package managers, build tools
    r"|PYTHON.*|PYENV_.*|VIRTUAL_ENV|PIP_.*|NODE_.*|NPM_CONFIG_.*|YARN_.*|PERL.*|RUBY.*|GEM_.*"
    r"|GEMRC|IRBRC|BUNDLE_.*|JAVA_.*|_JAVA_OPTIONS|JDK_JAVA_OPTIONS|CLASSPATH|MAVEN_OPTS"
    r"|GRADLE_OPTS|ANT_OPTS|SBT_OPTS|LUA_.*|TCL.*|R_.*|PHP.*|ERL_.*|ELIXIR_ERL_OPTIONS|JULIA_.*"
    r"|GOFLAGS|GOROOT|GOPATH|GOENV|GOTOOLCHAIN|GOPROXY|CARGO_.*|RUSTC.*|RUSTFLAGS|RUSTUP_.*"
    r"|DOTNET_.*|CORE_.*|COR_.*|CORECLR_.*|COMPLUS_.*|CC|CXX|CPP|LD|AR|CFLAGS|CXXFLAGS"
    r"|CPPFLAGS|LDFLAGS|LIBRARY_PATH|CPATH|MAKEFLAGS|MFLAGS|JUPYTER_.*|IPYTHONDIR"
    r"|QT_.*|GST_.*|GIO_.*|GTK_.*"
    # shells
    r"|BASH_ENV|ENV|BASH_FUNC_.*|SHELLOPTS|BASHOPTS|PS4|IFS|CDPATH|PROMPT_COMMAND|ZDOTDIR"
    r"|HISTFILE|SHELL"
    # programs that tools spawn, where they look for things, who they think they are
    r"|BROWSER|EDITOR|VISUAL|PAGER|MANPAGER|LESS.*|SUDO_ASKPASS|SSH_ASKPASS.*|PATH|HOME|USER"
    r"|LOGNAME|XDG_.*"
    # network trust: certificates, TLS engines, proxies
    r"|SSL_CERT_.*|OPENSSL_.*|CURL_.*|REQUESTS_CA_BUNDLE|WGETRC|HTTPS?_PROXY|ALL_PROXY|NO_PROXY"
    # git: the ones that run programs, load configuration or move the repository
    r"|GIT_SSH.*|GIT_EXEC_PATH|GIT_CONFIG.*|GIT_ASKPASS|GIT_EXTERNAL_DIFF|GIT_PROXY_COMMAND"
    r"|GIT_PAGER|GIT_EDITOR|GIT_SEQUENCE_EDITOR|GIT_TEMPLATE_DIR|GIT_DIR|GIT_WORK_TREE"
    r"|GIT_COMMON_DIR|GIT_ALLOW_PROTOCOL|GIT_PROTOCOL_FROM_USER|GIT_TRACE.*"
)
_HOST_CONTROLLED = re.compile(rf"^({_HOST_CONTROLLED_NAMES})$", re.IGNORECASE)


def is_host_controlled(name: str) -> bool:
    """True for a variable no request may set (host-controlled or set by dormant itself)."""
    return refusal_reason(name) is not None


def refusal_reason(name: str) -> str | None:
    """Why a request may never set ``name`` (the end of a sentence), or ``None``."""
    if _RESERVED.match(name):
        return "is reserved: dormant sets it for every session"
    if _HOST_CONTROLLED.match(name):
        return (
            "is never taken from a request: it controls how the host loads, finds or runs programs"
        )
    return None


def env_allowed(name: str, allow: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in allow)


@dataclass(frozen=True, slots=True)
class Catalog:
    templates: dict[str, Template]
    policies: dict[str, PolicySettings]
    default_template: str = "default"

    def template(self, name: str | None) -> Template:
        key = name or self.default_template
        try:
            return self.templates[key]
        except KeyError:
            raise InvalidInput(
                f"unknown template {key!r}; available: {', '.join(sorted(self.templates))}"
            ) from None

    def policy(self, name: str) -> PolicySettings:
        try:
            return self.policies[name]
        except KeyError:
            raise InvalidInput(
                f"unknown policy {name!r}; available: {', '.join(sorted(self.policies))}"
            ) from None


def default_catalog(policy_overrides: PolicySettings | None = None) -> Catalog:
    """One ``default`` template (a small HTTP server as a local process) and the presets."""
    policies = dict(PRESETS)
    if policy_overrides is not None:
        policies[DEFAULT_PRESET] = policy_overrides
    return Catalog(templates={"default": Template(name="default")}, policies=policies)
