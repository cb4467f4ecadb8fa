"""Session proxy benchmark: one session's own server reached four ways on loopback (directly,
through nginx, through dormant's proxy, through nginx asking dormant's forward-auth), at a fixed
rate and at saturation; forward-auth alone; and the time to first byte of a request that wakes
a sleeping session, against the runtime's own start.

Run from the repository root (Debian's nginx: ``bash scripts/nginx-up.sh``; the load generator
for saturation is wrk: ``apt-get install -y wrk``)::

    .venv/bin/python benchmarks/bench_proxy.py             # defaults, about 2 minutes
    .venv/bin/python benchmarks/bench_proxy.py --rate-seconds 2 --rounds 1 --saturate 3 \\
        --wakes 3                                          # quick

Setup, in a temporary directory: ``dormant serve`` (SQLite, process runtime, its session proxy
on ``DORMANT_PROXY_PORT``) with one template whose command is a one-worker nginx answering
``200 "hello from the session"`` on the ``{port}`` dormant gives it (a ``/bin/sh -c`` wrapper
renders its config with ``$PORT``). One session of it is created and a one-time link is opened
for its ``dormant_access`` cookie. A second nginx (one worker) runs in front with two servers:
a plain ``proxy_pass`` to the session's port (``keepalive 32``), and
``examples/nginx/forward-auth.conf`` rendered with its ports. The four paths:

- **direct**: ``GET /`` on the session's port;
- **nginx**: ``GET /s/{id}/`` on the plain nginx server (prefix cut, keep-alive upstream);
- **dormant**: ``GET /s/{id}/`` on dormant's proxy, with the cookie;
- **nginx + forward-auth**: ``GET /s/{id}/`` on the example's server, with the cookie: an
  ``auth_request`` to dormant's ``/v1/forward-auth?delegate=1`` for each request, then nginx
  proxies to the upstream dormant named (as the example does: a variable ``proxy_pass``, so a
  new upstream connection per request).

Every request carries the same cookie header, keep-alive on. Measured:

1. **fixed rate** (``--rate`` requests/s for ``--rate-seconds``, ``--rounds`` rounds, the paths
   interleaved): an open-loop generator in this process (asyncio, ``--conns`` kept-alive
   connections; a request is sent at its scheduled time on an idle connection, or as soon as
   one is free) measures each latency from the request's *scheduled* time until its whole
   answer arrived; added latency = a path's percentile minus direct's.
2. **saturation** (``--saturate`` s, after 1 s of warm-up): ``wrk -t1 -c{--wrk-conns}``;
   requests/s, and the CPU seconds of the proxy's processes over the run (``/proc/PID/stat``
   of every process in its process group: dormant serve is one process; nginx a master and one
   worker); requests/s per core = requests/s / (CPU s / s).
3. **forward-auth alone**: wrk on ``GET /v1/forward-auth`` of dormant's proxy port with
   ``X-Original-URI: /s/{id}/`` and the cookie (plain, and with ``?delegate=1`` as nginx asks).
4. **wake on request** (``--wakes`` samples): ``POST /v1/sessions/{id}/sleep?wait=30``, then
   one ``GET /s/{id}/`` through dormant's proxy on a fresh connection: the time from sending
   it until the first byte of the answer; against the session's timeline (``starting`` ->
   ``running`` of that wake, ``GET /v1/sessions/{id}/events``) and against a direct timing of
   the same command (spawned by this script on a free port, polled with ``GET /`` every 1 ms
   until it answers 200), interleaved.

With ``--gc-trace``, ``dormant serve`` gets a ``sitecustomize`` on its ``PYTHONPATH`` that logs
every full (generation 2) garbage collection and how long it took (``gc.callbacks``); the count
and pauses during each run are printed at the end. Off by default: the hook runs at every
collection of the measured process.

The machine's 2 cores are shared by the load generators and what they measure. By default
(``--pin``, where there are at least 2 CPUs) this script and wrk run on CPU 1 and everything
measured (dormant serve, its session, both nginx) on CPU 0. Nothing is asserted; the figures
are printed with the targets: dormant's proxy adds <= 1 ms p50 and <= 5 ms p99 at 1,000
requests/s; sustains >= 25 % of nginx's requests/s per core; forward-auth >= 5,000/s for a
running session; the first byte after a wake <= the runtime's start + 100 ms.

Everything started is stopped also on failure: the session is deleted through the API, then
nginx and dormant serve are stopped and any process left of the session's group is killed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "nginx" / "forward-auth.conf"
NGINX = "/usr/sbin/nginx"
BODY = "hello from the session\n"

TARGET_ADDED_P50_MS = 1.0
TARGET_ADDED_P99_MS = 5.0
TARGET_PER_CORE_SHARE = 0.25
TARGET_FORWARD_AUTH = 5000.0
TARGET_WAKE_EXTRA_MS = 100.0

REQUEST_TIMEOUT = 10.0  # one request of the fixed-rate generator gives up after this
START_TIMEOUT = 60.0

#: The session's server: one-worker nginx, ``@PORT@`` replaced by its ``/bin/sh`` wrapper.
SESSION_CONF = """worker_processes 1;
error_log stderr warn;
events { worker_connections 4096; }
http {
    access_log off;
    default_type text/plain;
    keepalive_requests 1000000;
    client_body_temp_path client_body;
    proxy_temp_path proxy;
    fastcgi_temp_path fastcgi;
    uwsgi_temp_path uwsgi;
    scgi_temp_path scgi;
    server {
        listen 127.0.0.1:@PORT@;
        location / { return 200 "hello from the session\\n"; }
    }
}
"""

PATHS = ("direct", "nginx", "dormant", "nginx + forward-auth")

#: ``--gc-trace``: put on ``dormant serve``'s PYTHONPATH as ``sitecustomize.py``; logs every full
#: (generation 2) collection: wall-clock end, seconds it took, objects collected.
GC_HOOK = """import gc, os, sys, time

