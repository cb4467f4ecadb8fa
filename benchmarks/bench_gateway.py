"""Gateway benchmark: N concurrent Socket.IO clients on loopback against ``dormant serve``.

Run from the repository root::

    .venv/bin/python benchmarks/bench_gateway.py                      # 5,000 clients, 30 s
    .venv/bin/python benchmarks/bench_gateway.py --clients 500 --seconds 10

``dormant serve`` runs as a subprocess in a temporary directory (default process runtime,
``--sessions`` sessions, the connections spread over them). Every client speaks Socket.IO v5 over
an Engine.IO v4 WebSocket (a small protocol client on aiohttp: python-socketio's client costs
too much CPU per connection to hold thousands from one core), authenticates with a token from
``POST /v1/sessions/{id}/tokens``, answers Engine.IO pings and the gateway's ``ping {ts}``, and
sends ``activity {kind: "user-interaction"}`` with an ack once per second (random phase).

What it reports (targets from issue 4 in brackets):

1. connections held: connected at the end of the window with no disconnect during it, and the
   sum of ``connections`` over the sessions in the REST API                  [>= 5,000]
2. events/s: the server's own ``dormant_activity_events_applied`` counter over the window
   (and the events sent and acknowledged, client side)                       [>= 5,000/s]
3. event-to-engine latency p50/p99: client send -> ``Engine.record_activity`` done -> ack
   received; a round trip, so an upper bound of the one-way figure          [p99 <= 50 ms]
   (``--ack-every K`` asks an ack for 1 event in K, as a fire-and-forget client would)
4. server RSS per connection: (RSS holding N connections - RSS before the first) / N
                                                                              [<= 50 KB]
Heartbeats are on: the gateway's ``ping {ts}`` every ``--heartbeat`` seconds (the policy's
``heartbeat_interval``, default 25 s as in production; ``--heartbeat 5`` for five times more),
Engine.IO's own ping/pong and uvicorn's WebSocket keepalive pings. The run is bounded
(``--seconds`` of measurement after the ramp-up, a hard overall timeout), stops by itself, and
deletes its sessions and stops the server also when interrupted. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx

ROOT = Path(__file__).resolve().parents[1]
KIND = json.dumps({"kind": "user-interaction"}, separators=(",", ":"))


@dataclass
class Totals:
    connected: int = 0
    refused: int = 0
    failed: int = 0
    disconnected_in_window: int = 0
    acks: int = 0
    acks_ok: int = 0
    pings: int = 0
    eio_pings: int = 0
    sent: int = 0
    latencies: list[float] = field(default_factory=list)
    measuring: bool = False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "_total "):
            return float(line.split()[-1])
    raise KeyError(name)


class Client:
    """One Socket.IO connection: Engine.IO v4 over a WebSocket, namespace ``/``."""

    def __init__(self, url: str, token: str, totals: Totals, ack_every: int = 1) -> None:
        self.url = url
        self.token = token
        self.totals = totals
        self.ack_every = ack_every
        self.sent = 0
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.pending: dict[int, float] = {}
        self.next_id = 0
        self.alive = False

    async def connect(self, http: aiohttp.ClientSession) -> bool:
        ws = await http.ws_connect(
            self.url + "/socket.io/?EIO=4&transport=websocket", heartbeat=None, autoping=True
        )
        opened = await ws.receive_str(timeout=30)
        if not opened.startswith("0"):
            raise RuntimeError(f"unexpected open packet {opened[:80]}")
        await ws.send_str("40" + json.dumps({"token": self.token}))
        while True:
            text = await ws.receive_str(timeout=30)
            if text.startswith("40"):
                break
            if text.startswith("44"):
                self.totals.refused += 1
                await ws.close()
                return False
            if text == "2":
                await ws.send_str("3")
        self.ws = ws
        self.alive = True
        return True

    async def read(self) -> None:
        assert self.ws is not None
        ws, totals = self.ws, self.totals
        async for message in ws:
            if message.type is not aiohttp.WSMsgType.TEXT:
                break
            text: str = message.data
            if text == "2":
                totals.eio_pings += 1
                await ws.send_str("3")
            elif text.startswith("43"):
                bracket = text.index("[")
                sent = self.pending.pop(int(text[2:bracket]), None)
                if sent is not None and totals.measuring:
                    totals.acks += 1
                    totals.latencies.append(time.perf_counter() - sent)
                    if text[bracket:].startswith('[{"ok":true'):
                        totals.acks_ok += 1
            elif text.startswith('42["ping"'):
                totals.pings += 1
                ts = json.loads(text[2:])[1]["ts"]
                await ws.send_str(f'42["pong",{{"ts":{ts}}}]')
        self.alive = False
        if totals.measuring:
            totals.disconnected_in_window += 1

    async def send_activity(self) -> None:
        if not self.alive or self.ws is None:
            return
        self.sent += 1
        if self.totals.measuring:
            self.totals.sent += 1
        if self.sent % self.ack_every:
            await self.ws.send_str(f'42["activity",{KIND}]')  # no ack asked
            return
        self.next_id += 1
        self.pending[self.next_id] = time.perf_counter()
        if len(self.pending) > 100:  # never answered: forget the oldest
            self.pending.pop(next(iter(self.pending)))
        await self.ws.send_str(f'42{self.next_id}["activity",{KIND}]')

    async def close(self) -> None:
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()


async def _activity_loop(clients: list[Client], stop: asyncio.Event) -> None:
    """Each client sends once per second at its own random phase (one loop, 20 slots/s)."""
    slots = 20
    buckets: list[list[Client]] = [[] for _ in range(slots)]
    for client in clients:
        buckets[random.randrange(slots)].append(client)
    start = time.perf_counter()
    tick = 0
    while not stop.is_set():
        for client in buckets[tick % slots]:
            await client.send_activity()
        tick += 1
        delay = start + tick / slots - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)


class Serve:
    """``dormant serve`` in a temporary directory; stopped (and its sessions' processes killed)
    whatever happens."""

    def __init__(self, home: Path, sessions: int, heartbeat: float, clients: int) -> None:
        self.home = home
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        base = _free_port() % 20000 + 30000
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("DORMANT_")},
            "DORMANT_PORT": str(self.port),
            "DORMANT_PORT_RANGE": f"{base}-{base + sessions + 10}",
            "DORMANT_LOG_LEVEL": "WARNING",
            "DORMANT_RATE_LIMIT": "100000",
            "DORMANT_RATE_BURST": "100000",
            "DORMANT_GATEWAY_MAX_CONNECTIONS": str(clients + 1000),
            "DORMANT_GATEWAY_MAX_CONNECTIONS_PER_SESSION": str(clients),
            "DORMANT_POLICY_HEARTBEAT_INTERVAL": str(heartbeat),
            "DORMANT_POLICY_SLEEP_AFTER": "1h",
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.key = ""

    def start(self) -> None:
        log = open(self.home / "serve.log", "wb")  # noqa: SIM115 (the child keeps it)
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "dormant"), "serve"],
            cwd=self.home,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError((self.home / "serve.log").read_text()[-3000:])
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    self.key = (self.home / "dormant-admin.key").read_text().strip()
                    return
            time.sleep(0.1)
        raise RuntimeError("dormant serve did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        # Session processes outlive a stopped server on purpose; these are ours to remove.
        root = str((self.home / "dormant-data" / "processes").resolve())
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                environ = Path(f"/proc/{entry.name}/environ").read_bytes()
            except OSError:
                continue
            if f"DORMANT_RUNTIME_ROOT={root}".encode() in environ.split(b"\0"):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(os.getpgid(int(entry.name)), signal.SIGKILL)


async def _sessions(api: httpx.AsyncClient, count: int) -> list[tuple[str, str]]:
    made = []
    for i in range(count):
        response = await api.post("/v1/sessions", json={"user_id": f"bench{i}"})
        response.raise_for_status()
        made.append(response.json()["id"])
    for sid in made:
        for _ in range(600):
            state = (await api.get(f"/v1/sessions/{sid}")).json()["state"]
            if state == "running":
                break
            await asyncio.sleep(0.1)
        else:
            raise RuntimeError(f"session {sid} never ran")
    tokens = []
    for sid in made:
        response = await api.post(f"/v1/sessions/{sid}/tokens", json={"ttl": 3600})
        response.raise_for_status()
        tokens.append((sid, response.json()["token"]))
    return tokens


async def run(args: argparse.Namespace, serve: Serve) -> dict[str, Any]:
    assert serve.proc is not None
    pid = serve.proc.pid
    totals = Totals()
    api = httpx.AsyncClient(base_url=serve.url, headers={"X-API-Key": serve.key}, timeout=60)
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    http = aiohttp.ClientSession(connector=connector)
    clients: list[Client] = []
    readers: list[asyncio.Task[None]] = []
    stop = asyncio.Event()
    tokens: list[tuple[str, str]] = []
    try:
        tokens += await _sessions(api, args.sessions)
        await asyncio.sleep(1)
        rss_before = _rss_kb(pid)

        ramp_started = time.perf_counter()
        gate = asyncio.Semaphore(args.concurrency)

        async def one(i: int) -> None:
            _, token = tokens[i % len(tokens)]
            client = Client(serve.url, token, totals, args.ack_every)
            async with gate:
                try:
                    if await client.connect(http):
                        totals.connected += 1
                        clients.append(client)
                        readers.append(asyncio.create_task(client.read()))
                except (aiohttp.ClientError, TimeoutError, RuntimeError, OSError):
                    totals.failed += 1

        await asyncio.gather(*(one(i) for i in range(args.clients)))
        ramp = time.perf_counter() - ramp_started

        sender = asyncio.create_task(_activity_loop(clients, stop))
        await asyncio.sleep(args.warmup)
        applied_before = _metric(
            (await api.get("/metrics")).text, "dormant_activity_events_applied"
        )
        totals.measuring = True
        window_started = time.perf_counter()
        cpu_before, cpu_self = _cpu_seconds(pid), _cpu_seconds(os.getpid())
        await asyncio.sleep(args.seconds)
        window = time.perf_counter() - window_started
        cpu_server = (_cpu_seconds(pid) - cpu_before) / window
        cpu_clients = (_cpu_seconds(os.getpid()) - cpu_self) / window
        totals.measuring = False
        applied_after = _metric((await api.get("/metrics")).text, "dormant_activity_events_applied")
        rss_holding = _rss_kb(pid)
        held = sum(1 for c in clients if c.alive)
        stop.set()
        await sender
        counted = 0
        for sid, _ in tokens:
            counted += (await api.get(f"/v1/sessions/{sid}")).json()["connections"]

        lat = sorted(totals.latencies)

        def pct(p: float) -> float:
            return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")

        return {
            "clients": args.clients,
            "sessions": args.sessions,
            "heartbeat_interval_s": args.heartbeat,
            "ramp_seconds": round(ramp, 1),
            "connected": totals.connected,
            "refused": totals.refused,
            "failed": totals.failed,
            "held_at_end": held,
            "disconnects_in_window": totals.disconnected_in_window,
            "connections_in_rest_api": counted,
            "window_seconds": round(window, 1),
            "ack_every": args.ack_every,
            "sent_events_per_s": round(totals.sent / window),
            "acked_events_per_s": round(totals.acks / window),
            "acked_ok_share": round(totals.acks_ok / totals.acks, 4) if totals.acks else 0,
            "server_applied_events_per_s": round((applied_after - applied_before) / window),
            "latency_ms_p50": round(pct(0.50), 1),
            "latency_ms_p99": round(pct(0.99), 1),
            "latency_ms_max": round(lat[-1] * 1000, 1) if lat else None,
            "app_pings_per_s": round(totals.pings / (window + args.warmup), 1),
            "server_cpu_cores": round(cpu_server, 2),
            "server_cpu_ms_per_event": round(
                1000 * cpu_server / max(1.0, (applied_after - applied_before) / window), 3
            ),
            "clients_cpu_cores": round(cpu_clients, 2),
            "server_rss_mb_before": round(rss_before / 1024, 1),
            "server_rss_mb_holding": round(rss_holding / 1024, 1),
            "rss_kb_per_connection": round((rss_holding - rss_before) / max(1, held), 1),
        }
    finally:
        stop.set()
        for client in clients:
            await client.close()
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        await http.close()
        with contextlib.suppress(Exception):
            for sid, _ in tokens:
                await api.delete(f"/v1/sessions/{sid}")
        await api.aclose()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=5000)
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=30.0, help="measurement window")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--heartbeat", type=float, default=25.0)
    parser.add_argument("--concurrency", type=int, default=200, help="connects in flight")
    parser.add_argument(
        "--ack-every", type=int, default=1, help="ask an ack (and time it) for 1 in K events"
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="hard bound on the run")
    args = parser.parse_args()

    load_at_start = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="dormant-bench-gateway-") as tmp:
        serve = Serve(Path(tmp), args.sessions, args.heartbeat, args.clients)
        try:
            serve.start()
            result = asyncio.run(asyncio.wait_for(run(args, serve), args.timeout))
        finally:
            serve.stop()
            log = (Path(tmp) / "serve.log").read_text(errors="replace")
            kept = Path(tempfile.gettempdir()) / "dormant-bench-gateway-serve.log"
            kept.write_text(log)
    targets = {
        "held_at_end": (">=", 5000),
        "server_applied_events_per_s": (">=", 5000),
        "latency_ms_p99": ("<=", 50),
        "rss_kb_per_connection": ("<=", 50),
    }
    result["targets_met"] = {
        key: (result[key] >= bound if op == ">=" else result[key] <= bound)
        for key, (op, bound) in targets.items()
    }
    python = platform.python_version()
    result["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, Python {python}"
    result["date"] = time.strftime("%Y-%m-%d")
    result["load_average_at_start"] = load_at_start
    result["server_log_errors"] = sum('"level": "error"' in line for line in log.splitlines())
    print(json.dumps(result, indent=2))
    print(f"server log: {kept}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
