"""End-to-end fixtures: ``dormant serve`` as a subprocess in a temporary directory.

Every server gets a private block of ports (its API port and its ``DORMANT_PORT_RANGE``) in
20000-40000, checked free, so parallel runs do not collide. Whatever happens in a test, the
fixture stops the server (SIGTERM, then SIGKILL), kills every process still carrying the
server's ``DORMANT_RUNTIME_ROOT`` marker (process groups), and then asserts that none is left.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

T = TypeVar("T")

#: Sub-processes we wait for (CLI calls, server shutdown) never take longer than this.
CLI_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
START_TIMEOUT = 30.0
# Below the kernel's ephemeral range (32768-): an outgoing connection never takes a session port.
# 30200-30400 are test_docker_engine's own ranges. Each pytest-xdist worker claims only from its
# own slice, so two workers never hand out the same block (a bind check alone cannot tell a port
# another worker has claimed but not yet bound).
_PORT_LOW, _PORT_HIGH = 10000, 30000
_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
_WORKERS = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
_SLICE = (_PORT_HIGH - _PORT_LOW) // _WORKERS
_PORT_LOW, _PORT_HIGH = _PORT_LOW + _WORKER * _SLICE, _PORT_LOW + (_WORKER + 1) * _SLICE
_claimed: set[int] = set()


# --- small helpers, exposed to tests through the ``Server`` object -----------------------------


def dormant_executable() -> str:
    candidate = Path(sys.executable).parent / "dormant"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("dormant")
    if found is None:
        pytest.fail("the dormant console script is not installed (pip install -e .)")
    return found


def wait_until(
    check: Callable[[], T],
    *,
    timeout: float = 20.0,
    interval: float = 0.05,
    what: str = "",
    detail: Callable[[], Any] | None = None,
) -> T:
    """Call ``check`` until it returns something truthy; fail with the last value (or what
    ``detail()`` says) otherwise."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() > deadline:
            shown = detail() if detail is not None else last
            pytest.fail(f"timed out after {timeout:g}s waiting for {what or check}: {shown!r}")
        time.sleep(interval)


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def claim_ports(count: int) -> list[int]:
    """``count`` consecutive free ports that no other server of this run uses."""
    for _ in range(500):
        base = random.randrange(_PORT_LOW, _PORT_HIGH - count)
        block = list(range(base, base + count))
        if _claimed.intersection(block):
            continue
        if all(_bindable(p) for p in block):
            _claimed.update(block)
            return block
    pytest.fail(f"found no {count} consecutive free ports in {_PORT_LOW}-{_PORT_HIGH}")


def release_ports(block: list[int]) -> None:
    """Hand back ports that nothing of this run listens on any more (a worker's slice is a
    share of the range: without this, a few servers of a hundred ports each use it up)."""
    _claimed.difference_update(block)


def port_answers(port: int, path: str = "/") -> httpx.Response | None:
    """The response of the session process on ``port``, or None if nothing answers."""
    try:
        return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2.0)
    except httpx.HTTPError:
        return None


def port_closed(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    env = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key.decode(errors="replace")] = value.decode(errors="replace")
    return env


def _is_zombie(pid: int) -> bool:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return raw[raw.rindex(")") + 2 :].startswith("Z")


def marked_processes(runtime_root: Path) -> dict[int, dict[str, str]]:
    """Live (non-zombie) processes whose environment marks them as this runtime root's."""
    root = str(runtime_root.resolve())
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        env = _environ(pid)
        if env.get("DORMANT_RUNTIME_ROOT") == root and not _is_zombie(pid):
            found[pid] = env
    return found


