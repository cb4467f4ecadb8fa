"""Engine benchmark: many sessions, random activity, real deadlines, on an on-disk SQLite store.

Run from the repository root::

    .venv/bin/python benchmarks/bench_engine.py                 # full size: 100,000 sessions
    .venv/bin/python benchmarks/bench_engine.py --sessions 5000 --events 100000 --seconds 3

What it measures (targets from the issue in brackets):

1. activity events applied per second through ``Engine.record_activity`` over random sessions,
   with ``await engine.flush()`` once per second as the flush loop does; in memory alone and
   including the flush time                                               [>= 50,000 events/s]
2. store writes per event: session rows written by ``flush`` / events applied
3. deadline lateness p50/p99 from the ``due`` events the real scheduler emits, with the engine's
   loops running (``engine.start()``, system clock) and background activity  [p99 <= 50 ms]
4. resident memory per idle session: RSS after ``engine.load()`` minus RSS before, divided by
   the number of sessions, measured in a fresh child process (RSS only, no tracemalloc)
                                                                               [<= 2 KB/session]

The store is ``SqlStore`` on ``sqlite+aiosqlite`` in a temporary directory, migrated with
``upgrade_async``; the runtime is ``dormant.testing.FakeRuntime`` registered as ``process``.
Sessions are bulk-inserted with SQLAlchemy Core for setup (valid rows, with the decision the
engine itself would store), then ``engine.load()`` resumes them as after a restart.
No timing is asserted: the figures are printed, with whether each target is met.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import json
import logging
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select

from dormant.clock import SystemClock
from dormant.engine import Engine, EngineEvent, EngineSettings, PortAllocator, default_catalog
from dormant.engine.ids import container_name, new_session_id
from dormant.engine.notify import DeadlineDue, Transitioned
from dormant.errors import DormantError
from dormant.policy import PRESETS, ActivityKind, PolicySettings, State, decide
from dormant.store.migrate import upgrade_async
from dormant.store.records import SessionRecord
from dormant.store.schema import sessions
from dormant.store.sql import SqlStore
from dormant.testing import FakeRuntime

TARGET_EVENTS_PER_S = 50_000
TARGET_P99_LATENESS_MS = 50.0
TARGET_BYTES_PER_SESSION = 2048

INSERT_CHUNK = 5_000
APPLY_CHUNK = 1_024
INSTANCE = "bench-engine"
KINDS: list[ActivityKind] = list(ActivityKind)


# helpers -----------------------------------------------------------------------------------


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def malloc_trim() -> bool:
    """Give freed heap pages back to the OS (glibc); False where unavailable."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def machine() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram = "unknown"
    with contextlib.suppress(OSError), open("/proc/meminfo") as info:
        for line in info:
            if line.startswith("MemTotal:"):
                ram = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "ram": ram,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def source_version() -> str:
    """The commit benchmarked, and whether the working tree differs from it."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return "unknown"
    return f"commit {head or 'unknown'}" + (" + uncommitted changes in src/" if dirty else "")


class ProblemCounter(logging.Handler):
    """Counts warnings and errors the engine logs (a failed operation is a finding), grouped by
    message, exception type and the innermost frame in dormant; no tracebacks are printed."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0
        self.kinds: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        what = f"{record.levelname} {record.name}: {record.getMessage()}"
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            where = ""
            for frame in traceback.extract_tb(exc.__traceback__):
                if "/dormant/" in frame.filename:
                    where = f" at {frame.filename.split('/src/')[-1]}:{frame.lineno} {frame.name}"
            what += f" [{type(exc).__module__}.{type(exc).__name__}{where}]"
        self.kinds[what] += 1


# setup: valid session rows, bulk-inserted ---------------------------------------------------


def session_row(
    created_at: datetime,
    last_activity_at: datetime,
    policy: PolicySettings,
    policy_name: str,
    now: datetime,
) -> dict[str, Any]:
    """A running session as the engine would have stored it (decision included)."""
    sid = new_session_id(created_at)
    labels = {
        "dormant.managed": "true",
        "dormant.session": sid,
        "dormant.user": f"user-{sid[-6:]}",
        "dormant.tenant": "default",
        "dormant.template": "default",
        "dormant.instance": INSTANCE,
        "dormant.created": created_at.isoformat(),
    }
    record = SessionRecord(
        id=sid,
        tenant="default",
        user_id=labels["dormant.user"],
        template="default",
        runtime="process",
        policy_name=policy_name,
        policy=policy.to_dict(),
        state=State.RUNNING,
        state_since=created_at,
        created_at=created_at,
        container_name=container_name(sid),
        labels=labels,
        runtime_state={"fake": True, "starts": 1},
        last_activity_at=last_activity_at,
        last_activity_kind=ActivityKind.USER_INTERACTION.value,
        last_activity_source="api",
        last_seen_at=last_activity_at,
    )
    decision = decide(record.view(), policy, now)
    record = record.replace(
        next_action=decision.action.value,
        next_action_at=decision.at,
        next_action_reason=decision.reason,
    )
    return record.to_row()


