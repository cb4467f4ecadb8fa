"""Docker runtime throughput and wake latency: dormant vs. the engine API itself (the limit).

    bash scripts/podman-up.sh
    .venv/bin/python benchmarks/bench_runtime.py [--sessions 40] [--concurrency 8] [--samples 30]

Three ways of doing the same work, ``--concurrency`` at a time:

- ``engine``: raw Engine API calls on the socket (aiohttp), what any manager must at least do:
  create + start + wait until the port serves; stop; remove (+ check it is gone);
- ``runtime``: dormant's ``DockerRuntime`` (validation, labels, readiness, error translation);
- ``dormant``: the whole engine: session rows, intent rows, transitions and timeline, then the
  runtime (``create_session`` until running, ``sleep`` until asleep, ``delete`` until deleted).

Wake latency: from asking to serving HTTP, for a stopped container: the engine's own start plus
polling the port, against ``Engine.wake`` of a sleeping session plus polling. Prints a Markdown
table for BENCHMARKS.md. Every container it makes is labelled and removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from dormant.clock import SystemClock
from dormant.engine import Catalog, Engine, EngineSettings, PortAllocator, Template
from dormant.policy import PRESETS, State
from dormant.runtimes import ContainerSpec
from dormant.runtimes.docker import DockerRuntime
from dormant.store import SqlStore
from dormant.store.migrate import upgrade_async

IMAGE = "localhost/dormant-httpd:2"
PORT = 8080
RUN = f"bench-{uuid.uuid4().hex[:8]}"
PORTS = range(31000, 31400)  # below the ephemeral range (32768-)


@dataclass
class Rate:
    what: str
    engine: float
    runtime: float
    dormant: float

    def row(self) -> str:
        return (
            f"| {self.what} | {self.engine:.1f} | {self.runtime:.1f} "
            f"({self.runtime / self.engine:.0%}) | {self.dormant:.1f} "
            f"({self.dormant / self.engine:.0%}) |"
        )


async def bounded(n: int, limit: int, fn: Callable[[int], Awaitable[None]]) -> float:
    """Run ``fn(i)`` for i < n, ``limit`` at a time; returns operations per second."""
    slots = asyncio.Semaphore(limit)

    async def one(i: int) -> None:
        async with slots:
            await fn(i)

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return n / (time.perf_counter() - start)


async def serves(port: int, timeout: float = 30.0) -> None:
    deadline = time.perf_counter() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.perf_counter() > deadline:
                raise TimeoutError(f"port {port} never answered") from None
            await asyncio.sleep(0.005)
            continue
        writer.close()
        await writer.wait_closed()
        return


class RawEngine:
    """The Engine API over its unix socket, nothing else."""

    def __init__(self, host: str) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(host.removeprefix("unix://")),
            base_url="http://engine",
        )

    async def call(self, method: str, path: str, body: Any = None, **params: str) -> Any:
        async with self.session.request(
            method, f"/v1.41{path}", json=body, params=params or None
        ) as response:
            data = await response.read()
            if response.status >= 400:
                raise RuntimeError(f"{method} {path}: {response.status} {data[:200]!r}")
            return json.loads(data) if data else None

    async def create_and_start(self, name: str, port: int) -> None:
        body = {
            "Image": IMAGE,
            "Labels": {"dormant.managed": "true", "bench": RUN},
            "ExposedPorts": {f"{PORT}/tcp": {}},
            "HostConfig": {
                "PortBindings": {f"{PORT}/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]}
            },
        }
        await self.call("POST", "/containers/create", body, name=name)
        await self.call("POST", f"/containers/{name}/start")
        await serves(port)

    async def stop(self, name: str) -> None:
        await self.call("POST", f"/containers/{name}/stop", t="1")

    async def start(self, name: str, port: int) -> None:
        await self.call("POST", f"/containers/{name}/start")
        await serves(port)

    async def remove(self, name: str) -> None:
        await self.call("DELETE", f"/containers/{name}", force="true", v="true")
        try:
            await self.call("GET", f"/containers/{name}/json")
        except RuntimeError:
            return
        raise RuntimeError(f"{name} still exists")

    async def close(self) -> None:
        await self.session.close()


async def raw_round(raw: RawEngine, tag: str, n: int, limit: int) -> list[float]:
    """The engine API alone: creates+starts, stops, removes per second."""
    names = [f"bench-raw-{RUN}-{tag}-{i}" for i in range(n)]
    return [
        await bounded(n, limit, lambda i: raw.create_and_start(names[i], PORTS[i])),
        await bounded(n, limit, lambda i: raw.stop(names[i])),
        await bounded(n, limit, lambda i: raw.remove(names[i])),
    ]


async def runtime_round(runtime: DockerRuntime, tag: str, n: int, limit: int) -> list[float]:
    """dormant's DockerRuntime: the same work."""
    specs = [spec(f"bench-rt-{RUN}-{tag}-{i}", PORTS[i]) for i in range(n)]
    states: dict[int, dict[str, Any]] = {}

    async def create(i: int) -> None:
        states[i] = await runtime.start(specs[i].name, await runtime.create(specs[i]))

    return [
        await bounded(n, limit, create),
        await bounded(n, limit, lambda i: runtime.stop(specs[i].name, states[i])),
        await bounded(n, limit, lambda i: runtime.remove(specs[i].name, states[i])),
    ]


