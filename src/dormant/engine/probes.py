"""Readiness and health probes: is a session's server really serving, not just listening?

A template says how (``ready = {http = "/healthz"}``, ``{tcp = true}`` — the default: the port
accepts a connection — or ``{exec = ["cmd", …]}``, run in the container). The same probe gates
``running`` after a start (an app that listens before it is ready is not ``running`` until it
answers) and is repeated every ``health_interval`` while it runs (see :mod:`.health`).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from enum import StrEnum

from dormant.errors import DormantError
from dormant.runtimes import Endpoint, Runtime

#: Bytes of a probe's output kept for the timeline.
OUTPUT_LIMIT = 300


class ProbeKind(StrEnum):
    TCP = "tcp"
    HTTP = "http"
    EXEC = "exec"


@dataclass(frozen=True, slots=True)
class Probe:
    kind: ProbeKind = ProbeKind.TCP
    #: ``http``: the path asked for; 2xx and 3xx pass.
    path: str = "/"
    #: ``exec``: the command run in the container; exit status 0 passes.
    command: tuple[str, ...] = ()
    timeout: float = 2.0


@dataclass(frozen=True, slots=True)
class ProbeResult:
    ok: bool
    #: What was seen (``HTTP 503``, ``connection refused``, the command's output): for the
    #: timeline when it fails.
    detail: str


async def run_probe(
    probe: Probe, endpoint: Endpoint | None, runtime: Runtime, name: str
) -> ProbeResult:
    try:
        return await asyncio.wait_for(_run(probe, endpoint, runtime, name), probe.timeout)
    except TimeoutError:
        return ProbeResult(False, f"{probe.kind.value} probe timed out after {probe.timeout:g}s")


async def _run(probe: Probe, endpoint: Endpoint | None, runtime: Runtime, name: str) -> ProbeResult:
    if probe.kind is ProbeKind.EXEC:
        try:
            code, output = await runtime.exec(name, list(probe.command), probe.timeout)
        except DormantError as exc:
            return ProbeResult(False, f"exec probe could not run: {exc}")
        tail = output[-OUTPUT_LIMIT:].strip()
        return ProbeResult(code == 0, f"exit status {code}" + (f": {tail}" if tail else ""))
    if endpoint is None:
        return ProbeResult(False, "the session has no endpoint")
    try:
        reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
    except OSError as exc:
        return ProbeResult(False, f"connection to {endpoint.host}:{endpoint.port} failed: {exc}")
    try:
        if probe.kind is ProbeKind.TCP:
            return ProbeResult(True, "accepts connections")
        writer.write(
            f"GET {probe.path} HTTP/1.1\r\nHost: {endpoint.host}:{endpoint.port}\r\n"
            "User-Agent: dormant-health\r\nConnection: close\r\n\r\n".encode()
        )
        await writer.drain()
        line = await reader.readline()
        parts = line.decode("latin-1").split(" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            return ProbeResult(False, f"GET {probe.path}: not an HTTP answer")
        status = int(parts[1])
        return ProbeResult(200 <= status < 400, f"GET {probe.path}: HTTP {status}")
    except OSError as exc:
        return ProbeResult(False, f"GET {probe.path}: {exc}")
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def wait_ready(
    probe: Probe,
    endpoint: Endpoint | None,
    runtime: Runtime,
    name: str,
    timeout: float,
    interval: float = 0.2,
) -> ProbeResult:
    """Probe until it passes or ``timeout`` runs out; the last result."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = await run_probe(probe, endpoint, runtime, name)
        if result.ok or loop.time() >= deadline:
            return result
        await asyncio.sleep(min(interval, max(0.0, deadline - loop.time())))
