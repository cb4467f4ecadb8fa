"""Hostile HTTP clients against ``dormant serve``: slow headers, slow bodies, silent and excess
connections, a low open-file limit, key guessing. Each is bounded, and the API keeps answering."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

import tests.e2e.conftest as e2e

if TYPE_CHECKING:
    from tests.e2e.conftest import Server

pytestmark = pytest.mark.e2e

HEADER_TIMEOUT = 2.0
BODY_TIMEOUT = 3.0
FAST = {
    "DORMANT_HTTP_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
    "DORMANT_HTTP_BODY_TIMEOUT": str(BODY_TIMEOUT),
}


def connect(server: Server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def drip(sock: socket.socket, data: bytes, every: float, limit: float) -> tuple[float, bytes]:
    """Send ``data`` one byte every ``every`` seconds until the server answers or closes (or
    ``limit`` passes); returns the seconds it took and what the server sent."""
    start = time.monotonic()
    received = b""
    sock.settimeout(every)
    for byte in data:
        if time.monotonic() - start > limit:
            break
        try:
            sock.sendall(bytes([byte]))
        except OSError:  # closed by the server
            break
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            break
        received += chunk
        if not chunk or b"\r\n\r\n" in received:
            break
    sock.settimeout(5)
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            received += chunk
    return time.monotonic() - start, received


def parse(raw: bytes) -> tuple[int, dict[str, str], dict[str, object]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, json.loads(body)


def test_slow_headers_are_answered_408_and_closed(server_factory: Callable[..., Server]) -> None:
    server = server_factory(**FAST)
    with connect(server) as sock:
        request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 200
        took, raw = drip(sock, request, every=0.25, limit=10)
    # counted from the first byte, not reset by each one
    assert HEADER_TIMEOUT - 0.3 <= took <= HEADER_TIMEOUT + 2, took
    status, headers, body = parse(raw)
    assert status == 408
    assert headers["connection"] == "close"
    assert body == {
        "error": {
            "code": "request_timeout",
            "message": f"request headers not received within {HEADER_TIMEOUT:g}s",
        }
    }


def test_a_silent_connection_is_closed(server_factory: Callable[..., Server]) -> None:
    server = server_factory(**FAST)
    with connect(server) as sock:
        start = time.monotonic()
        assert sock.recv(1024) == b""  # closed, without an answer to no question
        took = time.monotonic() - start
    assert HEADER_TIMEOUT - 0.3 <= took <= HEADER_TIMEOUT + 2, took


def test_slow_body_is_answered_408_and_changes_nothing(
    server_factory: Callable[..., Server],
) -> None:
    server = server_factory(**FAST)
    body = json.dumps({"user_id": "slowpoke", "labels": {"x": "y" * 100}}).encode()
    head = (
        f"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nX-API-Key: {server.key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with connect(server) as sock:
        sock.sendall(head)
        took, raw = drip(sock, body, every=0.25, limit=10)
    assert BODY_TIMEOUT - 0.3 <= took <= BODY_TIMEOUT + 2, took
    status, _, answer = parse(raw)
    assert status == 408
    assert answer == {
        "error": {
            "code": "request_timeout",
            "message": f"request body not received within {BODY_TIMEOUT:g}s",
        }
    }
    assert server.all_sessions() == []
    assert '"level": "error"' not in server.logs()


def test_healthy_keep_alive_clients_are_not_cut(server_factory: Callable[..., Server]) -> None:
    server = server_factory(**FAST)
    with httpx.Client(base_url=server.url, headers={"X-API-Key": server.key}) as client:
        for _ in range(3):
            assert client.get("/healthz").status_code == 200
            time.sleep(0.5)  # under uvicorn's keep-alive timeout: the same connection
        created = client.post("/v1/sessions", json={"user_id": "steady"})
        assert created.status_code == 201, created.text
        sessions = client.get("/v1/sessions").json()["items"]
        assert [s["user_id"] for s in sessions] == ["steady"]


def test_connection_cap_answers_503_then_makes_room(
    server_factory: Callable[..., Server],
) -> None:
    server = server_factory(DORMANT_HTTP_MAX_CONNECTIONS="20", **FAST)
    assert "http limits: 20 connections" in server.logs()
    with contextlib.ExitStack() as stack:
        idle = [stack.enter_context(connect(server)) for _ in range(20)]
        time.sleep(0.2)
        refused = httpx.get(f"{server.url}/healthz", timeout=5)
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "5"
        assert refused.json() == {
            "error": {
                "code": "capacity_exhausted",
                "message": "the server is at its connection limit; try again shortly",
            }
        }
        time.sleep(1.2)  # the idle ones have waited long enough to give up their place
        assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200
        idle[0].settimeout(5)
        assert idle[0].recv(1024) == b""  # the oldest was closed to make room
    assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200


async def test_an_upgraded_websocket_outlives_the_header_timeout(
    server_factory: Callable[..., Server],
) -> None:
    import aiohttp

    server = server_factory(**FAST)
    sid = server.create("ws")["id"]
    server.wait_state(sid, "running")
    token = server.client().post(f"/v1/sessions/{sid}/tokens", json={"ttl": 60})
    assert token.status_code == 201, token.text
    url = server.url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket"
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        assert (await ws.receive_str(timeout=10)).startswith("0{")
        await asyncio.sleep(HEADER_TIMEOUT + BODY_TIMEOUT)  # past both timers
        await ws.send_str("40" + json.dumps({"token": token.json()["token"]}))
        while True:
            frame = await ws.receive_str(timeout=10)
            if frame == "2":
                await ws.send_str("3")
            else:
                break
        assert frame.startswith("40{"), frame
        assert not ws.closed


def _low_limits_wrapper(tmp_path: Path, soft: int, hard: int) -> Path:
    """An executable that runs ``dormant`` with RLIMIT_NOFILE lowered to (soft, hard)."""
    wrapper = tmp_path / "dormant-low-nofile"
    wrapper.write_text(
        f"#!{sys.executable}\n"
        "import os, resource, sys\n"
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {hard}))\n"
        f"os.execv({e2e.dormant_executable()!r}, [{e2e.dormant_executable()!r}, *sys.argv[1:]])\n"
    )
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    return wrapper


def _nofile(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open-file limit in /proc/PID/limits")


@pytest.fixture
def low_nofile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[int, int], None]:
    def lower(soft: int, hard: int) -> None:
        wrapper = _low_limits_wrapper(tmp_path, soft, hard)
        monkeypatch.setattr(e2e, "dormant_executable", lambda: str(wrapper))

    return lower


def test_serve_raises_the_open_file_limit(
    server_factory: Callable[..., Server], low_nofile: Callable[[int, int], None]
) -> None:
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    low_nofile(256, hard)
    server = server_factory()
    assert server.proc is not None
    assert _nofile(server.proc.pid) == (hard, hard)
    assert f"{hard} open files" in server.logs()


class SlowClients:
    """``count`` connections that each send a request line, then a header byte every second."""

    def __init__(self, server: Server, count: int) -> None:
        self.socks = [connect(server) for _ in range(count)]
        for sock in self.socks:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            sock.setblocking(False)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._drip, daemon=True)
        self.thread.start()

    def _drip(self) -> None:
        while not self.stop.wait(1.0):
            for sock in self.socks:
                with contextlib.suppress(OSError):
                    sock.send(b"a")

    def closed_by_server(self) -> int:
        closed = 0
        for sock in self.socks:
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                closed += 1
                continue
            closed += not data or data.startswith(b"HTTP/1.1 408")
        return closed

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        for sock in self.socks:
            sock.close()


@pytest.fixture
def slow_clients() -> Iterator[Callable[[Server, int], SlowClients]]:
    made: list[SlowClients] = []

    def make(server: Server, count: int) -> SlowClients:
        made.append(SlowClients(server, count))
        return made[-1]

    yield make
    for clients in made:
        clients.close()


def test_300_slow_connections_under_256_open_files(
    server_factory: Callable[..., Server],
    low_nofile: Callable[[int, int], None],
    slow_clients: Callable[[Server, int], SlowClients],
) -> None:
    """The incident: nofile 256, 300 slow connections. The API keeps answering, the accept
    errors are logged at most once a second, and every slow connection is closed."""
    low_nofile(256, 256)
    server = server_factory(DORMANT_HTTP_HEADER_TIMEOUT="5")
    assert server.proc is not None
    assert _nofile(server.proc.pid) == (256, 256)
    logs = server.logs()
    assert "the open-file limit is low (256, hard limit 256): serving at most 192" in logs
    start = time.monotonic()
    clients = slow_clients(server, 300)
    answers: list[tuple[float, int | str, float]] = []
    while time.monotonic() - start < 12:
        asked = time.monotonic()
        try:
            status: int | str = httpx.get(f"{server.url}/healthz", timeout=10).status_code
        except httpx.HTTPError as exc:
            status = type(exc).__name__
        answers.append((round(asked - start, 1), status, round(time.monotonic() - asked, 2)))
        time.sleep(0.5)
    seconds = time.monotonic() - start
    assert all(status == 200 for _, status, _ in answers), answers
    assert max(took for _, _, took in answers) < 4, answers
    assert sum(took < 0.5 for _, _, took in answers) >= len(answers) - 2, answers
    server.wait_until(
        lambda: clients.closed_by_server() == 300 or None,
        timeout=10,
        what="every slow connection to be closed by the server",
    )
    accept_errors = [
        line for line in server.logs().splitlines() if "socket.accept() out of system" in line
    ]
    assert len(accept_errors) <= seconds + 2, len(accept_errors)
    assert len(server.logs().splitlines()) < 200
    assert server.client().get("/v1/sessions").status_code == 200


def test_guessing_keys_is_rate_limited_per_address(server_factory: Callable[..., Server]) -> None:
    server = server_factory()
    admin = server.client()
    assert admin.get("/v1/sessions").status_code == 200
    key_id = server.key.split("_")[1]
    statuses = []
    for i in range(25):
        guess = server.client(f"dk_{key_id}_guess{i}")
        statuses.append(guess.get("/v1/sessions").status_code)
    assert statuses == [401] * 20 + [429] * 5
    refused = server.client("dk_000000000000_x").get("/v1/stats")
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limited"
    assert 55 <= int(refused.headers["retry-after"]) <= 60
    # the admin key had authenticated from this address before: it still works
    assert admin.get("/v1/sessions").status_code == 200
    new_key = server.cli("keys", "create", "--tenant", "later").stdout.strip()
    assert server.client(new_key).get("/v1/sessions").status_code == 429
    assert re.search(r"too many failed API key attempts from 127\.0\.0\.1", refused.text)


def test_environment_limits_are_checked(server_factory: Callable[..., Server]) -> None:
    server = server_factory(start=False, DORMANT_HTTP_MAX_CONNECTIONS="0")
    result = server.cli("serve", check=False)
    assert result.returncode == 1
    assert "http_max_connections" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not os.path.exists(server.home / "dormant.db")