async def bulk_insert(store: SqlStore, rows: Iterable[dict[str, Any]]) -> list[str]:
    ids: list[str] = []
    chunk: list[dict[str, Any]] = []

    async def write() -> None:
        async with store.engine.begin() as conn:
            await conn.execute(insert(sessions), chunk)
        ids.extend(r["id"] for r in chunk)
        chunk.clear()

    for row in rows:
        chunk.append(row)
        if len(chunk) >= INSERT_CHUNK:
            await write()
    if chunk:
        await write()
    return ids


def idle_rows(n: int, rng: random.Random, now: datetime) -> Iterable[dict[str, Any]]:
    """Balanced-policy sessions, active within the last 2 minutes: next deadline >= 13 min."""
    policy = PRESETS["balanced"]
    for _ in range(n):
        created = now - timedelta(seconds=rng.uniform(600, 3600))
        last = now - timedelta(seconds=rng.uniform(0, 120))
        yield session_row(created, last, policy, "balanced", now)


def due_rows(
    n: int, rng: random.Random, now: datetime, lead: float, window: float
) -> Iterable[dict[str, Any]]:
    """Sessions whose inactivity sleep falls due between ``lead`` and ``lead + window`` s."""
    base = PRESETS["balanced"]
    for _ in range(n):
        sleep_after = lead + rng.uniform(0, window)
        policy = base.with_overrides({"sleep_after": sleep_after, "warn_before": 0})
        yield session_row(now - timedelta(seconds=600), now, policy, "balanced", now)


async def due_in_state(store: SqlStore, ids: list[str], state: State) -> list[str]:
    found: list[str] = []
    async with store.engine.connect() as conn:
        for chunk in range(0, len(ids), 900):
            query = select(sessions.c.id).where(
                sessions.c.id.in_(ids[chunk : chunk + 900]), sessions.c.state == state.value
            )
            found += [r.id for r in (await conn.execute(query)).all()]
    return found


async def due_states(store: SqlStore, ids: list[str]) -> dict[str, int]:
    states: Counter[str] = Counter()
    async with store.engine.connect() as conn:
        for chunk in range(0, len(ids), 900):
            query = select(sessions.c.state).where(sessions.c.id.in_(ids[chunk : chunk + 900]))
            states.update(r.state for r in (await conn.execute(query)).all())
    return dict(states.most_common())


def make_engine(store: SqlStore) -> tuple[Engine, FakeRuntime]:
    runtime = FakeRuntime()
    ports = PortAllocator(range(20000, 30000), store.used_ports)
    engine = Engine(
        store,
        {"process": runtime},
        default_catalog(),
        SystemClock(),
        ports,
        EngineSettings(instance_id=INSTANCE),
    )
    return engine, runtime


# (4) memory per idle session, in a fresh process ---------------------------------------------


async def memory_probe(url: str) -> dict[str, Any]:
    store = SqlStore(url)
    engine, _ = make_engine(store)
    await store.ping()
    await store.get_session("warm-up")  # connection, dialect and statement caches in place
    gc.collect()
    malloc_trim()
    before = rss_bytes()
    t0 = time.perf_counter()
    loaded = await engine.load()
    load_s = time.perf_counter() - t0
    gc.collect()
    after = rss_bytes()
    trimmed = after if not malloc_trim() else rss_bytes()
    await store.close()
    return {
        "loaded": loaded,
        "load_s": load_s,
        "rss_before": before,
        "rss_after": after,
        "rss_after_trim": trimmed,
    }


