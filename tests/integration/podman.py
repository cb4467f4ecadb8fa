"""The real container engine for the docker runtime's tests: Podman's Docker-compatible API,
started by the project's own ``scripts/podman-up.sh``.

If Podman cannot be started the tests that need it fail (``pytest.fail``); they never skip.
Every container a test run makes carries ``testrun=<RUN_ID>`` so that cleanup and the leak check
touch only this run's containers, also when another run shares the machine's engine.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
IMAGE = "localhost/dormant-httpd:2"
CONTAINER_PORT = 8080
RUN_LABEL = "testrun"
RUN_ID = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"

_state: dict[str, Any] = {"host": None, "used": False}


def podman_host() -> str:
    """``DORMANT_DOCKER_HOST`` of a running Podman service (started once per test process)."""
    if _state["host"] is None:
        try:
            result = subprocess.run(
                ["bash", str(REPO / "scripts" / "podman-up.sh")],
                capture_output=True,
                text=True,
                timeout=900,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"scripts/podman-up.sh did not finish: {exc}")
        lines = result.stdout.strip().splitlines()
        if result.returncode != 0 or not lines or "DORMANT_DOCKER_HOST=" not in lines[-1]:
            pytest.fail(
                f"scripts/podman-up.sh failed ({result.returncode}); the docker runtime's tests "
                f"need Podman:\n{result.stdout}\n{result.stderr}"
            )
        _state["host"] = lines[-1].split("=", 1)[1].strip()
    _state["used"] = True
    return str(_state["host"])


def was_used() -> bool:
    return bool(_state["used"])


def podman(
    *args: str, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        pytest.fail(f"podman {' '.join(args)} failed: {result.stderr.strip()}")
    return result


def managed_containers(all_runs: bool = False) -> list[dict[str, Any]]:
    """Containers labelled ``dormant.managed=true`` (of this run unless ``all_runs``),
    as the engine's own CLI sees them."""
    out = podman("ps", "-a", "--format", "json", "--filter", "label=dormant.managed=true").stdout
    rows: list[dict[str, Any]] = json.loads(out or "[]")
    if all_runs:
        return rows
    return [r for r in rows if (r.get("Labels") or {}).get(RUN_LABEL) == RUN_ID]


def container_names(rows: list[dict[str, Any]]) -> set[str]:
    return {str(r["Names"][0]) for r in rows}


def remove_containers(names: set[str] | list[str]) -> None:
    if names:
        podman("rm", "-f", "-v", "-t", "0", *sorted(names), check=False)


def purge_run() -> list[str]:
    """Remove every container of this run (also ones without the managed label that tests made
    by hand, which carry the run label); returns the names of managed ones that were left."""
    left = sorted(container_names(managed_containers()))
    out = podman("ps", "-a", "--format", "{{.Names}}", "--filter", f"label={RUN_LABEL}={RUN_ID}")
    remove_containers(set(out.stdout.split()) | set(left))
    return left


def volumes() -> set[str]:
    return set(podman("volume", "ls", "--format", "{{.Name}}").stdout.split())


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


class PrivateService:
    """A second ``podman system service`` on a private socket (same storage), that a test may
    kill with SIGKILL without disturbing anything else using the shared one."""

    def __init__(self, directory: Path) -> None:
        self.socket = directory / "podman.sock"
        self.url = f"unix://{self.socket}"
        self.log = directory / "podman-service.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PrivateService:
        podman_host()  # packages, configuration and images
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                ["podman", "system", "service", "--time=0", self.url],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(self.answers, timeout=60, what="the private podman service")
        return self

    def answers(self) -> bool:
        result = subprocess.run(
            [
                "curl",
                "-fsS",
                "--max-time",
                "2",
                "--unix-socket",
                str(self.socket),
                "http://d/_ping",
            ],
            capture_output=True,
            check=False,
        )
        return result.returncode == 0

    def kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)

    def __enter__(self) -> PrivateService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()


@contextlib.contextmanager
def private_service(directory: Path) -> Iterator[PrivateService]:
    service = PrivateService(directory)
    try:
        yield service.start()
    finally:
        service.kill()