def spec(name: str, port: int) -> ContainerSpec:
    labels = {"dormant.managed": "true", "dormant.session": name, "bench": RUN}
    return ContainerSpec(name, name, labels, port, image=IMAGE, container_port=PORT, stop_timeout=1)


async def make_engine(host: str, directory: Path, concurrency: int) -> tuple[Engine, SqlStore]:
    url = f"sqlite+aiosqlite:///{directory / 'bench.db'}"
    await upgrade_async(url)
    store = SqlStore(url)
    template = Template(
        name="box", runtime="docker", image=IMAGE, port=PORT, start_timeout=30, stop_timeout=1
    )
    engine = Engine(
        store,
        {"docker": DockerRuntime(host, scope={"bench": RUN})},
        Catalog({"box": template}, dict(PRESETS), default_template="box"),
        SystemClock(),
        PortAllocator(PORTS, store.used_ports),
        EngineSettings(instance_id=RUN, runtime_concurrency=concurrency),
    )
    await engine.heartbeat()
    return engine, store


async def expect(store: SqlStore, ids: list[str], state: State) -> None:
    for sid in ids:
        record = await store.get_session(sid)
        assert record is not None and record.state is state, (sid, record and record.error)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def main(args: argparse.Namespace) -> str:
    host = args.host
    n, limit = args.sessions, args.concurrency
    raw = RawEngine(host)
    runtime = DockerRuntime(host, scope={"bench": RUN})
    tmp = Path(tempfile.mkdtemp(prefix="dormant-bench-"))
    engine, store = await make_engine(host, tmp, limit)
    try:
        cells: dict[str, list[float]] = {}

        def note(key: str, value: float) -> None:
            cells.setdefault(key, []).append(value)

        for r in range(args.rounds):  # interleaved rounds: the machine's noise hits all three
            for key, rate in zip(
                ("raw create", "raw stop", "raw remove"),
                await raw_round(raw, f"{r}", n, limit),
                strict=True,
            ):
                note(key, rate)
            for key, rate in zip(
                ("rt create", "rt stop", "rt remove"),
                await runtime_round(runtime, f"{r}", n, limit),
                strict=True,
            ):
                note(key, rate)

            # 3. the whole of dormant (the engine bounds concurrency: runtime_concurrency)
            t0 = time.perf_counter()
            records = [
                await engine.create_session(tenant="b", user_id=f"u{i}", labels={"bench": RUN})
                for i in range(n)
            ]
            await engine.drain()
            note("dormant create", n / (time.perf_counter() - t0))
            ids = [rec.id for rec in records]
            await expect(store, ids, State.RUNNING)
            t0 = time.perf_counter()
            for sid in ids:
                await engine.sleep(sid)
            await engine.drain()
            note("dormant stop", n / (time.perf_counter() - t0))
            await expect(store, ids, State.SLEEPING)
            if r < args.rounds - 1:
                t0 = time.perf_counter()
                for sid in ids:
                    await engine.delete(sid)
                await engine.drain()
                note("dormant remove", n / (time.perf_counter() - t0))
                await expect(store, ids, State.DELETED)

        # 4. wake latency, samples interleaved: engine start + serving vs dormant wake + serving
        samples = min(args.samples, n)
        raw_names = [f"bench-wake-{RUN}-{i}" for i in range(samples)]
        wake_ports = [PORTS[n + i] for i in range(samples)]
        for name, port in zip(raw_names, wake_ports, strict=True):
            await raw.create_and_start(name, port)
            await raw.stop(name)
        raw_wake: list[float] = []
        dormant_serving: list[float] = []
        dormant_wake: list[float] = []
        for k in range(samples):
            t0 = time.perf_counter()
            await raw.start(raw_names[k], wake_ports[k])
            raw_wake.append(time.perf_counter() - t0)
            record = records[k]
            assert record.port is not None
            t0 = time.perf_counter()
            await engine.wake(record.id)
            await serves(record.port)
            dormant_serving.append(time.perf_counter() - t0)
            await engine.drain()  # and the state is written (running)
            dormant_wake.append(time.perf_counter() - t0)
        await expect(store, ids[:samples], State.RUNNING)
        await bounded(samples, limit, lambda i: raw.remove(raw_names[i]))
        for sid in ids[:samples]:  # removals compare stopped containers, as above
            await engine.sleep(sid)
        await engine.drain()
        await expect(store, ids, State.SLEEPING)

        t0 = time.perf_counter()
        for sid in ids:
            await engine.delete(sid)
        await engine.drain()
        note("dormant remove", n / (time.perf_counter() - t0))
        await expect(store, ids, State.DELETED)
    finally:
        await engine.drain()
        left = subprocess.run(
            ["podman", "ps", "-aq", "--filter", f"label=bench={RUN}"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        if left:
            subprocess.run(["podman", "rm", "-f", "-v", "-t", "0", *left], check=False)
        await runtime.close()
        for rt in engine.runtimes.values():
            await rt.close()
        await store.close()
        await raw.close()
        shutil.rmtree(tmp, ignore_errors=True)

    med = {key: statistics.median(values) for key, values in cells.items()}
    rates = [
        Rate(
            "create + start until serving, /s",
            med["raw create"],
            med["rt create"],
            med["dormant create"],
        ),
        Rate("stop, /s", med["raw stop"], med["rt stop"], med["dormant stop"]),
        Rate("remove (verified), /s", med["raw remove"], med["rt remove"], med["dormant remove"]),
    ]
    ms = 1000.0
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Linux {platform.release()}, "
        f"Python {platform.python_version()}; engine: {engine_version(host)}; "
        f"{datetime.now(UTC):%Y-%m-%d}; {n} containers, {limit} at a time; "
        f"median of {args.rounds} interleaved rounds.",
        "",
        "| operation | engine API alone | dormant runtime (vs engine) | dormant engine, "
        "store and runtime (vs engine) |",
        "|---|---|---|---|",
        *(r.row() for r in rates),
        "",
        f"Wake latency, stopped -> serving HTTP, {samples} sequential samples:",
        "",
        "| | p50 ms | p99 ms |",
        "|---|---|---|",
        f"| engine start + port answers | {statistics.median(raw_wake) * ms:.0f} | "
        f"{percentile(raw_wake, 0.99) * ms:.0f} |",
        f"| dormant wake until the port answers | {statistics.median(dormant_serving) * ms:.0f} "
        f"| {percentile(dormant_serving, 0.99) * ms:.0f} |",
        f"| dormant wake until the port answers and the state is written | "
        f"{statistics.median(dormant_wake) * ms:.0f} | "
        f"{percentile(dormant_wake, 0.99) * ms:.0f} |",
        f"| overhead until serving | "
        f"{(statistics.median(dormant_serving) - statistics.median(raw_wake)) * ms:+.0f} | "
        f"{(percentile(dormant_serving, 0.99) - percentile(raw_wake, 0.99)) * ms:+.0f} |",
        f"| overhead until written | "
        f"{(statistics.median(dormant_wake) - statistics.median(raw_wake)) * ms:+.0f} | "
        f"{(percentile(dormant_wake, 0.99) - percentile(raw_wake, 0.99)) * ms:+.0f} |",
    ]
    return "\n".join(lines)


def engine_version(host: str) -> str:
    out = subprocess.run(
        ["podman", "--url", host, "version", "--format", "{{.Server.Version}}"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return f"Podman {out} (Docker API 1.41, runc)" if out else "unknown"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--host",
        default=os.environ.get("DORMANT_DOCKER_HOST", "unix:///run/dormant/podman.sock"),
    )
    parser.add_argument("--sessions", type=int, default=40)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    report = asyncio.run(main(parser.parse_args()))
    print(report)
    sys.exit(0)
