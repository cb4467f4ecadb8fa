"""Swarm services against plain containers: wake latency and create throughput, side by side.

    eval "$(bash scripts/docker-up.sh)"
    .venv/bin/python benchmarks/bench_swarm.py [--sessions 20] [--concurrency 4] [--samples 15]

Both runtimes on the same Docker Engine (the project's single-node Swarm) and the same image,
through dormant's own runtimes (so both pay the same validation, labels and readiness probe):

- ``docker``: :class:`DockerRuntime`, a session is a container (start/stop);
- ``swarm``: :class:`SwarmRuntime`, a session is a service scaled 1/0.

Create throughput: ``--sessions`` sessions made and started until each serves HTTP,
``--concurrency`` at a time (sessions per second). Wake latency: a sleeping session (stopped
container, service at 0 replicas) asked to start until an HTTP GET answers, ``--samples``
times, one at a time (p50/p95/max). Sleep latency is printed too. Every container and service
it makes carries ``bench=<run>`` and is removed at the end, also on failure.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import statistics
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from dormant.runtimes import ContainerSpec, Runtime
from dormant.runtimes.docker import DockerRuntime
from dormant.runtimes.swarm import SwarmRuntime

IMAGE = "localhost/dormant-httpd:2"
PORT = 8080
RUN = f"bench-{uuid.uuid4().hex[:8]}"
SCOPE = {"bench": RUN}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spec(kind: str, index: int) -> ContainerSpec:
    session = f"{kind[0]}{uuid.uuid4().hex[:12]}"
    return ContainerSpec(
        name=f"dormant-bench-{session}",
        session_id=session,
        labels={"dormant.managed": "true", "dormant.session": session, "dormant.user": f"u{index}"},
        port=free_port(),
        image=IMAGE,
        container_port=PORT,
        start_timeout=120,
        stop_timeout=1,
    )


def serves(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
            return bool(response.status == 200)
    except OSError:
        return False


async def until_serving(port: int) -> None:
    for _ in range(1000):
        if await asyncio.to_thread(serves, port):
            return
        await asyncio.sleep(0.01)
    raise RuntimeError(f"nothing serves on {port}")


async def bounded(n: int, limit: int, fn: Callable[[int], Awaitable[None]]) -> float:
    """``fn(i)`` for i < n, ``limit`` at a time; operations per second."""
    slots = asyncio.Semaphore(limit)

    async def one(i: int) -> None:
        async with slots:
            await fn(i)

    began = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return n / (time.perf_counter() - began)


class Bench:
    def __init__(self, kind: str, runtime: Runtime) -> None:
        self.kind = kind
        self.runtime = runtime
        self.made: dict[str, dict[str, Any]] = {}
        self.specs: dict[str, ContainerSpec] = {}

    async def create_serving(self, index: int) -> None:
        s = spec(self.kind, index)
        self.specs[s.name] = s
        self.made[s.name] = {}
        state = await self.runtime.create(s)
        self.made[s.name] = state = await self.runtime.start(s.name, {**state, "port": s.port})
        assert s.port is not None
        await until_serving(s.port)

    async def wake_latencies(self, samples: int) -> tuple[list[float], list[float]]:
        """Sleep then wake the first session ``samples`` times: (sleep, wake) seconds."""
        name = next(iter(self.specs))
        s = self.specs[name]
        assert s.port is not None
        sleeps, wakes = [], []
        state = self.made[name]
        for _ in range(samples):
            began = time.perf_counter()
            state = await self.runtime.stop(name, state)
            sleeps.append(time.perf_counter() - began)
            began = time.perf_counter()
            state = await self.runtime.start(name, {**state, "port": s.port})
            await until_serving(s.port)
            wakes.append(time.perf_counter() - began)
        self.made[name] = state
        return sleeps, wakes

    async def clean(self) -> None:
        for name, state in self.made.items():
            try:
                await self.runtime.remove(name, state)
            except Exception as exc:  # keep removing the rest
                print(f"!! could not remove {name}: {exc}")
        left = [i.name for i in await self.runtime.list_managed()]
        await self.runtime.close()
        assert not left, f"{self.kind} left {left}"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def ms(values: list[float]) -> str:
    return (
        f"{statistics.median(values) * 1000:.0f} / {pct(values, 0.95) * 1000:.0f} / "
        f"{max(values) * 1000:.0f}"
    )


def machine() -> str:
    with open("/proc/cpuinfo") as info:
        lines = [line.split(":", 1)[1].strip() for line in info if "model name" in line]
    cpu = lines[0] if lines else platform.processor()
    engine = subprocess.run(
        ["docker", "-H", HOST, "version", "--format", "{{.Server.Version}}"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, Docker {engine}"


HOST = os.environ.get("DORMANT_DOCKER_ENGINE_HOST", "unix:///run/dormant/docker.sock")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--samples", type=int, default=15)
    args = parser.parse_args()
    benches = [
        Bench("docker", DockerRuntime(HOST, scope=SCOPE)),
        Bench("swarm", SwarmRuntime(HOST, scope=SCOPE)),
    ]
    rows = []
    try:
        for bench in benches:
            rate = await bounded(args.sessions, args.concurrency, bench.create_serving)
            sleeps, wakes = await bench.wake_latencies(args.samples)
            rows.append((bench.kind, rate, sleeps, wakes))
            print(f"{bench.kind}: done", flush=True)
    finally:
        for bench in benches:
            await bench.clean()
    print(f"\n{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {machine()}")
    print(
        f"{args.sessions} sessions created and started until serving, {args.concurrency} at a "
        f"time; {args.samples} sleep/wake cycles of one session, one at a time\n"
    )
    print(
        "| runtime | create -> serving (sessions/s) | wake -> serving p50 / p95 / max (ms) "
        "| sleep p50 / p95 / max (ms) |"
    )
    print("| --- | --- | --- | --- |")
    base = rows[0][1]
    for kind, rate, sleeps, wakes in rows:
        print(f"| {kind} | {rate:.2f} ({rate / base:.0%}) | {ms(wakes)} | {ms(sleeps)} |")


if __name__ == "__main__":
    asyncio.run(main())
