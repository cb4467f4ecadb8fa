"""``GET /v1/stats`` at 100,000 sessions, over HTTP: p50 and p99.

    .venv/bin/python benchmarks/bench_stats.py [--sessions 100000] [--running 0.5]
        [--requests 300] [--store sqlite|postgres|both]

The store (SQLite in a temporary directory, or a throwaway PostgreSQL database on
127.0.0.1:5432 as ``postgres``) is seeded with ``--sessions`` sessions of 1,000 users in 10
tenants: ``--running`` of them running (activity spread over the last hour, some with
connections, some disconnected, a few with their own level thresholds), the rest sleeping
(70 %), failed (10 %) and deleted (20 %); each with its create transition, the sleeping ones
with their sleep too (and the transition counts the migration fills from them). PostgreSQL
is then vacuumed and analysed, as autovacuum would have.

A child process serves dormant's API (``create_api``: the routes ``dormant serve`` mounts, no
reconciler sweep, which would mark the seeded running sessions vanished: they have no
processes) on a loopback port with uvicorn; the parent times ``--requests`` sequential
``GET /v1/stats`` with an admin key over one keep-alive connection (after 20 warm-up ones),
and one tenant's. For comparison it also times, in process, what ``/v1/stats`` did before
(walking every running session to judge its level, grouping every timeline). Target (issue
12): <= 50 ms at 100,000 sessions.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, insert, select

from dormant.api import create_api
from dormant.api.auth import create_key
from dormant.clock import SystemClock
from dormant.engine import Engine, EngineSettings, PortAllocator, default_catalog
from dormant.policy import Level, State
from dormant.reconciler import Reconciler
from dormant.store import SqlStore
from dormant.store.counting import level_columns
from dormant.store.migrate import upgrade_async
from dormant.store.records import SessionRecord
from dormant.store.schema import session_events, sessions
from dormant.testing import FakeRuntime

PG = ("-h", "127.0.0.1", "-p", "5432", "-U", "postgres")
TARGET_MS = 50.0
CHUNK = 5000


def psql(sql: str, database: str = "postgres") -> None:
    subprocess.run(["psql", *PG, "-d", database, "-Atc", sql], check=True, capture_output=True)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def engine_on(store: SqlStore) -> Engine:
    return Engine(
        store,
        {"process": FakeRuntime()},
        default_catalog(),
        SystemClock(),
        PortAllocator(range(40000, 40010), store.used_ports),
        EngineSettings(instance_id="bench"),
    )


# seeding ------------------------------------------------------------------------------------


def seeded(i: int, n: int, running_share: float, now: datetime) -> tuple[SessionRecord, list[str]]:
    """Session ``i`` of ``n`` and the actions of its counted transitions."""
    created = now - timedelta(hours=2, seconds=i % 3600)
    base: dict[str, Any] = {
        "id": f"b{i:07d}",
        "tenant": f"tenant{i % 10}",
        "user_id": f"user{i % 1000}",
        "template": "default",
        "runtime": "process",
        "policy_name": "balanced",
        "policy": {
            "sleep_after": 900.0,
            "delete_after": 86400.0,
            "active_within": 120.0,
            "idle_within": 600.0,
        },
        "state_since": created + timedelta(minutes=1),
        "created_at": created,
        "container_name": f"dormant-b{i:07d}",
        "labels": {"dormant.managed": "true"},
    }
    if i < n * running_share:
        extra: dict[str, Any] = {
            "state": State.RUNNING,
            "last_activity_at": now - timedelta(seconds=(i * 7) % 3600),
            "last_activity_kind": "build",
            "last_activity_source": "gateway",
        }
        if i % 5 == 0:
            extra |= {"ever_connected": True, "connections": 1 if i % 10 == 0 else 0}
        if i % 50 == 0:  # its own thresholds: a second pair to count
            base["policy"] = {**base["policy"], "active_within": 300.0, "idle_within": 1200.0}
        return SessionRecord(**base, **extra), ["create"]
    rest = (i - int(n * running_share)) % 10
    if rest < 7:
        return SessionRecord(**base, state=State.SLEEPING), ["create", "sleep"]
    if rest < 8:
        return SessionRecord(**base, state=State.FAILED, error="image not found"), ["create"]
    deleted = SessionRecord(**base, state=State.DELETED, deleted_at=now)
    return deleted, ["create", "delete"]


async def seed(url: str, n: int, running_share: float) -> str:
    await upgrade_async(url)
    store = SqlStore(url)
    now = datetime.now(UTC)
    began = time.perf_counter()
    async with store.engine.begin() as conn:
        for start in range(0, n, CHUNK):
            rows, events = [], []
            for i in range(start, min(n, start + CHUNK)):
                record, actions = seeded(i, n, running_share, now)
                rows.append({**record.to_row(), **level_columns(record)})
                for action in actions:
                    code = "create" if action == "create" else "inactivity"
                    events.append(
                        {
                            "session_id": record.id,
                            "at": record.created_at,
                            "type": "transition",
                            "from_state": None,
                            "to_state": record.state.value,
                            "action": action,
                            "code": code,
                            "reason": action,
                        }
                    )
            await conn.execute(insert(sessions), rows)
            await conn.execute(insert(session_events), events)
        # as migration 0009 fills it from existing timelines
        await conn.exec_driver_sql(
            "INSERT INTO transition_counts (tenant, action, code, n) "
            "SELECT s.tenant, e.action, COALESCE(e.code, ''), COUNT(*) "
            "FROM session_events e JOIN sessions s ON s.id = e.session_id "
            "WHERE e.type = 'transition' AND e.action IS NOT NULL "
            "GROUP BY s.tenant, e.action, COALESCE(e.code, '')"
        )
    key = await create_key(store, "tenant0", True, "bench", now)
    tenant_key = await create_key(store, "tenant3", False, "bench", now)
    async with store.engine.connect() as conn:
        total = (await conn.execute(select(func.count()).select_from(sessions))).scalar()
        events_total = (
            await conn.execute(select(func.count()).select_from(session_events))
        ).scalar()
    await store.close()
    print(
        f"seeded {total:,} sessions ({int(n * running_share):,} running), "
        f"{events_total:,} timeline entries in {time.perf_counter() - began:.1f} s"
    )
    return f"{key} {tenant_key}"


async def old_way(url: str, rounds: int) -> list[float]:
    """What ``/v1/stats`` did before: every running session read and judged, every timeline
    grouped (here in process, without HTTP)."""
    store = SqlStore(url)
    engine = engine_on(store)
    timings = []
    try:
        for _ in range(rounds):
            began = time.perf_counter()
            await store.count_by_state(None)
            by_level = {lvl.value: 0 for lvl in Level}
            after = None
            while True:
                page = await store.list_sessions(after_id=after, limit=1000, state=State.RUNNING)
                for record in page:
                    by_level[engine.describe(record)[0].value] += 1
                if len(page) < 1000:
                    break
                after = page[-1].id
            query = (
                select(session_events.c.action, session_events.c.code, func.count())
                .where(session_events.c.type == "transition", session_events.c.action.is_not(None))
                .group_by(session_events.c.action, session_events.c.code)
            )
            async with store.engine.connect() as conn:
                (await conn.execute(query)).all()
            timings.append((time.perf_counter() - began) * 1000)
    finally:
        await store.close()
    return timings


# serving (the child) ------------------------------------------------------------------------


def serve(url: str, port: int) -> None:
    import uvicorn

    async def main() -> None:
        store = SqlStore(url)
        engine = engine_on(store)
        app = create_api(engine, Reconciler(engine), rate_limit=1e6, rate_burst=10**6)
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        try:
            await uvicorn.Server(config).serve()
        finally:
            await store.close()

    asyncio.run(main())


# timing (the parent) ------------------------------------------------------------------------


def time_stats(url: str, keys: str, requests: int) -> dict[str, list[float]]:
    admin, tenant = keys.split()
    port = free_port()
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", url, "--port", str(port)],
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline or child.poll() is not None:
                raise RuntimeError("the API did not start")
            time.sleep(0.1)
        out: dict[str, list[float]] = {}
        for name, key in (("admin (all tenants)", admin), ("one tenant", tenant)):
            with httpx.Client(base_url=base, headers={"X-API-Key": key}, timeout=30) as client:
                for _ in range(20):
                    client.get("/v1/stats").raise_for_status()
                timings = []
                for _ in range(requests):
                    began = time.perf_counter()
                    response = client.get("/v1/stats")
                    timings.append((time.perf_counter() - began) * 1000)
                    response.raise_for_status()
                body = response.json()
            out[name] = timings
            print(
                f"  {name}: levels {body['sessions_by_level']}, "
                f"states {dict(sorted(body['sessions_by_state'].items()))}"
            )
        return out
    finally:
        os.killpg(child.pid, signal.SIGTERM)
        child.wait(30)


def report(label: str, values: list[float]) -> None:
    p99 = pct(values, 0.99)
    verdict = "met" if p99 <= TARGET_MS else "missed"
    print(
        f"  {label:<34} p50 {statistics.median(values):7.2f} ms  p99 {p99:7.2f} ms  "
        f"max {max(values):7.2f} ms  (target p99 <= {TARGET_MS:g} ms: {verdict})"
    )


def run(url: str, args: argparse.Namespace) -> None:
    keys = asyncio.run(seed(url, args.sessions, args.running))
    if url.startswith("postgresql"):
        psql("VACUUM ANALYZE", url.rsplit("/", 1)[1])
    for name, timings in time_stats(url, keys, args.requests).items():
        report(f"GET /v1/stats over HTTP, {name}", timings)
    before = asyncio.run(old_way(url, args.old_rounds))
    report("before (walk + group), in process", before)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--running", type=float, default=0.5)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--old-rounds", type=int, default=5)
    parser.add_argument("--store", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return
    print(f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, {args.sessions:,} sessions")
    if args.store in ("sqlite", "both"):
        print("SQLite:")
        with tempfile.TemporaryDirectory() as tmp:
            run(f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}", args)
    if args.store in ("postgres", "both"):
        print("PostgreSQL:")
        name = f"dormant_bench_{secrets.token_hex(4)}"
        psql(f'CREATE DATABASE "{name}"')
        try:
            run(f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}", args)
        finally:
            psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
