"""Several ``dormant serve`` replicas on one PostgreSQL database, behind nginx.

:func:`replica_set` starts, in a test's ``tmp_path``:

- a throwaway PostgreSQL database (``scripts/postgres-up.sh`` first), dropped at the end;
- ``n`` replicas made by ``server_factory`` (each its own API port, session port block and home),
  all with the same ``DORMANT_DATABASE_URL``, the same ``DORMANT_GATEWAY_SECRET``, their own
  ``DORMANT_INSTANCE_ID`` (``replica-1`` … ``replica-n``) and one ``DORMANT_DATA_DIR``: the
  process runtime keeps its sessions' work directories and pid records there, and a replica can
  only stop or start a session process it finds in it (replicas on one host share it, as they
  would share one container engine). The first replica creates the admin key and writes
  ``dormant-admin.key`` in its home; the others find keys in the database and write none, so the
  first one's file is copied into their homes before they start;
- nginx (``scripts/nginx-up.sh`` first) with ``examples/nginx/dormant.conf``, its listen port and
  upstream addresses replaced by the test's, run as ``nginx -c CONF -p DIR -g 'daemon off; …'``
  in its own process group; its access log names the replica (upstream) of every request.

Their ports are claimed below the kernel's ephemeral range (see :func:`below_ephemeral_ports`).

Whatever happens, nginx is stopped (its whole group), the replicas are stopped and their session
processes killed, and the database is dropped; ``server_factory`` then asserts that no session
process survived.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from . import conftest
from .conftest import START_TIMEOUT, STOP_TIMEOUT, Server, claim_ports, wait_until

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_CONF = REPO / "examples" / "nginx" / "dormant.conf"
NGINX = "/usr/sbin/nginx"
#: Fail-safe bound on waits for a whole batch of sessions (never an assertion about speed).
BATCH_TIMEOUT = 240.0


# --- PostgreSQL --------------------------------------------------------------------------------


def psql(sql: str, database: str = "postgres") -> str:
    result = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", database, "-At", "-c", sql],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@contextlib.contextmanager
def throwaway_database() -> Iterator[str]:
    """A new, empty PostgreSQL database; its SQLAlchemy URL. Dropped afterwards."""
    subprocess.run(["bash", str(REPO / "scripts" / "postgres-up.sh")], check=True, timeout=600)
    name = f"dormant_e2e_{secrets.token_hex(4)}"
    psql(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- nginx -------------------------------------------------------------------------------------


def render_conf(template: str, listen: int, upstreams: list[int]) -> str:
    """``template`` (the example) listening on ``listen`` and balancing over ``upstreams``."""
    servers = re.findall(r"^[ \t]*server 127\.0\.0\.1:\d+;[ \t]*\n", template, flags=re.M)
    assert servers, "the example config has no `server 127.0.0.1:PORT;` upstream lines"
    indent = servers[0][: len(servers[0]) - len(servers[0].lstrip())]
    ours = "".join(f"{indent}server 127.0.0.1:{port};\n" for port in upstreams)
    text = template.replace(servers[0], ours, 1)
    for extra in servers[1:]:
        text = text.replace(extra, "", 1)
    text, listens = re.subn(
        r"^([ \t]*)listen \d+;", rf"\g<1>listen 127.0.0.1:{listen};", text, count=1, flags=re.M
    )
    assert listens == 1, "the example config has no `listen PORT;` line"
    return text


class Nginx:
    """nginx in ``directory`` (its prefix: config, logs, pid, temporary files)."""

    def __init__(self, directory: Path, upstreams: list[int]) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = claim_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        self.pid_file = self.dir / "nginx.pid"
        self.site = self.dir / "dormant.conf"
        self.site.write_text(render_conf(EXAMPLE_CONF.read_text(), self.port, upstreams))
        self.conf = self.dir / "nginx.conf"
        # Workers run as nobody and cannot reach a private tmp_path: nothing is buffered to disk.
        self.conf.write_text(
            f"""worker_processes 1;