def kill_marked(runtime_root: Path) -> None:
    """SIGKILL the process group (and the process) of everything marked with this root."""
    own = os.getpgrp()
    for pid in marked_processes(runtime_root):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            group = os.getpgid(pid)
            if group != own:
                os.killpg(group, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _no_traceback(response: httpx.Response) -> None:
    response.read()
    assert b"Traceback" not in response.content, response.text


async def _no_traceback_async(response: httpx.Response) -> None:
    await response.aread()
    assert b"Traceback" not in response.content, response.text


# --- the server --------------------------------------------------------------------------------


class Server:
    """One ``dormant serve`` in ``home``, its cwd (``./dormant.db`` and the admin key are there)."""

    wait_until = staticmethod(wait_until)
    port_answers = staticmethod(port_answers)
    port_closed = staticmethod(port_closed)

    def __init__(self, home: Path, ports: int = 20, env: dict[str, str] | None = None) -> None:
        self.home = home
        self.home.mkdir(parents=True, exist_ok=True)
        block = claim_ports(ports + 2)
        self._ports = list(block)
        self.port = block[0]
        #: dormant's session proxy (DORMANT_PROXY_PORT)
        self.proxy_port = block[-1]
        block = block[:-1]
        self.session_ports = block[1:]
        self.data_dir = home / "data"
        self.runtime_root = (self.data_dir / "processes").resolve()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("DORMANT_")}
        self.env.update(
            DORMANT_PORT=str(self.port),
            DORMANT_PORT_RANGE=f"{block[1]}-{block[-1]}",
            DORMANT_PROXY_PORT=str(self.proxy_port),
            DORMANT_DATA_DIR=str(self.data_dir),
            DORMANT_LOG_FORMAT="json",
            DORMANT_URL=f"http://127.0.0.1:{self.port}",
            PYTHONUNBUFFERED="1",
        )
        self.env.update(env or {})
        self.url = f"http://127.0.0.1:{self.port}"
        self.proxy_url = f"http://127.0.0.1:{self.proxy_port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.key = ""
        self._clients: list[httpx.Client] = []
        self._admin: httpx.Client | None = None

    # process control -------------------------------------------------------------------------

    @property
    def log_path(self) -> Path:
        return self.home / f"serve-{self.starts}.log"

    def start(self) -> Server:
        assert self.proc is None, "already running"
        self.starts += 1
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [dormant_executable(), "serve"],
                cwd=self.home,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

        def healthy() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                pytest.fail(f"dormant serve exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                return httpx.get(f"{self.url}/healthz", timeout=2.0).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, timeout=START_TIMEOUT, what="dormant serve to answer /healthz")
        self.key = (self.home / "dormant-admin.key").read_text().strip()
        return self

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        proc, self.proc = self.proc, None
        self.close_clients()
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL: a crash."""
        proc, self.proc = self.proc, None
        self.close_clients()
        if proc is not None:
            proc.kill()
            proc.wait(STOP_TIMEOUT)

    def restart(self) -> Server:
        self.stop()
        return self.start()

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def logs(self) -> str:
        return "\n".join(
            (self.home / f"serve-{n}.log").read_text(errors="replace")
            for n in range(1, self.starts + 1)
            if (self.home / f"serve-{n}.log").exists()
        )

    # clients ---------------------------------------------------------------------------------

    def client(self, key: str | None = None, *, auth: bool = True) -> httpx.Client:
        """An HTTP client with the admin key (cached), another ``key``, or none."""
        if key is None and auth and self._admin is not None:
            return self._admin
        headers = {"X-API-Key": key or self.key} if auth else {}
        client = httpx.Client(
            base_url=self.url,
            headers=headers,
            timeout=30.0,
            event_hooks={"response": [_no_traceback]},
        )
        self._clients.append(client)
        if key is None and auth:
            self._admin = client
        return client

    def async_client(self, key: str | None = None) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url,
            headers={"X-API-Key": key or self.key},
            timeout=30.0,
            event_hooks={"response": [_no_traceback_async]},
        )

    def cli(self, *args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess[str]:
        """Run ``dormant ARGS`` next to the database, with the server's environment."""
        result = subprocess.run(
            [dormant_executable(), *args],
            cwd=self.home,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
            check=False,
        )
        if check and result.returncode != 0:
            pytest.fail(
                f"dormant {' '.join(args)} exited with {result.returncode}:\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}"
            )
        return result

    # sessions --------------------------------------------------------------------------------

    def marked(self) -> dict[int, dict[str, str]]:
        return marked_processes(self.runtime_root)

    def work_dir(self, session_id: str) -> Path:
        return self.runtime_root / f"dormant-{session_id}" / "work"

    def session(self, session_id: str) -> dict[str, Any] | None:
        response = self.client().get(f"/v1/sessions/{session_id}")
        if response.status_code == 404:
            return None
        assert response.status_code == 200, response.text
        return dict(response.json())

    def create(self, user_id: str = "alice", **body: Any) -> dict[str, Any]:
        response = self.client().post("/v1/sessions", json={"user_id": user_id, **body})
        assert response.status_code == 201, response.text
        return dict(response.json())

    def wait_state(self, session_id: str, state: str, timeout: float = 20.0) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            current = self.session(session_id)
            assert current is not None, f"session {session_id} vanished"
            assert current["state"] != "failed", current
            return current if current["state"] == state else None

        return wait_until(reached, timeout=timeout, what=f"{session_id} to be {state}")

    def wait_gone(self, session_id: str, timeout: float = 20.0) -> None:
        wait_until(
            lambda: self.session(session_id) is None,
            timeout=timeout,
            what=f"{session_id} to answer 404",
        )

    def all_sessions(self, **params: str) -> list[dict[str, Any]]:
        """Every session the admin key sees (follows cursors)."""
        items: list[dict[str, Any]] = []
        cursor = None
        while True:
            query = {**params, **({"cursor": cursor} if cursor else {})}
            response = self.client().get("/v1/sessions", params=query)
            assert response.status_code == 200, response.text
            page = response.json()
            items += page["items"]
            cursor = page["next_cursor"]
            if not cursor:
                return items

    def close_clients(self) -> None:
        for client in self._clients:
            client.close()
        self._clients.clear()
        self._admin = None

    def cleanup(self) -> list[int]:
        """Stop the server, kill leftover session processes; returns the ones that survive."""
        self.close_clients()
        try:
            self.stop()
        finally:
            kill_marked(self.runtime_root)
        deadline = time.monotonic() + 10
        while (left := self.marked()) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not left:  # nothing of this server's holds a port: another server may have them
            release_ports(self._ports)
        return sorted(left)


def _sweep(servers: list[Server]) -> None:
    """Stop every server and kill what it left; fail if a marked process survives."""
    leaks: dict[str, list[int]] = {}
    for srv in servers:
        print(f"--- {srv.home} log tail ---\n{srv.log_tail()}")
        if left := srv.cleanup():
            leaks[str(srv.runtime_root)] = left
    assert not leaks, f"session processes survived cleanup: {leaks}"


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """``server_factory(ports=20, start=True, **env)``: a server in ``tmp_path`` (the first)
    or in ``tmp_path/serverN``; always stopped and swept afterwards, also on failure."""
    servers: list[Server] = []

    def make(ports: int = 20, start: bool = True, **env: str) -> Server:
        home = tmp_path if not servers else tmp_path / f"server{len(servers) + 1}"
        srv = Server(home, ports=ports, env=env)
        servers.append(srv)
        return srv.start() if start else srv

    try:
        yield make
    finally:
        _sweep(servers)


@pytest.fixture
def server(server_factory: Callable[..., Server]) -> Server:
    return server_factory()


@pytest.fixture(scope="module")
def module_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server shared by a module's tests (for checks that must change nothing)."""
    srv = Server(tmp_path_factory.mktemp("serve"))
    try:
        yield srv.start()
    finally:
        _sweep([srv])


@pytest.fixture
def docker_host() -> Iterator[str]:
    """Podman's Docker API (started by scripts/podman-up.sh); this run's containers are
    removed afterwards, and none may be left."""
    from ..integration import podman

    host = podman.podman_host()
    try:
        yield host
    finally:
        podman.purge_run()
        assert podman.managed_containers() == []


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Debian's Chromium driven by playwright-core (:class:`gateway_support.Browser`)."""
    from .gateway_support import Browser

    chromium = Browser(tmp_path / "chromium-profile")
    try:
        yield chromium
    finally:
        chromium.close()
