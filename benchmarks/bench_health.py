"""What health checks cost: 1,000 running sessions probed at the default interval (120 s).

    .venv/bin/python benchmarks/bench_health.py [--sessions 1000] [--interval 120] [--probe http]

One process holds dormant's engine (SQLite store, the fake runtime: no containers) with
``--sessions`` running sessions of a template with ``ready = {http = "/healthz"}``; another
process answers ``/healthz`` on every session's port (one listening socket per port, so each
probe is a real TCP connection and HTTP request). The health monitor runs for one full
interval; the figure is the CPU time the dormant process spent in that interval beyond what
the same process spends idle over the same time (measured first), as a share of one core.
Target (issue 11): at most 5 % of one core at the default interval.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from dormant.engine import Engine, EngineSettings, PortAllocator, default_catalog
from dormant.engine import ports as ports_module
from dormant.engine.health import HealthMonitor
from dormant.engine.probes import Probe, ProbeKind
from dormant.policy import State
from dormant.store import SqlStore
from dormant.store.migrate import upgrade_async
from dormant.testing import FakeClock, FakeRuntime

SERVER = r"""
import asyncio, sys
low, n = int(sys.argv[1]), int(sys.argv[2])
async def answer(reader, writer):
    try:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n")
        await writer.drain()
    except Exception:
        pass
    writer.close()
async def main():
    servers = [await asyncio.start_server(answer, "127.0.0.1", p) for p in range(low, low + n)]
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run(sessions: int, interval: float, kind: ProbeKind) -> None:
    low = 41000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * sessions + 512)), hard))
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(low), str(sessions)],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: resource.setrlimit(
            resource.RLIMIT_NOFILE, (min(hard, 4 * sessions + 512), hard)
        ),
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite+aiosqlite:///{Path(tmp) / 'dormant.db'}"
            await upgrade_async(url)
            store = SqlStore(url)
            catalog = default_catalog()
            probe = Probe(kind, path="/healthz", timeout=2.0)
            default = replace(catalog.templates["default"], ready=probe, health_interval=interval)
            catalog.templates["default"] = default
            runtime = FakeRuntime()
            # The ports are the answering process's (listening): hand them out all the same.
            ports_module._bindable = lambda port: True
            engine = Engine(
                store,
                {"process": runtime},
                catalog,
                FakeClock(),
                PortAllocator(range(low, low + sessions), store.used_ports),
                EngineSettings(instance_id="bench"),
            )
            await engine.ensure_deployment()
            await engine.heartbeat()
            made = [
                await engine.create_session(tenant="t", user_id=f"u{i}") for i in range(sessions)
            ]
            await engine.drain()
            running = [r for r in [await store.get_session(m.id) for m in made] if r is not None]
            assert all(r.state is State.RUNNING for r in running), "sessions did not start"
            print(f"{len(running)} running sessions, probe {kind.value}, interval {interval:g} s")

            window = interval
            began, idle_cpu = time.monotonic(), cpu()
            await asyncio.sleep(window)  # the same process, idle: the baseline
            idle = cpu() - idle_cpu
            monitor = HealthMonitor(engine)
            start_cpu = cpu()
            monitor.start()
            await asyncio.sleep(window)
            busy = cpu() - start_cpu
            await monitor.stop()
            probes = monitor.probes_run
            share = (busy - idle) / window
            print(f"idle CPU over {window:g} s: {idle:.3f} s")
            print(f"with health checks: {busy:.3f} s CPU, {probes} probes run")
            print(f"health checks cost {100 * share:.2f} % of one core")
            print(f"CPU per probe: {1000 * (busy - idle) / max(probes, 1):.3f} ms")
            print(f"restarts: {monitor.restarts}, failed: {monitor.failed}")
            print(f"target <= 5 % of one core: {'met' if share <= 0.05 else 'missed'}")
            print(f"(wall time {time.monotonic() - began:.0f} s)")
            await store.close()
    finally:
        server.kill()
        server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=120.0)
    parser.add_argument("--probe", choices=["http", "tcp"], default="http")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    asyncio.run(run(args.sessions, args.interval, ProbeKind(args.probe)))


if __name__ == "__main__":
    main()