error_log {self.dir}/error.log info;
events {{ worker_connections 1024; }}
http {{
    log_format replicas '$upstream_addr $status "$request"';
    access_log {self.dir}/access.log replicas;
    client_body_temp_path {self.dir}/client_body;
    proxy_temp_path {self.dir}/proxy;
    fastcgi_temp_path {self.dir}/fastcgi;
    uwsgi_temp_path {self.dir}/uwsgi;
    scgi_temp_path {self.dir}/scgi;
    client_body_buffer_size 1m;
    proxy_max_temp_file_size 0;
    include {self.site};
}}
"""
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Nginx:
        subprocess.run(["bash", str(REPO / "scripts" / "nginx-up.sh")], check=True, timeout=600)
        if not os.access(NGINX, os.X_OK):
            pytest.fail(f"{NGINX} is missing after scripts/nginx-up.sh")
        command = [NGINX, "-c", str(self.conf), "-p", str(self.dir)]
        daemon = ["-g", f"daemon off; pid {self.pid_file};"]
        checked = subprocess.run(
            [*command, *daemon, "-t"], capture_output=True, text=True, timeout=60, check=False
        )
        assert checked.returncode == 0, checked.stderr
        with open(self.dir / "nginx.out", "wb") as out:
            self.proc = subprocess.Popen(
                [*command, *daemon],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def healthy() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                pytest.fail(f"nginx exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                return httpx.get(f"{self.url}/healthz", timeout=2.0).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, timeout=START_TIMEOUT, what="nginx to answer /healthz")
        return self

    def stop(self) -> None:
        """SIGTERM (fast shutdown), then SIGKILL; and SIGKILL whatever is left in its group."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(STOP_TIMEOUT)
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # workers outliving a killed master

    def problems(self) -> list[str]:
        """Lines of nginx's error log at level warn or worse (failed upstreams, bad config)."""
        try:
            text = (self.dir / "error.log").read_text(errors="replace")
        except FileNotFoundError:
            return []
        bad = re.compile(r"\[(warn|error|crit|alert|emerg)\]")
        return [line for line in text.splitlines() if bad.search(line)]

    def requests(self) -> list[tuple[str, int, str]]:
        """``(upstream address, status, request line)`` of every request nginx finished."""
        try:
            text = (self.dir / "access.log").read_text(errors="replace")
        except FileNotFoundError:
            return []
        found = []
        for line in text.splitlines():
            upstream, status, request = line.split(" ", 2)
            found.append((upstream, int(status), request.strip('"')))
        return found

    def log_tail(self, lines: int = 40) -> str:
        parts = []
        for name in ("nginx.out", "error.log"):
            with contextlib.suppress(FileNotFoundError):
                text = (self.dir / name).read_text(errors="replace")
                parts.append(f"{name}:\n" + "\n".join(text.splitlines()[-lines:]))
        return "\n".join(parts) or "(no log)"


# --- the replicas ------------------------------------------------------------------------------


class Cluster:
    """The replicas and nginx; REST calls through nginx (any replica answers) or one replica."""

    def __init__(self, replicas: list[Server], nginx: Nginx) -> None:
        self.replicas = replicas
        self.nginx = nginx
        self.key = replicas[0].key
        self.url = nginx.url
        self._clients: list[httpx.Client] = []

    def client(self, base_url: str | None = None) -> httpx.Client:
        """A new client with the admin key, to nginx unless ``base_url`` says otherwise.

        Not cached: the tests call from many threads, each with a client of its own."""
        client = httpx.Client(
            base_url=base_url or self.url,
            headers={"X-API-Key": self.key},
            timeout=60.0,
            event_hooks={"response": [_no_traceback]},
        )
        self._clients.append(client)
        return client

    def replica_of_port(self, port: int) -> Server:
        """The replica whose port block a session port comes from."""
        owners = [r for r in self.replicas if port in r.session_ports]
        assert len(owners) == 1, f"port {port} belongs to {len(owners)} replicas"
        return owners[0]

    def all_sessions(self, http: httpx.Client) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 500, **({"cursor": cursor} if cursor else {})}
            response = http.get("/v1/sessions", params=params)
            assert response.status_code == 200, response.text
            page = response.json()
            items += page["items"]
            cursor = page["next_cursor"]
            if not cursor:
                return items

    def wait_all(
        self,
        http: httpx.Client,
        ids: set[str],
        check: Callable[[dict[str, Any]], bool],
        what: str,
        timeout: float = BATCH_TIMEOUT,
    ) -> dict[str, dict[str, Any]]:
        """Poll the list until every session in ``ids`` passes ``check``; none may fail."""
        last: dict[str, dict[str, Any]] = {}

        def done() -> dict[str, dict[str, Any]] | None:
            nonlocal last
            last = {s["id"]: s for s in self.all_sessions(http) if s["id"] in ids}
            failed = {sid: s["error"] for sid, s in last.items() if s["state"] == "failed"}
            assert not failed, f"sessions failed while waiting for {what}: {failed}"
            return last if len(last) == len(ids) and all(map(check, last.values())) else None

        def detail() -> Any:
            missing = sorted(ids - last.keys())
            pending = {sid: s["state"] for sid, s in last.items() if not check(s)}
            return {"missing": missing[:10], "pending": dict(list(pending.items())[:10])}

        return wait_until(done, timeout=timeout, interval=0.2, what=what, detail=detail)

    def close(self) -> None:
        for client in self._clients:
            client.close()
        self._clients.clear()