_path = os.environ.get("DORMANT_BENCH_GC_LOG")
if _path and "serve" in sys.argv[1:]:
    _out = open(_path, "a", buffering=1)
    _started = [0.0]

    def _trace(phase, info):
        if phase == "start":
            _started[0] = time.perf_counter()
        elif info["generation"] == 2:
            took = time.perf_counter() - _started[0]
            _out.write(f"{time.time():.4f} {took:.6f} {info['collected']}\\n")

    gc.callbacks.append(_trace)
"""


# helpers -----------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def ms(seconds: float, digits: int = 2) -> str:
    return f"{seconds * 1000:,.{digits}f}" if seconds == seconds else "-"


def signed(seconds: float) -> str:
    return f"{seconds * 1000:+,.2f}" if seconds == seconds else "-"


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def machine() -> str:
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (
        f"{os.cpu_count()} CPUs, {cpu}, Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def source_version() -> str:
    """The commit benchmarked and whether ``src/`` differs from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return "unknown"
    return f"commit {head or 'unknown'}" + (" + uncommitted changes in src/" if dirty else "")


def versions() -> str:
    nginx = subprocess.run([NGINX, "-v"], capture_output=True, text=True).stderr.strip()
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout
    return f"{nginx.replace('nginx version: ', '')}, {wrk.split(' Copyright')[0].strip()}"


def claim_ports(count: int) -> list[int]:
    """``count`` consecutive free ports below the kernel's ephemeral range (20000-32000), so
    that no client connection of the run takes one of them."""
    for _ in range(200):
        base = random.randrange(20000, 32000 - count)
        ports = list(range(base, base + count))
        socks = []
        try:
            for port in ports:
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
        return ports
    raise RuntimeError("no block of free ports found")


def group_cpu(pgid: int) -> float:
    """utime + stime (s) of every live process of process group ``pgid``."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(f"/proc/{entry.name}/stat") as stat:
                rest = stat.read().rsplit(")", 1)[1].split()
            if int(rest[2]) == pgid:
                total += int(rest[11]) + int(rest[12])
    return total / tick


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as stat:
        values = [int(x) for x in stat.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values) - idle, sum(values)


def pin_to(cpu: int | None) -> Callable[[], None] | None:
    if cpu is None:
        return None

    def pin() -> None:
        os.sched_setaffinity(0, {cpu})

    return pin


def kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def get_request(path: str, port: int, cookie: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"User-Agent: bench_proxy\r\nCookie: dormant_access={cookie}\r\n\r\n"
    ).encode()


def read_answer(sock: socket.socket, first: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 answer with a Content-Length from a blocking socket."""
    data = first
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} bytes")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed in the body")
        body += chunk
    return int(lines[0].split()[1]), headers, body


def fetch(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request)
        return read_answer(sock)


# the processes ------------------------------------------------------------------------------