def run_memory_probe(url: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--memory-probe", url],
        check=True,
        capture_output=True,
        text=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


# (1) + (2) activity throughput -------------------------------------------------------------


@dataclass
class Throughput:
    events: int = 0
    apply_s: float = 0.0
    apply_cpu_s: float = 0.0  # CPU time of the applying thread (less sensitive to a busy host)
    flush_s: float = 0.0
    flush_cpu_s: float = 0.0  # CPU time of the event-loop thread during flushes (loop blocked)
    flushes: list[tuple[int, float]] = field(default_factory=list)  # (rows, seconds)

    @property
    def rows(self) -> int:
        return sum(r for r, _ in self.flushes)


async def activity_throughput(
    engine: Engine, ids: list[str], events: int, rng: random.Random, interval: float
) -> Throughput:
    sids = [ids[rng.randrange(len(ids))] for _ in range(events)]
    kinds = [KINDS[rng.randrange(len(KINDS))] for _ in range(events)]
    result = Throughput()
    record = engine.record_activity

    async def flush() -> None:
        t0 = time.perf_counter()
        c0 = time.thread_time()
        rows = await engine.flush()
        seconds = time.perf_counter() - t0
        result.flush_cpu_s += time.thread_time() - c0
        result.flush_s += seconds
        result.flushes.append((rows, seconds))

    last_flush = time.perf_counter()
    for start in range(0, events, APPLY_CHUNK):
        stop = min(start + APPLY_CHUNK, events)
        t0 = time.perf_counter()
        c0 = time.thread_time()
        for sid, kind in zip(sids[start:stop], kinds[start:stop], strict=True):
            record(sid, kind)
        t1 = time.perf_counter()
        result.apply_cpu_s += time.thread_time() - c0
        result.apply_s += t1 - t0
        result.events += stop - start
        if t1 - last_flush >= interval:
            await flush()
            last_flush = time.perf_counter()
    await flush()  # everything applied is written
    return result


# (3) deadline lateness with the real loops ---------------------------------------------------


@dataclass
class Lateness:
    due_total: int = 0
    lateness: list[float] = field(default_factory=list)  # seconds, due events of due sessions
    other_due: list[float] = field(default_factory=list)  # due events of other sessions
    asleep_after: list[float] = field(default_factory=list)  # deadline -> sleeping, seconds
    not_asleep: int = 0
    unscheduled: int = 0  # due sessions still running with no deadline: they never sleep
    stop_error: str | None = None  # engine.stop() failed (a finding, not a benchmark failure)
    loop_lag: list[float] = field(default_factory=list)
    flushes: list[tuple[int, float]] = field(default_factory=list)
    background_events: int = 0
    load_s: float = 0.0
    loaded: int = 0
    past_at_start: int = 0


async def deadline_lateness(
    store: SqlStore,
    idle_ids: list[str],
    due_deadlines: dict[str, float],
    rate: float,
    rng: random.Random,
) -> Lateness:
    result = Lateness()
    engine, _runtime = make_engine(store)
    started = float("inf")  # deadlines already past when the loops start measure the restart

    def listen(event: EngineEvent) -> None:
        if isinstance(event, DeadlineDue):
            result.due_total += 1
            deadline = due_deadlines.get(event.session_id)
            if deadline is None:
                result.other_due.append(event.late_seconds)
            elif deadline >= started:
                result.lateness.append(event.late_seconds)
        elif isinstance(event, Transitioned) and event.to_state is State.SLEEPING:
            deadline = due_deadlines.get(event.session_id)
            if deadline is not None:
                result.asleep_after.append(time.time() - deadline)

    engine.listeners.append(listen)
    original_flush = engine.flush

    async def timed_flush() -> int:  # instrument the real flush loop
        t0 = time.perf_counter()
        rows = await original_flush()
        if rows:
            result.flushes.append((rows, time.perf_counter() - t0))
        return rows

    engine.flush = timed_flush  # type: ignore[method-assign]

    t0 = time.perf_counter()
    result.loaded = await engine.load()
    result.load_s = time.perf_counter() - t0
    started = start_wall = time.time()
    result.past_at_start = sum(1 for at in due_deadlines.values() if at < start_wall)
    await engine.start()

    stop = asyncio.Event()

    async def background_activity() -> None:
        record = engine.record_activity
        last = time.perf_counter()
        owed = 0.0
        while not stop.is_set():
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            owed += rate * (now - last)
            last = now
            n = int(owed)
            owed -= n
            for _ in range(n):
                record(idle_ids[rng.randrange(len(idle_ids))], KINDS[rng.randrange(len(KINDS))])
            result.background_events += n

    async def lag_probe() -> None:
        while not stop.is_set():
            t = time.perf_counter()
            await asyncio.sleep(0.005)
            result.loop_lag.append(time.perf_counter() - t - 0.005)

    helpers = [asyncio.create_task(background_activity()), asyncio.create_task(lag_probe())]
    last_deadline = max(due_deadlines.values(), default=start_wall)
    give_up = last_deadline + 60.0
    while time.time() < give_up:
        await asyncio.sleep(0.25)
        if time.time() > last_deadline + 2.0 and len(result.asleep_after) >= len(due_deadlines):
            break
    stop.set()
    await asyncio.gather(*helpers)
    try:
        await engine.stop()  # drains every operation in flight, then flushes
    except DormantError as exc:
        result.stop_error = f"{type(exc).__name__}: {exc}"
    result.not_asleep = len(due_deadlines) - len(result.asleep_after)
    scheduled = {sid for sid, _ in engine.deadlines.pop_due(engine.clock.now() + timedelta(9999))}
    running = await due_in_state(store, list(due_deadlines), State.RUNNING)
    result.unscheduled = sum(1 for sid in running if sid not in scheduled)
    return result


# report ------------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def verdict(ok: bool) -> str:
    return "yes" if ok else "NO"


def table(rows: list[tuple[str, str, str, str]]) -> str:
    header = ("figure", "value", "target", "met")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    lines = [
        "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)),
        "  ".join("-" * w for w in widths),
    ]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def flush_summary(flushes: list[tuple[int, float]]) -> str:
    if not flushes:
        return "no flushes"
    rows = [r for r, _ in flushes]
    secs = [s for _, s in flushes]
    per_row = sum(secs) / max(1, sum(rows))
    return (
        f"{len(flushes)} flushes, rows/flush median {statistics.median(rows):,.0f} "
        f"max {max(rows):,}, time median {ms(statistics.median(secs))} max {ms(max(secs))}, "
        f"{per_row * 1e6:.1f} us/row"
    )


async def main(args: argparse.Namespace) -> None:
    problems = ProblemCounter()
    logging.getLogger("dormant").addHandler(problems)
    rng = random.Random(args.seed)
    clock = SystemClock()
    info = machine()
    print(
        f"machine: {info['nproc']} CPUs, {info['cpu']}, {info['ram']} RAM, "
        f"Python {info['python']} ({info['platform']})"
    )
    print(
        f"sessions {args.sessions:,}, events {args.events:,}, due sessions {args.due:,} "
        f"over {args.seconds:g} s, background activity {args.rate:,.0f}/s, seed {args.seed}"
    )
    print(f"source: {source_version()}; load average at start {load_average()}")

    tmp = Path(tempfile.mkdtemp(prefix="dormant-bench-", dir=args.tmp_dir))
    url = f"sqlite+aiosqlite:///{tmp / 'bench.db'}"
    store: SqlStore | None = None
    try:
        t0 = time.perf_counter()
        await upgrade_async(url)
        store = SqlStore(url)
        idle_ids = await bulk_insert(store, idle_rows(args.sessions, rng, clock.now()))
        print(f"setup: {len(idle_ids):,} sessions inserted in {time.perf_counter() - t0:.1f} s")

        memory = run_memory_probe(url)
        per_session = (memory["rss_after"] - memory["rss_before"]) / max(1, memory["loaded"])
        per_session_trim = (memory["rss_after_trim"] - memory["rss_before"]) / max(
            1, memory["loaded"]
        )
        print(
            f"memory: load of {memory['loaded']:,} sessions took {memory['load_s']:.2f} s; "
            f"RSS {memory['rss_before'] / 2**20:.1f} -> {memory['rss_after'] / 2**20:.1f} MiB "
            f"({memory['rss_after_trim'] / 2**20:.1f} MiB after malloc_trim)"
        )

        engine, _ = make_engine(store)
        loaded = await engine.load()
        throughput = await activity_throughput(
            engine, idle_ids, args.events, rng, engine.settings.flush_interval
        )
        apply_rate = throughput.events / throughput.apply_s
        total_rate = throughput.events / (throughput.apply_s + throughput.flush_s)
        writes = throughput.rows / max(1, throughput.events)
        print(
            f"activity: {throughput.events:,} events over {loaded:,} sessions; apply "
            f"{throughput.apply_s:.2f} s ({throughput.events / throughput.apply_cpu_s:,.0f} "
            f"events per CPU-second), flush {throughput.flush_s:.2f} s (event loop blocked "
            f"{throughput.flush_cpu_s:.2f} s of it); {flush_summary(throughput.flushes)}"
        )
        del engine

        # Room for inserting the due sessions and loading everything before the first is due.
        lead = max(5.0, 4.0 * memory["load_s"] + 5.0)
        now = clock.now()
        due_ids = await bulk_insert(store, due_rows(args.due, rng, now, lead, args.seconds))
        due_deadlines: dict[str, float] = {}
        async with store.engine.connect() as conn:
            for chunk in range(0, len(due_ids), 900):
                part = due_ids[chunk : chunk + 900]
                query = sessions.select().where(sessions.c.id.in_(part))
                for row in (await conn.execute(query)).all():
                    due_deadlines[row.id] = row.next_action_at.timestamp()
        late = await deadline_lateness(store, idle_ids, due_deadlines, args.rate, rng)
        print(
            f"deadlines: loaded {late.loaded:,} sessions in {late.load_s:.2f} s; "
            f"{late.due_total:,} due events ({len(late.lateness):,} of the due sessions, "
            f"{len(late.other_due):,} others), {late.past_at_start} already past at start "
            f"(not counted), {late.not_asleep} due sessions not asleep at the end, "
            f"{late.unscheduled} of them running with no deadline left (never put to sleep "
            f"until a restart); "
            f"{late.background_events:,} background events"
        )
        print(f"deadlines: flush loop {flush_summary(late.flushes)}")
        print(
            f"deadlines: deadline -> sleeping p50 {ms(percentile(late.asleep_after, 50))} "
            f"p99 {ms(percentile(late.asleep_after, 99))} max "
            f"{ms(max(late.asleep_after, default=float('nan')))}; event-loop lag p50 "
            f"{ms(percentile(late.loop_lag, 50))} p99 {ms(percentile(late.loop_lag, 99))} "
            f"max {ms(max(late.loop_lag, default=float('nan')))}"
        )
        states = await due_states(store, list(due_deadlines))
        pending = len(await store.pending_operations())
        print(
            f"deadlines: due sessions by state at the end {states}; "
            f"operations left pending {pending:,}"
        )
        if late.stop_error:
            print(f"deadlines: engine.stop() failed: {late.stop_error}")
        print(f"load average at end {load_average()}")
    finally:
        if store is not None:
            await store.close()
        shutil.rmtree(tmp, ignore_errors=True)

    all_late = late.lateness + late.other_due
    p50 = percentile(all_late, 50)
    p99 = percentile(all_late, 99)
    rows = [
        (
            "activity applied (in memory)",
            f"{apply_rate:,.0f} events/s",
            f">= {TARGET_EVENTS_PER_S:,}/s",
            verdict(apply_rate >= TARGET_EVENTS_PER_S),
        ),
        (
            "activity applied incl. flush",
            f"{total_rate:,.0f} events/s",
            f">= {TARGET_EVENTS_PER_S:,}/s",
            verdict(total_rate >= TARGET_EVENTS_PER_S),
        ),
        (
            "store writes per event",
            f"{writes:.3f} ({throughput.rows:,} rows)",
            "<= 1 per session per flush",
            "-",
        ),
        ("deadline lateness p50", ms(p50), "-", "-"),
        (
            "deadline lateness p99",
            f"{ms(p99)} (max {ms(max(all_late, default=float('nan')))})",
            f"<= {TARGET_P99_LATENESS_MS:g} ms",
            verdict(p99 * 1000 <= TARGET_P99_LATENESS_MS),
        ),
        (
            "RSS per idle session",
            f"{per_session:,.0f} B ({per_session_trim:,.0f} B after malloc_trim)",
            f"<= {TARGET_BYTES_PER_SESSION:,} B",
            verdict(per_session <= TARGET_BYTES_PER_SESSION),
        ),
    ]
    print()
    print(table(rows))
    print(f"\nengine warnings/errors logged: {problems.count}")
    for line, n in problems.kinds.most_common(10):
        print(f"  {n:>6} x {line}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=100_000, help="idle sessions (100000)")
    parser.add_argument(
        "--events", type=int, default=2_000_000, help="activity events to apply (2000000)"
    )
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="window the due deadlines spread over (10)"
    )
    parser.add_argument(
        "--due", type=int, default=5_000, help="sessions whose sleep falls due (5000)"
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=10_000,
        help="background activity events/s while deadlines fall due (10000)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--tmp-dir", default=None, help="where the temporary database goes")
    parser.add_argument("--memory-probe", metavar="URL", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def cli(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.memory_probe:
        print(json.dumps(asyncio.run(memory_probe(args.memory_probe))))
        return
    asyncio.run(main(args))


if __name__ == "__main__":
    cli()
