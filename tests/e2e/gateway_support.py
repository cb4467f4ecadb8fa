"""Helpers for the gateway's end-to-end tests: recording Socket.IO clients (python-socketio),
async REST polling, and drivers for the Node socket.io-client and for Chromium.

Every process started here is started in its own process group and killed (group and all) by
``close()``, which the tests' fixtures call also when a test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import socketio

T = TypeVar("T")
JS_DIR = Path(__file__).parent / "js"
REPO = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
#: Fail-safe bound on every wait (never an assertion about speed).
WAIT = 30.0


async def eventually(
    check: Callable[[], Awaitable[T | None]], *, what: str, timeout: float = WAIT
) -> T:
    """Await ``check`` until it returns something truthy; fail with the last value otherwise."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = await check()
        if last:
            return last
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}; last={last!r}")
        await asyncio.sleep(0.05)


class Api:
    """Async REST calls against a test server (the admin key unless another is given)."""

    def __init__(self, url: str, key: str) -> None:
        self.http = httpx.AsyncClient(base_url=url, headers={"X-API-Key": key}, timeout=30.0)

    async def close(self) -> None:
        await self.http.aclose()

    async def create(self, user_id: str = "alice", **body: Any) -> dict[str, Any]:
        response = await self.http.post("/v1/sessions", json={"user_id": user_id, **body})
        assert response.status_code == 201, response.text
        session = dict(response.json())
        await self.wait_state(session["id"], "running")
        return session

    async def session(self, session_id: str) -> dict[str, Any] | None:
        response = await self.http.get(f"/v1/sessions/{session_id}")
        if response.status_code == 404:
            return None
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def token(self, session_id: str, **body: Any) -> str:
        response = await self.http.post(f"/v1/sessions/{session_id}/tokens", json=body)
        assert response.status_code == 201, response.text
        return str(response.json()["token"])

    async def wait_state(self, session_id: str, state: str) -> dict[str, Any]:
        async def reached() -> dict[str, Any] | None:
            current = await self.session(session_id)
            assert current is not None, f"session {session_id} vanished"
            assert current["state"] != "failed", current
            return current if current["state"] == state else None

        return await eventually(reached, what=f"{session_id} to be {state}")

    async def wait_session(
        self, session_id: str, check: Callable[[dict[str, Any]], bool], what: str
    ) -> dict[str, Any]:
        async def reached() -> dict[str, Any] | None:
            current = await self.session(session_id)
            return current if current is not None and check(current) else None

        return await eventually(reached, what=what)

    async def timeline(self, session_id: str) -> list[dict[str, Any]]:
        response = await self.http.get(f"/v1/sessions/{session_id}/events")
        assert response.status_code == 200, response.text
        return list(response.json()["items"])


class Probe:
    """A python-socketio client that records every event and answers pings (unless told not to)."""

    def __init__(self, url: str, *, pong: bool = True) -> None:
        self.url = url
        self.pong = pong
        self.events: list[tuple[str, Any]] = []
        self.refusal: dict[str, Any] | None = None
        self.disconnects: list[Any] = []
        self._new = asyncio.Event()
        self.sio = socketio.AsyncClient(reconnection=False)
        self.sio.on("*", self._any)
        self.sio.on("connect_error", self._connect_error)
        self.sio.on("disconnect", self._disconnect)

    async def _any(self, event: str, data: Any = None) -> None:
        self.events.append((event, data))
        self._new.set()
        if event == "ping" and self.pong:
            await self.sio.emit("pong", {"ts": data["ts"]})

    async def _connect_error(self, data: Any = None) -> None:
        self.refusal = data if isinstance(data, dict) else {"message": str(data)}
        self._new.set()

    async def _disconnect(self, reason: Any = None) -> None:
        self.disconnects.append(reason)
        self._new.set()

    @property
    def connected(self) -> bool:
        return bool(self.sio.connected)

    async def connect(self, token: str | None, *, url: str | None = None, **kw: Any) -> None:
        await self.sio.connect(
            url or self.url,
            auth={"token": token} if token is not None else None,
            wait_timeout=WAIT,
            **kw,
        )

    async def refused(self, token: str | None, *, url: str | None = None, **kw: Any) -> str:
        """Connect, expect a refusal, return its code."""
        with pytest.raises(socketio.exceptions.ConnectionError):
            await self.connect(token, url=url, **kw)
        assert self.refusal is not None, "refused without a connect_error"
        data = self.refusal.get("data") or {}
        assert isinstance(data, dict) and data.get("code"), self.refusal
        return str(data["code"])

    def seen(self, event: str, check: Callable[[Any], bool] = lambda _: True) -> list[Any]:
        return [data for name, data in self.events if name == event and check(data)]

    async def wait(
        self, event: str, check: Callable[[Any], bool] = lambda _: True, *, after: int = 0
    ) -> Any:
        """The first ``event`` (from index ``after`` on) for which ``check`` holds."""
        deadline = time.monotonic() + WAIT
        while True:
            for name, data in self.events[after:]:
                if name == event and check(data):
                    return data
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"no {event!r} event matching; got {self.events[after:]!r}")
            self._new.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._new.wait(), min(remaining, 0.5))

    async def wait_disconnected(self) -> Any:
        deadline = time.monotonic() + WAIT
        while not self.disconnects:
            if time.monotonic() > deadline:
                pytest.fail(f"never disconnected; events: {self.events!r}")
            self._new.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._new.wait(), 0.5)
        return self.disconnects[0]

    async def call(self, event: str, data: Any) -> Any:
        return await self.sio.call(event, data, timeout=WAIT)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.sio.disconnect()


