"""The real container engines the docker runtime is tested on: Podman's Docker-compatible API
(``scripts/podman-up.sh``, ``DORMANT_DOCKER_HOST``) and Debian's Docker Engine 20.10
(``scripts/docker-up.sh``, ``DORMANT_DOCKER_ENGINE_HOST``; also a single-node Swarm, which does
not change how plain containers run).

Each :class:`ContainerEngine` starts its engine once per test process with the project's own
script (if it cannot, the tests that need it fail: they never skip), runs the engine's CLI, and
lists and purges the containers and volumes of this test run. Every container and volume a test
run makes carries ``testrun=<RUN_ID>``, so cleanup and the leak check touch only this run's, also
when another run shares the machine's engines. Listing goes through the Engine API itself (the
same JSON on both engines; the CLIs format differently).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
IMAGE = "localhost/dormant-httpd:2"
CONTAINER_PORT = 8080
RUN_LABEL = "testrun"
RUN_ID = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
MANAGED = "dormant.managed=true"
#: Labels Docker Engine puts on a Swarm task's container: those belong to a service (the swarm
#: runtime's tests own them), not to the docker runtime.
SWARM_TASK_LABEL = "com.docker.swarm.task.id"


def wait_for(check: Any, *, timeout: float = 60.0, what: str = "") -> Any:
    """Poll ``check`` until truthy (a bound against hanging, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {timeout:g}s waiting for {what or check}: {value!r}")
        time.sleep(0.05)


def unix_socket_of(url: str) -> str:
    if not url.startswith("unix://"):
        pytest.fail(f"the tests expect an engine on a unix socket, not {url!r}")
    return url.removeprefix("unix://")


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("engine", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def api_get(url: str, path: str, **params: Any) -> Any:
    """``GET path`` on the Engine API at ``url`` (a ``unix://`` socket), as JSON."""
    query = urllib.parse.urlencode(
        {k: json.dumps(v) if isinstance(v, dict) else v for k, v in params.items()}
    )
    connection = _UnixConnection(unix_socket_of(url), timeout=60)
    try:
        connection.request("GET", f"/v1.41{path}?{query}")
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    if response.status != 200:
        pytest.fail(f"GET {path} on {url}: HTTP {response.status}: {body[:300]!r}")
    return json.loads(body)


def answers(url: str) -> bool:
    """The engine at ``url`` answers ``/_ping``."""
    connection = _UnixConnection(unix_socket_of(url), timeout=2)
    try:
        connection.request("GET", "/_ping")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


class PrivateApi:
    """An engine API of a test's own, that it may take away (SIGKILL of its process group) and
    bring back without disturbing anything else using the shared one: a process whose socket
    answers ``/_ping`` once started."""

    def __init__(self, directory: Path, name: str) -> None:
        self.socket = directory / f"{name}.sock"
        self.url = f"unix://{self.socket}"
        self.log = directory / f"{name}.log"
        self.name = name
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> PrivateApi:
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(lambda: answers(self.url), timeout=60, what=f"the private {self.name}")
        return self

    def kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)

    def __enter__(self) -> PrivateApi:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()


class PrivatePodmanService(PrivateApi):
    """A second ``podman system service`` on a private socket (same storage): a real engine API
    process killed with SIGKILL; the containers live on (conmon keeps them)."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory, "podman")

    def command(self) -> list[str]:
        return ["podman", "system", "service", "--time=0", self.url]

    def start(self) -> PrivatePodmanService:
        PODMAN.host()  # packages, configuration and images
        super().start()
        return self


class SocketRelay(PrivateApi):
    """Docker Engine's API relayed on a private socket (``unix_relay.py``). One dockerd serves every
    test (and the swarm runtime's), and a second one cannot share its data root, so an outage
    of Docker's API is this relay killed with SIGKILL: every connection and the socket go, as
    when dockerd dies; the containers live on (containerd's shims keep them), as with
    ``live-restore``."""

    def __init__(self, directory: Path, target: str) -> None:
        super().__init__(directory, "docker-relay")
        self.target = unix_socket_of(target)

    def command(self) -> list[str]:
        relay = Path(__file__).with_name("unix_relay.py")
        return [sys.executable, str(relay), str(self.socket), self.target]


@dataclass
class ContainerEngine:
    """One engine under test: ``podman`` or ``docker``."""

    kind: str
    script: str
    variable: str
    _host: str | None = field(default=None, repr=False)

    # the engine itself --------------------------------------------------------------------

    @property
    def started(self) -> bool:
        return self._host is not None

    def host(self) -> str:
        """The engine's API URL (started once per test process by its script)."""
        if self._host is None:
            try:
                result = subprocess.run(
                    ["bash", str(REPO / "scripts" / self.script)],
                    capture_output=True,
                    text=True,
                    timeout=900,
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:
                pytest.fail(f"scripts/{self.script} did not finish: {exc}")
            lines = result.stdout.strip().splitlines()
            if result.returncode != 0 or not lines or f"{self.variable}=" not in lines[-1]:
                pytest.fail(
                    f"scripts/{self.script} failed ({result.returncode}); the docker runtime's "
                    f"tests need {self.kind}:\n{result.stdout}\n{result.stderr}"
                )
            self._host = lines[-1].split("=", 1)[1].strip()
        return self._host

    def cli(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """The engine's own CLI (``podman …`` or ``docker -H <its socket> …``)."""
        prefix = ["podman"] if self.kind == "podman" else ["docker", "-H", self.host()]
        self.host()
        result = subprocess.run(
            [*prefix, *args], capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            pytest.fail(f"{self.kind} {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def inspect(self, name: str, kind: str = "container") -> dict[str, Any]:
        return dict(json.loads(self.cli(kind, "inspect", name).stdout)[0])

    def private_api(self, directory: Path) -> PrivateApi:
        """An API of the test's own on this engine's containers (not started)."""
        if self.kind == "podman":
            return PrivatePodmanService(directory)
        return SocketRelay(directory, self.host())

    # this run's containers and volumes -----------------------------------------------------

    def managed_containers(self, all_runs: bool = False) -> list[dict[str, Any]]:
        """Containers labelled ``dormant.managed=true`` (of this run unless ``all_runs``), as
        the engine lists them (Swarm tasks' containers excepted: their services own them)."""
        rows: list[dict[str, Any]] = api_get(
            self.host(), "/containers/json", all="1", filters={"label": [MANAGED]}
        )
        rows = [r for r in rows if SWARM_TASK_LABEL not in (r.get("Labels") or {})]
        if all_runs:
            return rows
        return [r for r in rows if (r.get("Labels") or {}).get(RUN_LABEL) == RUN_ID]

    def run_containers(self) -> set[str]:
        """Every container of this run, managed or made by hand with the run label."""
        rows = api_get(
            self.host(), "/containers/json", all="1", filters={"label": [f"{RUN_LABEL}={RUN_ID}"]}
        )
        return container_names(rows)

    def remove_containers(self, names: set[str] | list[str]) -> None:
        if names:
            # podman's rm -f stops with the container's stop timeout unless told not to wait;
            # docker's kills at once (and has no -t)
            now = ("-t", "0") if self.kind == "podman" else ()
            self.cli("rm", "-f", "-v", *now, *sorted(names), check=False)

    def purge_run(self) -> list[str]:
        """Remove every container of this run (also ones without the managed label that tests
        made by hand); returns the names of managed ones that were left."""
        left = sorted(container_names(self.managed_containers()))
        self.remove_containers(self.run_containers() | set(left))
        return left

    def volumes(self) -> set[str]:
        data = api_get(self.host(), "/volumes")
        return {str(v["Name"]) for v in data.get("Volumes") or []}

    def managed_volumes(self, all_runs: bool = False) -> set[str]:
        """Volumes dormant made (``dormant.managed=true``), of this run unless ``all_runs``."""
        data = api_get(self.host(), "/volumes", filters={"label": [MANAGED]})
        return {
            str(v["Name"])
            for v in data.get("Volumes") or []
            if all_runs or (v.get("Labels") or {}).get(RUN_LABEL) == RUN_ID
        }

    def remove_volumes(self, names: set[str] | list[str]) -> None:
        if names:
            self.cli("volume", "rm", "-f", *sorted(names), check=False)

    def network_exists(self, name: str) -> bool:
        return self.cli("network", "inspect", name, check=False).returncode == 0

    def remove_network(self, name: str) -> None:
        self.cli("network", "rm", name, check=False)


def container_names(rows: list[dict[str, Any]]) -> set[str]:
    return {str(r["Names"][0]).lstrip("/") for r in rows}


PODMAN = ContainerEngine("podman", "podman-up.sh", "DORMANT_DOCKER_HOST")
DOCKER = ContainerEngine("docker", "docker-up.sh", "DORMANT_DOCKER_ENGINE_HOST")
#: Every engine the docker runtime is tested on, by kind (the ``engine`` fixture's params).
ENGINES = {engine.kind: engine for engine in (PODMAN, DOCKER)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(port: int, path: str = "/", host: str = "127.0.0.1") -> str | None:
    """The body served on ``host:port``, or None if nothing answers."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=3) as response:
            return str(response.read().decode())
    except OSError:
        return None