class Serve:
    """``dormant serve`` in ``home`` with the session proxy; killed with its sessions' groups
    (from their ``pid.json``) whatever happens."""

    def __init__(self, home: Path, config: Path, cpu: int | None, gc_trace: bool) -> None:
        self.home = home
        ports = claim_ports(14)
        self.port, self.proxy_port = ports[0], ports[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.data = home / "data"
        self.cpu = cpu
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("DORMANT_")},
            "DORMANT_CONFIG": str(config),
            "DORMANT_PORT": str(self.port),
            "DORMANT_PROXY_PORT": str(self.proxy_port),
            "DORMANT_PORT_RANGE": f"{ports[2]}-{ports[-1]}",
            "DORMANT_DATA_DIR": str(self.data),
            "DORMANT_LOG_LEVEL": "WARNING",
            "DORMANT_LOG_FORMAT": "json",
            "DORMANT_RATE_LIMIT": "100000",
            "DORMANT_RATE_BURST": "100000",
            "DORMANT_POLICY_SLEEP_AFTER": "1h",
        }
        self.gc_log: Path | None = None
        if gc_trace:
            hook = home / "gc-hook"
            hook.mkdir()
            (hook / "sitecustomize.py").write_text(GC_HOOK)
            self.gc_log = home / "gc.log"
            self.env["PYTHONPATH"] = str(hook)
            self.env["DORMANT_BENCH_GC_LOG"] = str(self.gc_log)
        self.proc: subprocess.Popen[bytes] | None = None
        self.key = ""

    def full_collections(self, windows: Sequence[tuple[float, float]]) -> list[float]:
        """Seconds taken by each full collection of dormant serve within these windows."""
        if self.gc_log is None or not self.gc_log.exists():
            return []
        found = []
        for line in self.gc_log.read_text().splitlines():
            at, took, _ = line.split()
            if any(a <= float(at) <= b for a, b in windows):
                found.append(float(took))
        return found

    @property
    def log(self) -> Path:
        return self.home / "serve.log"

    def start(self) -> None:
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [str(Path(sys.executable).parent / "dormant"), "serve"],
                cwd=self.home,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=pin_to(self.cpu),
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dormant serve exited:\n{self.log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    self.key = (self.home / "dormant-admin.key").read_text().strip()
                    return
            time.sleep(0.1)
        raise RuntimeError("dormant serve did not answer /healthz")

    def session_groups(self) -> list[int]:
        groups = []
        for record in (self.data / "processes").glob("*/pid.json"):
            with contextlib.suppress(OSError, ValueError, KeyError):
                groups.append(int(json.loads(record.read_text())["pid"]))
        return groups

    def stop(self) -> None:
        left = self.session_groups()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        # Session processes outlive a stopped server on purpose; these are ours to remove.
        for pgid in {*left, *self.session_groups()}:
            kill_group(pgid)


class FrontNginx:
    """nginx (one worker) in ``directory``: a plain keep-alive proxy to the session's port on
    ``plain_port``, and the forward-auth example on ``auth_port``."""

    def __init__(self, directory: Path, session_id: str, session_port: int, proxy_port: int):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.plain_port, self.auth_port = claim_ports(2)
        example = EXAMPLE.read_text()
        example, n = re.subn(
            r"^(\s*)listen \d+;", rf"\g<1>listen 127.0.0.1:{self.auth_port};", example, flags=re.M
        )
        assert n == 1, "the example has no `listen PORT;`"
        example, n = re.subn(
            r"server 127\.0\.0\.1:\d+;", f"server 127.0.0.1:{proxy_port};", example
        )
        assert n == 1, "the example has no `server 127.0.0.1:PORT;`"
        (self.dir / "forward-auth.conf").write_text(example)
        self.conf = self.dir / "nginx.conf"
        self.conf.write_text(
            f"""worker_processes 1;
error_log {self.dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {self.dir}/client_body;
    proxy_temp_path {self.dir}/proxy;
    fastcgi_temp_path {self.dir}/fastcgi;
    uwsgi_temp_path {self.dir}/uwsgi;
    scgi_temp_path {self.dir}/scgi;
    upstream bench_session {{
        server 127.0.0.1:{session_port};
        keepalive 32;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{self.plain_port};
        location = /healthz {{ return 200 "ok\\n"; }}
        location /s/{session_id}/ {{
            proxy_pass http://bench_session/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
    include {self.dir}/forward-auth.conf;
}}
"""
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, cpu: int | None) -> None:
        command = [NGINX, "-e", "stderr", "-c", str(self.conf), "-p", f"{self.dir}/"]
        daemon = ["-g", f"daemon off; pid {self.dir}/nginx.pid;"]
        checked = subprocess.run([*command, *daemon, "-t"], capture_output=True, text=True)
        if checked.returncode != 0:
            raise RuntimeError(f"nginx -t failed:\n{checked.stderr}")
        with open(self.dir / "nginx.out", "wb") as out:
            self.proc = subprocess.Popen(
                [*command, *daemon],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=pin_to(cpu),
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited:\n{(self.dir / 'nginx.out').read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                url = f"http://127.0.0.1:{self.plain_port}/healthz"
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError("nginx did not answer /healthz")

    def problems(self) -> list[str]:
        lines = []
        for name in ("error.log", "nginx.out"):
            with contextlib.suppress(OSError):
                lines += (self.dir / name).read_text(errors="replace").splitlines()
        return [line for line in lines if re.search(r"\[(warn|error|crit|alert|emerg)\]", line)]

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
        finally:
            kill_group(proc.pid)  # workers outliving a killed master


# the fixed-rate generator -------------------------------------------------------------------


class BadAnswer(Exception):
    pass


class Conn(asyncio.Protocol):
    """One kept-alive client connection; answers must carry a Content-Length."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, bool]] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buf[:end]).lower()
        found = re.search(rb"\r\ncontent-length:\s*(\d+)", head)
        if found is None:
            waiter.set_exception(BadAnswer(f"no content-length: {head[:200]!r}"))
            self.close()
            return
        total = end + 4 + int(found.group(1))
        if len(self.buf) < total:
            return
        del self.buf[:total]
        waiter.set_result((int(head[9:12]), b"\r\nconnection: close" not in head))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("the server closed the connection"))

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


@dataclass
class RateRun:
    path: str
    latency: list[float] = field(default_factory=list)  # scheduled -> whole answer
    service: list[float] = field(default_factory=list)  # sent -> whole answer
    late: list[float] = field(default_factory=list)  # scheduled -> sent
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    reconnects: int = 0
    seconds: float = 0.0
    windows: list[tuple[float, float]] = field(default_factory=list)  # wall clock

    def merge(self, other: RateRun) -> None:
        self.windows += other.windows
        self.latency += other.latency
        self.service += other.service
        self.late += other.late
        self.statuses += other.statuses
        self.errors += other.errors
        self.reconnects += other.reconnects
        self.seconds += other.seconds


async def fixed_rate(
    path: str, port: int, request: bytes, rate: float, seconds: float, conns: int
) -> RateRun:
    """Open loop: request ``i`` is due at ``start + i / rate``; latency counts from then."""
    loop = asyncio.get_running_loop()
    run = RateRun(path)

    async def connect() -> Conn:
        _, conn = await loop.create_connection(Conn, "127.0.0.1", port)
        return conn

    idle: deque[Conn] = deque([await connect() for _ in range(conns)])
    backlog: deque[float] = deque()
    total = max(1, int(rate * seconds))
    finished = 0
    done = asyncio.Event()
    tasks: set[asyncio.Task[None]] = set()

    async def serve(conn: Conn, due: float) -> None:
        nonlocal finished
        while True:
            if conn.closed:  # closed by the server while idle
                run.reconnects += 1
                conn = await connect()
            sent = loop.time()
            waiter: asyncio.Future[tuple[int, bool]] = loop.create_future()
            conn.waiter = waiter
            assert conn.transport is not None
            conn.transport.write(request)
            keep = False
            try:
                status, keep = await asyncio.wait_for(waiter, REQUEST_TIMEOUT)
                now = loop.time()
                run.latency.append(now - due)
                run.service.append(now - sent)
                run.late.append(sent - due)
                run.statuses[status] += 1
            except (ConnectionError, OSError, BadAnswer, TimeoutError) as exc:
                run.errors[f"{type(exc).__name__}: {exc}"[:160]] += 1
            conn.waiter = None
            finished += 1
            if finished >= total:
                done.set()
            if not keep:
                conn.close()
            if not backlog:
                idle.append(conn)
                return
            due = backlog.popleft()

    def spawn(conn: Conn, due: float) -> None:
        task = asyncio.create_task(serve(conn, due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    start = loop.time() + 0.01
    wall = time.time() + 0.01
    for i in range(total):
        due = start + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        if idle:
            spawn(idle.popleft(), due)
        else:
            backlog.append(due)
    try:
        await asyncio.wait_for(done.wait(), REQUEST_TIMEOUT * 3)
    except TimeoutError:
        run.errors[f"run did not finish: {total - finished} requests unanswered"] += 1
    run.seconds = loop.time() - start
    run.windows.append((wall, wall + run.seconds))
    for task in list(tasks):
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for conn in idle:
        conn.close()
    return run


# wrk ----------------------------------------------------------------------------------------


@dataclass
class WrkRun:
    what: str
    requests: int = 0
    seconds: float = 0.0
    p50: float = float("nan")
    p99: float = float("nan")
    non_2xx: int = 0
    socket_errors: str = ""
    cpu: dict[str, float] = field(default_factory=dict)  # group name -> CPU s
    wrk_cpu: float = 0.0
    machine_busy: float = 0.0
    output: str = ""
    window: tuple[float, float] = (0.0, 0.0)  # wall clock

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else float("nan")

    def cores(self, *names: str) -> float:
        return sum(self.cpu.get(n, 0.0) for n in names) / self.seconds if self.seconds else 0.0

    def per_core(self, *names: str) -> float:
        cores = self.cores(*names)
        return self.rate / cores if cores else float("nan")


def _duration(text: str) -> float:
    value = float(re.match(r"[\d.]+", text).group(0))  # type: ignore[union-attr]
    unit = text[len(re.match(r"[\d.]+", text).group(0)) :]  # type: ignore[union-attr]
    return value * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[unit]


def wrk(
    what: str,
    url: str,
    headers: Sequence[str],
    seconds: float,
    conns: int,
    cpu: int | None,
    groups: dict[str, int],
) -> WrkRun:
    command = ["wrk", "-t1", f"-c{conns}", f"-d{seconds:g}s", "--latency", "--timeout", "5s"]
    for header in headers:
        command += ["-H", header]
    command.append(url)
    before = {name: group_cpu(pgid) for name, pgid in groups.items()}
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    ticks = machine_ticks()
    started = time.time()
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        preexec_fn=pin_to(cpu),
        check=False,
    )
    busy = machine_ticks()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    run = WrkRun(what, output=done.stdout + done.stderr, window=(started, time.time()))
    run.cpu = {name: group_cpu(pgid) - before[name] for name, pgid in groups.items()}
    run.wrk_cpu = (after.ru_utime - children.ru_utime) + (after.ru_stime - children.ru_stime)
    run.machine_busy = (busy[0] - ticks[0]) / max(1, busy[1] - ticks[1])
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {run.output}")
    found = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", done.stdout)
    if found is None:
        raise RuntimeError(f"cannot read wrk's output: {done.stdout}")
    run.requests = int(found.group(1))
    run.seconds = _duration(found.group(2) + found.group(3))
    for q, attr in (("50", "p50"), ("99", "p99")):
        line = re.search(rf"^\s+{q}%\s+([\d.]+\w+)", done.stdout, flags=re.M)
        if line:
            setattr(run, attr, _duration(line.group(1)))
    non = re.search(r"Non-2xx or 3xx responses: (\d+)", done.stdout)
    run.non_2xx = int(non.group(1)) if non else 0
    errors = re.search(r"Socket errors: (.*)", done.stdout)
    run.socket_errors = errors.group(1).strip() if errors else ""
    return run


# wake on request ----------------------------------------------------------------------------


@dataclass
class Wake:
    ttfb: float  # request sent -> first byte of the answer
    total: float  # -> whole answer
    status: int
    timeline: float  # starting -> running of this wake, from the session's events
    to_starting: float  # request sent -> `starting` (clocks: this host's)
    after_running: float  # `running` -> first byte
    port_changed: bool


def parse_at(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def wake_once(api: httpx.Client, serve: Serve, sid: str, cookie: str) -> Wake:
    slept = api.post(f"/v1/sessions/{sid}/sleep?wait=30")
    outcome = slept.json().get("outcome") or {}
    if slept.status_code != 202 or not outcome.get("ok"):
        raise RuntimeError(f"sleep failed: {slept.status_code} {slept.text}")
    before = api.get(f"/v1/sessions/{sid}").json()
    if before["state"] != "sleeping":
        raise RuntimeError(f"not asleep after sleep?wait: {before['state']}")
    time.sleep(0.3)  # nothing of the sleep still in flight
    with socket.create_connection(("127.0.0.1", serve.proxy_port), timeout=90) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        request = get_request(f"/s/{sid}/", serve.proxy_port, cookie)
        sent_wall = time.time()
        sent = time.perf_counter()
        sock.sendall(request)
        first = sock.recv(1)
        ttfb = time.perf_counter() - sent
        status, _, body = read_answer(sock, first)
        total = time.perf_counter() - sent
    if status != 200 or body.decode() != BODY:
        print(f"  wake answered {status}: {body[:200]!r}")
    events = api.get(f"/v1/sessions/{sid}/events").json()["items"]
    transitions = sorted(
        (parse_at(e["at"]), e["from_state"], e["to_state"])
        for e in events
        if e["type"] == "transition" or e.get("to_state")
    )
    starting = max(t for t, a, b in transitions if a == "sleeping" and b == "starting")
    running = max(t for t, a, b in transitions if a == "starting" and b == "running")
    after = api.get(f"/v1/sessions/{sid}").json()
    return Wake(
        ttfb,
        total,
        status,
        running - starting,
        starting - sent_wall,
        sent_wall + ttfb - running,
        after.get("port") != before.get("port"),
    )


def direct_start(command: list[str], home: Path, index: int, cpu: int | None) -> float:
    """The template's command spawned here on a free port: Popen -> first byte of a 200."""
    work = home / f"direct-{index}"
    work.mkdir()
    port = claim_ports(1)[0]
    values = {"port": str(port), "workdir": str(work), "session": f"direct{index}"}
    argv = [part.format(**values) for part in command]
    env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "LC_ALL", "TZ") if k in os.environ}
    env["PORT"] = str(port)
    request = get_request("/", port, "x")
    with open(work / "log.txt", "wb") as log:
        started = time.perf_counter()
        proc = subprocess.Popen(
            argv,
            cwd=work,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=pin_to(cpu),
        )
    try:
        while time.perf_counter() - started < START_TIMEOUT:
            if proc.poll() is not None:
                raise RuntimeError(f"the command exited: {(work / 'log.txt').read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                    sock.sendall(request)
                    first = sock.recv(1)
                    answered = time.perf_counter() - started
                    status, _, _ = read_answer(sock, first)
                    if status == 200:
                        return answered
            except OSError:
                pass
            time.sleep(0.001)
        raise RuntimeError("the command did not answer")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            kill_group(proc.pid)
            proc.wait(10)


# the run ------------------------------------------------------------------------------------


def write_config(home: Path) -> tuple[Path, list[str]]:
    template = home / "session-nginx.conf"
    template.write_text(SESSION_CONF)
    script = (
        f'sed "s/@PORT@/$PORT/" {template} > "{{workdir}}/nginx.conf" && '
        f'exec {NGINX} -e stderr -p "{{workdir}}/" -c "{{workdir}}/nginx.conf" '
        "-g 'daemon off; pid {workdir}/nginx.pid;'"
    )
    command = ["/bin/sh", "-c", script]
    config = home / "dormant.toml"
    config.write_text(
        f"""default_template = "nginx"

[templates.nginx]
command = {json.dumps(command)}
start_timeout = 30
wake_timeout = 60
"""
    )
    return config, command


def cookie_for(api: httpx.Client, sid: str) -> str:
    link = api.post(f"/v1/sessions/{sid}/links", json={"ttl": 300})
    link.raise_for_status()
    opened = httpx.get(link.json()["url"], follow_redirects=False, timeout=30)
    if opened.status_code != 302:
        raise RuntimeError(f"the link answered {opened.status_code}: {opened.text}")
    value = opened.cookies.get("dormant_access")
    if not value:
        raise RuntimeError(f"no dormant_access cookie: {opened.headers}")
    return value


def log_problems(serve: Serve, sid: str | None) -> list[str]:
    found: Counter[str] = Counter()
    with contextlib.suppress(OSError):
        for line in serve.log.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:  # the first admin key's banner (not printed), or a traceback
                if "Traceback" in line or "Error" in line:
                    found[f"(not json) {line[:200]}"] += 1
                continue
            if str(record.get("level", "")).lower() in ("warning", "error", "critical"):
                found[
                    f"{record.get('level')} {record.get('logger', '')}: "
                    f"{str(record.get('message', record.get('event', '')))[:200]}"
                ] += 1
    if sid is not None:
        with contextlib.suppress(OSError):
            text = (serve.data / "processes" / f"dormant-{sid}" / "log.txt").read_text()
            for line in text.splitlines():
                if re.search(r"\[(warn|error|crit|alert|emerg)\]", line):
                    found[f"session nginx: {re.sub(r'^[0-9/: ]+', '', line)[:200]}"] += 1
    return [f"{count} x {what}" for what, count in found.most_common()]


def run(args: argparse.Namespace, home: Path) -> None:
    pin = args.pin and (os.cpu_count() or 1) >= 2
    server_cpu, gen_cpu = (0, 1) if pin else (None, None)
    if pin:
        os.sched_setaffinity(0, {1})
    config, command = write_config(home)
    serve = Serve(home, config, server_cpu, args.gc_trace)
    front: FrontNginx | None = None
    api: httpx.Client | None = None
    sid: str | None = None
    print(f"machine: {machine()}")
    print(f"source: {source_version()}; {versions()}")
    print(f"load average at start {load_average()}")
    print(
        "pinning: "
        + (
            "this script and wrk on CPU 1; dormant serve, its session and nginx on CPU 0"
            if pin
            else "none"
        )
    )
    try:
        serve.start()
        api = httpx.Client(base_url=serve.url, headers={"X-API-Key": serve.key}, timeout=60)
        made = api.post("/v1/sessions?wait=30", json={"user_id": "bench"})
        if made.status_code != 201 or made.json()["state"] != "running":
            raise RuntimeError(f"create failed: {made.status_code} {made.text}")
        sid = str(made.json()["id"])
        session_port = int(made.json()["port"])
        cookie = cookie_for(api, sid)
        session_pgid = serve.session_groups()[0]
        front = FrontNginx(home / "nginx", sid, session_port, serve.proxy_port)
        front.start(server_cpu)
        assert serve.proc is not None and front.proc is not None
        groups = {"dormant": serve.proc.pid, "nginx": front.proc.pid, "session": session_pgid}
        targets = {
            "direct": (session_port, "/"),
            "nginx": (front.plain_port, f"/s/{sid}/"),
            "dormant": (serve.proxy_port, f"/s/{sid}/"),
            "nginx + forward-auth": (front.auth_port, f"/s/{sid}/"),
        }
        print(
            f"session {sid} on port {session_port}; proxy {serve.proxy_port}; nginx plain "
            f"{front.plain_port}, forward-auth example {front.auth_port}"
        )
        for path, (port, target) in targets.items():
            status, headers, body = fetch(port, get_request(target, port, cookie))
            served = headers.get("x-served-by", "")
            print(
                f"check {path}: {status} {body!r}" + (f" (X-Served-By {served})" if served else "")
            )
            if status != 200 or body.decode() != BODY:
                raise RuntimeError(f"{path} does not reach the session: {status} {body!r}")
            if path == "nginx + forward-auth" and served != "nginx":
                raise RuntimeError(f"forward-auth delegated the request ({served})")

        # 1. fixed rate -----------------------------------------------------------------------
        rate_runs = {path: RateRun(path) for path in PATHS}
        for round_ in range(args.rounds):
            for path in PATHS[round_ % 4 :] + PATHS[: round_ % 4]:  # each round starts later
                port, target = targets[path]
                request = get_request(target, port, cookie)
                asyncio.run(fixed_rate(path, port, request, args.rate, 0.5, args.conns))  # warm
                got = asyncio.run(
                    fixed_rate(path, port, request, args.rate, args.rate_seconds, args.conns)
                )
                rate_runs[path].merge(got)
                print(
                    f"rate round {round_ + 1} {path}: {len(got.latency):,} answers in "
                    f"{got.seconds:.1f} s, p50 {ms(percentile(got.latency, 50))} p99 "
                    f"{ms(percentile(got.latency, 99))} max {ms(max(got.latency, default=0))} ms; "
                    f"statuses {dict(got.statuses)}, errors {dict(got.errors)}, reconnects "
                    f"{got.reconnects}"
                )

        # 2. saturation -----------------------------------------------------------------------
        sat: dict[str, WrkRun] = {}
        header = [f"Cookie: dormant_access={cookie}"]
        for path in PATHS:
            port, target = targets[path]
            url = f"http://127.0.0.1:{port}{target}"
            wrk("warm-up", url, header, 1, args.wrk_conns, gen_cpu, groups)
            sat[path] = got_w = wrk(
                path, url, header, args.saturate, args.wrk_conns, gen_cpu, groups
            )
            print(
                f"saturated {path}: {got_w.rate:,.0f} requests/s; CPU cores dormant "
                f"{got_w.cores('dormant'):.2f}, nginx {got_w.cores('nginx'):.2f}, session "
                f"{got_w.cores('session'):.2f}, wrk {got_w.wrk_cpu / got_w.seconds:.2f}; machine "
                f"busy {got_w.machine_busy:.0%}; latency p50 {ms(got_w.p50)} p99 "
                f"{ms(got_w.p99)} ms; non-2xx {got_w.non_2xx}; socket errors "
                f"{got_w.socket_errors or 'none'}"
            )

        # 3. forward-auth alone ---------------------------------------------------------------
        auth_headers = [*header, f"X-Original-URI: /s/{sid}/"]
        for what, query in (("forward-auth", ""), ("forward-auth ?delegate=1", "?delegate=1")):
            url = f"http://127.0.0.1:{serve.proxy_port}/v1/forward-auth{query}"
            status, headers, _ = fetch(
                serve.proxy_port,
                get_request(f"/v1/forward-auth{query}", serve.proxy_port, cookie).replace(
                    b"\r\n\r\n", f"\r\nX-Original-URI: /s/{sid}/\r\n\r\n".encode()
                ),
            )
            print(f"check {what}: {status}, X-Dormant-Upstream {headers.get('x-dormant-upstream')}")
            wrk("warm-up", url, auth_headers, 1, args.wrk_conns, gen_cpu, groups)
            sat[what] = got_w = wrk(
                what, url, auth_headers, args.saturate, args.wrk_conns, gen_cpu, groups
            )
            print(
                f"saturated {what}: {got_w.rate:,.0f} answers/s; dormant "
                f"{got_w.cores('dormant'):.2f} cores = {got_w.per_core('dormant'):,.0f} per "
                f"core; p50 {ms(got_w.p50)} p99 {ms(got_w.p99)} ms; non-2xx {got_w.non_2xx}; "
                f"socket errors {got_w.socket_errors or 'none'}"
            )

        # 4. wake on request ------------------------------------------------------------------
        wakes: list[Wake] = []
        direct: list[float] = []
        for i in range(args.wakes):
            direct.append(direct_start(command, home, i, server_cpu))
            w = wake_once(api, serve, sid, cookie)
            wakes.append(w)
            print(
                f"wake {i + 1}: first byte {ms(w.ttfb, 1)} ms ({w.status}); timeline starting "
                f"-> running {ms(w.timeline, 1)} ms; sent -> starting {ms(w.to_starting, 1)} "
                f"ms, running -> first byte {ms(w.after_running, 1)} ms; port changed "
                f"{w.port_changed}; the command alone {ms(direct[-1], 1)} ms"
            )

        print(f"\nload average at end {load_average()}")
        problems = log_problems(serve, sid)
        print(f"dormant serve and session log, warnings and errors: {len(problems)} kinds")
        for line in problems[:20]:
            print(f"  {line}")
        nginx_problems = front.problems()
        print(f"front nginx warnings and errors: {len(nginx_problems)}")
        for line in nginx_problems[:10]:
            print(f"  {line}")
        report(args, rate_runs, sat, wakes, direct)
        if args.gc_trace:
            gc_report(serve, rate_runs, sat)
    finally:
        if api is not None:
            if sid is not None:
                with contextlib.suppress(httpx.HTTPError):
                    gone = api.delete(f"/v1/sessions/{sid}?wait=30")
                    print(f"session deleted: {gone.status_code}", file=sys.stderr)
            api.close()
        if front is not None:
            front.stop()
        serve.stop()
        kept = Path(tempfile.gettempdir()) / "dormant-bench-proxy-serve.log"
        with contextlib.suppress(OSError):
            shutil.copy(serve.log, kept)
            print(f"server log: {kept}", file=sys.stderr)


def report(
    args: argparse.Namespace,
    rate_runs: dict[str, RateRun],
    sat: dict[str, WrkRun],
    wakes: list[Wake],
    direct: list[float],
) -> None:
    base = rate_runs["direct"]
    b50, b99 = percentile(base.latency, 50), percentile(base.latency, 99)
    print(
        f"\nfixed rate, {args.rate:,.0f} requests/s, open loop, {args.conns} connections, "
        f"{args.rounds} x {args.rate_seconds:g} s per path; ms from the scheduled time"
    )
    print(
        "| path | answers/s | p50 | p99 | max | added p50 | added p99 | sent late p99 | "
        "non-200 | errors |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for path in PATHS:
        r = rate_runs[path]
        non200 = sum(c for s, c in r.statuses.items() if s != 200)
        p50, p99 = percentile(r.latency, 50), percentile(r.latency, 99)
        added = path != "direct"
        print(
            f"| {path} | {len(r.latency) / r.seconds:,.0f} | {ms(p50)} | {ms(p99)} | "
            f"{ms(max(r.latency, default=float('nan')))} | "
            f"{signed(p50 - b50) if added else '-'} | {signed(p99 - b99) if added else '-'} "
            f"| {ms(percentile(r.late, 99))} | {non200} | {sum(r.errors.values())} |"
        )
    print(f"\nsaturation, wrk -t1 -c{args.wrk_conns}, {args.saturate:g} s per path")
    print(
        "| path | requests/s | proxy CPU cores | requests/s per proxy core | session nginx "
        "cores | wrk cores | p50 / p99 ms | added p50 / p99 ms | non-2xx | socket errors |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    s50, s99 = sat["direct"].p50, sat["direct"].p99
    proxy_of = {
        "direct": (),
        "nginx": ("nginx",),
        "dormant": ("dormant",),
        "nginx + forward-auth": ("nginx", "dormant"),
        "forward-auth": ("dormant",),
        "forward-auth ?delegate=1": ("dormant",),
    }
    for what, w in sat.items():
        names = proxy_of[what]
        cores = f"{w.cores(*names):.2f}" if names else "-"
        if len(names) == 2:
            cores = f"{w.cores(*names):.2f} (nginx {w.cores('nginx'):.2f})"
        per = f"{w.per_core(*names):,.0f}" if names else "-"
        added = f"{signed(w.p50 - s50)} / {signed(w.p99 - s99)}" if names else "-"
        if what.startswith("forward-auth"):
            added = "-"  # no upstream behind it: not comparable with direct
        print(
            f"| {what} | {w.rate:,.0f} | {cores} | {per} | {w.cores('session'):.2f} | "
            f"{w.wrk_cpu / w.seconds:.2f} | {ms(w.p50)} / {ms(w.p99)} | {added} | {w.non_2xx} | "
            f"{w.socket_errors or 'none'} |"
        )
    ttfb = [w.ttfb for w in wakes]
    timeline = [w.timeline for w in wakes]
    extra = [w.ttfb - w.timeline for w in wakes]
    extra_direct = [w.ttfb - d for w, d in zip(wakes, direct, strict=True)]
    print(f"\nwake on request, {len(wakes)} samples (ms)")
    print("| | p50 | max |")
    print("|---|---|---|")
    rows = [
        ("first byte through dormant's proxy", ttfb),
        ("runtime start: timeline starting -> running", timeline),
        ("runtime start: the command alone until it answers", direct),
        ("request sent -> starting", [w.to_starting for w in wakes]),
        ("running -> first byte", [w.after_running for w in wakes]),
        ("first byte - timeline start (per sample)", extra),
        ("first byte - command alone (paired)", extra_direct),
    ]
    for name, values in rows:
        print(
            f"| {name} | {ms(percentile(values, 50), 1)} | "
            f"{ms(max(values, default=float('nan')), 1)} |"
        )
    non200 = [w.status for w in wakes if w.status != 200]
    if non200:
        print(f"wake answers other than 200: {non200}")

    print("\ntargets:")
    d = rate_runs["dormant"]
    a50 = (percentile(d.latency, 50) - b50) * 1000
    a99 = (percentile(d.latency, 99) - b99) * 1000
    verdict = {True: "met", False: "MISSED"}
    print(
        f"- dormant's proxy adds {a50:+.2f} ms p50 at {args.rate:,.0f}/s (target <= "
        f"{TARGET_ADDED_P50_MS:g} ms): {verdict[a50 <= TARGET_ADDED_P50_MS]}"
    )
    print(
        f"- dormant's proxy adds {a99:+.2f} ms p99 at {args.rate:,.0f}/s (target <= "
        f"{TARGET_ADDED_P99_MS:g} ms): {verdict[a99 <= TARGET_ADDED_P99_MS]}"
    )
    ours, theirs = sat["dormant"].per_core("dormant"), sat["nginx"].per_core("nginx")
    share = ours / theirs
    print(
        f"- requests/s per core, dormant {ours:,.0f} vs nginx {theirs:,.0f} = {share:.0%} "
        f"(target >= {TARGET_PER_CORE_SHARE:.0%}): {verdict[share >= TARGET_PER_CORE_SHARE]}"
    )
    fa = sat["forward-auth"].rate
    print(
        f"- forward-auth {fa:,.0f}/s for a running session (target >= "
        f"{TARGET_FORWARD_AUTH:,.0f}/s): {verdict[fa >= TARGET_FORWARD_AUTH]}"
    )
    worst = max(extra, default=float("nan")) * 1000
    med = percentile(extra, 50) * 1000
    print(
        f"- first byte after a wake - the runtime's start (timeline): p50 {med:+.1f} ms, max "
        f"{worst:+.1f} ms (target <= +{TARGET_WAKE_EXTRA_MS:g} ms): "
        f"{verdict[worst <= TARGET_WAKE_EXTRA_MS]} (max), "
        f"{verdict[med <= TARGET_WAKE_EXTRA_MS]} (p50)"
    )
    dmed = percentile(extra_direct, 50) * 1000
    dworst = max(extra_direct, default=float("nan")) * 1000
    print(
        f"  against the command alone: p50 {dmed:+.1f} ms, max {dworst:+.1f} ms: "
        f"{verdict[dworst <= TARGET_WAKE_EXTRA_MS]} (max), "
        f"{verdict[dmed <= TARGET_WAKE_EXTRA_MS]} (p50)"
    )


def gc_report(serve: Serve, rate_runs: dict[str, RateRun], sat: dict[str, WrkRun]) -> None:
    print("\nfull (generation 2) collections of dormant serve during each run (--gc-trace)")
    print("| run | collections | per s | p50 ms | max ms |")
    print("|---|---|---|---|---|")
    rows: list[tuple[str, list[tuple[float, float]], float]] = [
        (f"{p}, fixed rate", r.windows, r.seconds)
        for p, r in rate_runs.items()
        if p not in ("direct", "nginx")  # dormant is not on these paths
    ]
    rows += [
        (f"{w}, saturated", [s.window], s.seconds)
        for w, s in sat.items()
        if w not in ("direct", "nginx")
    ]
    for name, windows, seconds in rows:
        took = serve.full_collections(windows)
        print(
            f"| {name} | {len(took)} | {len(took) / seconds:.2f} | "
            f"{ms(percentile(took, 50), 1)} | {ms(max(took, default=float('nan')), 1)} |"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="requests/s (1000)")
    parser.add_argument("--rate-seconds", type=float, default=5.0, help="per path, round (5)")
    parser.add_argument("--rounds", type=int, default=2, help="fixed-rate rounds (2)")
    parser.add_argument("--conns", type=int, default=32, help="fixed-rate connections (32)")
    parser.add_argument("--saturate", type=float, default=8.0, help="s of wrk per path (8)")
    parser.add_argument("--wrk-conns", type=int, default=32, help="wrk connections (32)")
    parser.add_argument("--wakes", type=int, default=10, help="wake samples (10)")
    parser.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="generators on CPU 1, everything measured on CPU 0 (default: on)",
    )
    parser.add_argument(
        "--gc-trace",
        action="store_true",
        help="log dormant serve's full garbage collections (a sitecustomize on its PYTHONPATH)",
    )
    return parser.parse_args(argv)


def main() -> int:
    args = parse_args()
    missing = []
    if not os.access(NGINX, os.X_OK):
        missing.append(f"{NGINX} (Debian's nginx: bash scripts/nginx-up.sh)")
    if shutil.which("wrk") is None:
        missing.append("wrk, the load generator for saturation (apt-get install -y wrk)")
    if missing:
        print("bench_proxy: missing " + "; ".join(missing), file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="dormant-bench-proxy-") as tmp:
        run(args, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