class Probes:
    """Makes probes and closes them all (fixture helper)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.made: list[Probe] = []

    def __call__(self, *, pong: bool = True) -> Probe:
        probe = Probe(self.url, pong=pong)
        self.made.append(probe)
        return probe

    async def connect_when_free(self, token: str) -> Probe:
        """Connect, retrying while the server is full: a slot frees when a leaving client's
        Engine.IO socket closes, a moment after its Socket.IO connection ends."""

        async def attempt() -> Probe | None:
            probe = self()
            try:
                await probe.connect(token)
            except socketio.exceptions.ConnectionError:
                data = (probe.refusal or {}).get("data") or {}
                assert data.get("code") == "server_full", probe.refusal
                return None
            return probe

        return await eventually(attempt, what="a free slot on the server")

    async def close(self) -> None:
        for probe in self.made:
            await probe.close()


# --- child processes: Node's socket.io-client and Chromium ------------------------------------


def node_executable() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed (scripts/test.sh installs the JS tools)")
    if not (JS_DIR / "node_modules" / "socket.io-client").is_dir():
        pytest.fail("JS dependencies missing: run `npm ci --prefix tests/e2e/js`")
    return node


class LineProcess:
    """A child that takes JSON lines on stdin and writes JSON lines on stdout."""

    def __init__(self, args: list[str], *, cwd: Path, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            args,
            cwd=cwd,
            env={**os.environ, **(env or {})},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        self.stderr: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, daemon=True),
            threading.Thread(target=self._read_err, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                self.lines.put(json.loads(raw))
            except ValueError:
                self.lines.put({"type": "raw", "text": raw.decode(errors="replace")})

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self.stderr.append(raw.decode(errors="replace"))

    def send(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        self.proc.stdin.flush()

    async def wait(self, check: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        """The first line (also among those already seen) for which ``check`` holds."""
        for line in self.seen:
            if check(line):
                return line
        deadline = time.monotonic() + WAIT
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    pytest.fail(
                        f"{what}: the driver exited with {self.proc.returncode}; "
                        f"stderr: {''.join(self.stderr)[-3000:]}"
                    )
                if time.monotonic() > deadline:
                    pytest.fail(f"timed out waiting for {what}; seen: {self.seen[-30:]!r}")
                await asyncio.sleep(0.05)
                continue
            self.seen.append(line)
            if check(line):
                return line

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        for reader in self._readers:
            reader.join(5)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            with contextlib.suppress(OSError, ValueError):
                if pipe is not None:
                    pipe.close()


class NodeClient(LineProcess):
    """The official socket.io-client from npm, in Node."""

    def __init__(self, url: str) -> None:
        super().__init__([node_executable(), str(JS_DIR / "client.mjs"), url], cwd=JS_DIR)
        self._acks = 0

    async def ready(self) -> NodeClient:
        await self.wait(lambda m: m.get("type") == "ready", "the node client to start")
        return self

    async def event(self, event: str, check: Callable[[Any], bool] = lambda _: True) -> Any:
        line = await self.wait(
            lambda m: m.get("type") == "event" and m["event"] == event and check(m["data"]),
            f"node client to get {event!r}",
        )
        return line["data"]

    async def call(self, event: str, data: Any) -> Any:
        self._acks += 1
        ack = self._acks
        self.send(cmd="emit", event=event, data=data, ack=ack)
        line = await self.wait(
            lambda m: m.get("type") == "ack" and m["ack"] == ack, f"ack {ack} for {event}"
        )
        return line["answer"]


class Browser(LineProcess):
    """Debian's Chromium, driven by playwright-core."""

    def __init__(self, user_data_dir: Path) -> None:
        if not Path(CHROMIUM).exists():
            pytest.fail(f"{CHROMIUM} is missing (scripts/test.sh installs Debian's chromium)")
        if not (JS_DIR / "node_modules" / "playwright-core").is_dir():
            pytest.fail("JS dependencies missing: run `npm ci --prefix tests/e2e/js`")
        super().__init__(
            [node_executable(), str(JS_DIR / "browser.mjs"), str(user_data_dir)],
            cwd=JS_DIR,
            env={"CHROMIUM": CHROMIUM},
        )
        self._ids = 0

    async def ready(self) -> Browser:
        await self.wait(lambda m: m.get("type") == "ready", "Chromium to start")
        return self

    async def do(self, cmd: str, **args: Any) -> Any:
        self._ids += 1
        ident = self._ids
        self.send(cmd=cmd, id=ident, **args)
        answer = await self.wait(lambda m: m.get("id") == ident, f"browser {cmd} {args}")
        if not answer["ok"]:
            console = [m for m in self.seen if m.get("type") in ("console", "pageerror")]
            pytest.fail(f"browser {cmd} {args} failed: {answer['error']}\nconsole: {console}")
        return answer.get("value")

    def page_errors(self) -> list[dict[str, Any]]:
        return [m for m in self.seen if m.get("type") == "pageerror"]