def _no_traceback(response: httpx.Response) -> None:
    """No error answer carries a traceback. (A session's ``error`` may: it quotes the output
    of a session process that failed to start, and that is worth seeing, not a server bug.)"""
    if response.status_code >= 400:
        response.read()
        assert b"Traceback" not in response.content, response.text


def _ephemeral_low() -> int:
    """The lowest port the kernel hands out as the source port of an outgoing connection."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


@contextlib.contextmanager
def below_ephemeral_ports() -> Iterator[None]:
    """Claim ports (``conftest.claim_ports``) only below the kernel's ephemeral range.

    Hundreds of sessions and the connections to them, to nginx, between nginx and the replicas
    and to PostgreSQL use as many ephemeral source ports; a session port inside that range can
    be taken by one of them between allocation and bind (the session then fails with "Address
    already in use"), which is a property of the test's port choice, not of dormant."""
    high = conftest._PORT_HIGH
    conftest._PORT_HIGH = min(high, _ephemeral_low())
    try:
        yield
    finally:
        conftest._PORT_HIGH = high


def _start_replica(
    server_factory: Callable[..., Server],
    first: Server | None,
    number: int,
    ports: int,
    env: dict[str, str],
) -> Server:
    env = {**env, "DORMANT_INSTANCE_ID": f"replica-{number}"}
    if first is None:
        return server_factory(ports=ports, **env)
    srv = server_factory(ports=ports, start=False, DORMANT_DATA_DIR=str(first.data_dir), **env)
    srv.data_dir, srv.runtime_root = first.data_dir, first.runtime_root
    # Keys exist in the database, so this replica writes no key file: give it the first one's.
    key_file = srv.home / "dormant-admin.key"
    shutil.copyfile(first.home / "dormant-admin.key", key_file)
    key_file.chmod(0o600)
    srv.start()
    assert srv.key == first.key
    return srv


@contextlib.contextmanager
def replica_set(
    server_factory: Callable[..., Server],
    tmp_path: Path,
    n: int = 3,
    ports: int = 20,
    **env: str,
) -> Iterator[Cluster]:
    """``n`` replicas (``ports`` session ports each) on one new database, behind nginx."""
    replicas: list[Server] = []
    nginx: Nginx | None = None
    cluster: Cluster | None = None
    with throwaway_database() as database_url:
        try:
            shared = {
                "DORMANT_DATABASE_URL": database_url,
                "DORMANT_GATEWAY_SECRET": secrets.token_urlsafe(48),
                **env,
            }
            with below_ephemeral_ports():
                for number in range(1, n + 1):
                    first = replicas[0] if replicas else None
                    replicas.append(_start_replica(server_factory, first, number, ports, shared))
                nginx = Nginx(tmp_path / "nginx", [r.port for r in replicas])
            nginx.start()
            cluster = Cluster(replicas, nginx)
            yield cluster
        finally:
            try:
                if cluster is not None:
                    cluster.close()
                if nginx is not None:
                    print(f"--- nginx log tail ---\n{nginx.log_tail()}")
                    nginx.stop()
            finally:
                # All replicas down before any session process is killed (a live replica would
                # see its sessions' processes vanish), and before the database goes.
                for srv in replicas:
                    with contextlib.suppress(Exception):
                        srv.stop()
                for srv in replicas:
                    srv.cleanup()


def run_all(jobs: list[Callable[[], Any]], workers: int) -> list[Any]:
    """Run ``jobs`` on ``workers`` threads; their results in order (the first error raises)."""
    with ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(job) for job in jobs]
        return [future.result() for future in futures]


def wait_session(
    http: httpx.Client,
    sid: str,
    check: Callable[[dict[str, Any] | None], bool],
    what: str,
    timeout: float = BATCH_TIMEOUT,
) -> dict[str, Any] | None:
    """Poll ``GET /v1/sessions/{sid}`` (None once it answers 404) until ``check`` holds."""
    last: dict[str, Any] | None = None

    def done() -> tuple[dict[str, Any] | None] | None:
        nonlocal last
        response = http.get(f"/v1/sessions/{sid}")
        assert response.status_code in (200, 404), response.text
        last = response.json() if response.status_code == 200 else None
        assert last is None or last["state"] != "failed", last
        return (last,) if check(last) else None

    return wait_until(
        done, timeout=timeout, interval=0.1, what=f"{sid}: {what}", detail=lambda: last
    )[0]
