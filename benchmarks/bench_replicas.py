"""Replicas benchmark: 1, 2 and 3 engines on one PostgreSQL database (and 1 on SQLite) under
background activity; applied activity events/s, and deadline -> ``sleeping`` latency.

Run from the repository root (PostgreSQL on 127.0.0.1:5432 as ``postgres``, see
``scripts/postgres-up.sh``)::

    .venv/bin/python benchmarks/bench_replicas.py       # postgres:1,2,3 and sqlite:1, defaults
    .venv/bin/python benchmarks/bench_replicas.py --setups postgres:3 --sessions 500 --timed 60

Each replica is its own OS process (``multiprocessing``, spawn) running one ``Engine`` as
``tests/unit/conftest.py`` builds it: ``SqlStore`` on the shared database URL, ``FakeRuntime``
(its stop is instant, so the latency measured is dormant's own), a ``PortAllocator`` over a
range of its own and a distinct ``instance_id``; then ``heartbeat()``, ``load()``, ``start()``,
so its scheduler, flusher and heartbeat loops run. Per setup, on a throwaway database
(``dormant_bench_<random>``, made with psql, migrated with ``upgrade_async``, dropped at the end,
also on failure; or a SQLite file in a temporary directory):

1. ``--sessions`` sessions are created through the engines, spread over the replicas (balanced
   policy: nothing of theirs falls due during the run); every replica then ``get``s the ones
   the others made, so it accepts their activity, and starts its share of ``--rate`` background
   activity events/s (``record_activity(sid, COMMAND)`` on random sessions, paced in small
   batches every 10 ms; at most 0.25 s of arrears is caught up, so a starved event loop shows
   as a shortfall rather than as bursts).
2. ``--timed`` more sessions are created, spread over the replicas, with ``sleep_after`` chosen
   so that their deadlines fall in a ``--window`` seconds long window starting ``--lead`` s
   later (``warn_before`` 0). The deadline of each is read from the store (``next_action_at``)
   before the window starts.
3. Over the window each replica counts ``engine.events_applied`` and its CPU time
   (``time.process_time``: every thread of the process); every ``Transitioned(to_state=
   SLEEPING)`` and ``DeadlineDue`` is sent to the coordinator with its wall-clock time, so
   deadline -> claimed -> ``sleeping`` is known whichever replica handled a session. The run
   waits until every timed session slept (plus 3 s to catch a second sleep), or ``--grace`` s
   past the last deadline.
4. Saturation (``--saturate`` s, after the window): the pacing is lifted and every replica
   applies activity as fast as its event loop allows (the engine loops keep running), at the
   same moment; events/s is the capacity, not the offered load.
5. Afterwards, from the store: transitions to ``sleeping`` per timed session in the timeline
   (two or more here or in the events = slept twice) and the final states; lost = a timed
   session no replica put to sleep.

Also printed: each replica's activity flush (the real loop's ``flush``, timed: rows written and
seconds), the warnings and errors the engines logged, event-loop lag of the pacing loop, the
machine's CPU use over the window (``/proc/stat``; the machine may be shared) and, on
PostgreSQL, the CPU of the database's backends and the server's checkpoints and WAL written.

No timing is asserted; the figures are printed with the targets (p99 <= 100 ms; aggregate
events/s with 3 replicas >= 2x one replica's, where the cores allow).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import multiprocessing as mp
import os
import platform
import queue
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from dormant.clock import SystemClock
from dormant.engine import Engine, EngineEvent, EngineSettings, PortAllocator, default_catalog
from dormant.engine.notify import DeadlineDue, Transitioned
from dormant.policy import ActivityKind, State
from dormant.store.migrate import upgrade_async
from dormant.store.schema import session_events, sessions
from dormant.store.sql import SqlStore
from dormant.testing import FakeRuntime

TARGET_P99_MS = 100.0
TARGET_SCALE = 2.0

PACE = 0.01  # seconds between background batches
MAX_ARREARS = 0.25  # seconds of owed background events caught up at most
CREATE_CONCURRENCY = 8
PORTS_PER_REPLICA = 3000
PORT_BASE = 20000
COMMAND_TIMEOUT = 900.0  # a replica waiting longer for the coordinator gives up
MESSAGE_TIMEOUT = 900.0  # the coordinator waiting longer for a replica gives up


# helpers -----------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def source_version() -> str:
    """The commit benchmarked, whether the working tree differs from it, and where the
    ``dormant`` imported comes from when it is not this tree (e.g. an export on PYTHONPATH)."""
    import dormant

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
    where = Path(dormant.__file__).resolve().parent
    if not where.is_relative_to(root / "src"):
        return f"dormant imported from {where}, not this working tree (HEAD {head or '?'})"
    return f"commit {head or 'unknown'}" + (" + uncommitted changes in src/" if dirty else "")


def machine() -> str:
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} CPUs, {cpu}, Python {platform.python_version()}"


def cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as stat:
        fields_ = [int(x) for x in stat.readline().split()[1:]]
    idle = fields_[3] + (fields_[4] if len(fields_) > 4 else 0)
    return sum(fields_) - idle, sum(fields_)


def process_cpu_seconds(pids: Sequence[int]) -> dict[int, float]:
    """utime + stime in seconds of each of the given processes that still exists."""
    tick = os.sysconf("SC_CLK_TCK")
    found: dict[int, float] = {}
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(f"/proc/{pid}/stat") as stat:
                rest = stat.read().rsplit(")", 1)[1].split()
            found[pid] = (int(rest[11]) + int(rest[12])) / tick
    return found


def cpu_between(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds used between two readings: processes seen both times count their
    difference, new ones all of theirs; those that ended in between are missed (a lower bound).
    """
    return sum(t - before.get(pid, 0.0) for pid, t in after.items())


def psql(sql: str, args: argparse.Namespace, database: str = "postgres") -> str:
    result = subprocess.run(
        [
            *("psql", "-h", args.pg_host, "-p", str(args.pg_port), "-U", args.pg_user),
            *("-d", database, "-At", "-v", "ON_ERROR_STOP=1", "-c", sql),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"psql failed: {result.stderr.strip()}")
    return result.stdout


@contextlib.contextmanager
def database(kind: str, args: argparse.Namespace) -> Iterator[tuple[str, str | None]]:
    """A new, empty database: (SQLAlchemy URL, PostgreSQL name or None); removed afterwards."""
    if kind == "sqlite":
        tmp = Path(tempfile.mkdtemp(prefix="dormant-bench-replicas-", dir=args.tmp_dir))
        try:
            yield f"sqlite+aiosqlite:///{tmp / 'bench.db'}", None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    name = f"dormant_bench_{secrets.token_hex(4)}"
    psql(f'CREATE DATABASE "{name}"', args)
    try:
        yield f"postgresql+asyncpg://{args.pg_user}@{args.pg_host}:{args.pg_port}/{name}", name
    finally:
        psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', args)


def server_stats(name: str | None, args: argparse.Namespace) -> tuple[int, int] | None:
    """Server-wide (every database, anyone's work): checkpoints so far, WAL position (bytes)."""
    if name is None:
        return None
    try:
        out = psql(
            "SELECT checkpoints_timed + checkpoints_req, "
            "pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint FROM pg_stat_bgwriter",
            args,
        )
    except RuntimeError:
        return None
    a, b = out.strip().split("|")
    return int(a), int(b)


def backend_pids(name: str | None, args: argparse.Namespace) -> list[int]:
    """PostgreSQL server processes serving connections to this database."""
    if name is None:
        return []
    out = psql(f"SELECT pid FROM pg_stat_activity WHERE datname = '{name}'", args)
    return [int(x) for x in out.split()]


class ProblemCounter(logging.Handler):
    """Counts the warnings and errors the engine logs, grouped by message and exception."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.kinds: Counter[str] = Counter()
        self.times: list[float] = []  # wall-clock time of each

    def emit(self, record: logging.LogRecord) -> None:
        self.times.append(record.created)
        what = f"{record.levelname} {record.name}: {record.getMessage()}"[:200]
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            what += f" [{type(exc).__module__}.{type(exc).__name__}: {str(exc)[:160]}]"
        self.kinds[what] += 1


# a replica (its own process) ---------------------------------------------------------------


@dataclass(frozen=True)
class ReplicaSpec:
    index: int
    url: str
    instance: str
    ports: tuple[int, int]
    create: int
    rate: float
    seed: int


@dataclass
class Background:
    """The paced activity of one replica."""

    rate: float
    applied: int = 0
    dropped: float = 0.0  # arrears beyond MAX_ARREARS, never offered
    lag: list[float] = field(default_factory=list)  # sleep overshoot of the pacing loop
    measuring: bool = False


async def command(commands: Any) -> tuple[Any, ...]:
    return tuple(await asyncio.to_thread(commands.get, True, COMMAND_TIMEOUT))


async def sleep_until(at: float) -> None:
    delay = at - time.time()
    if delay > 0:
        await asyncio.sleep(delay)


async def create_many(
    engine: Engine, count: int, label: str, deadlines: Sequence[float] = ()
) -> list[str]:
    """``count`` sessions through ``engine.create_session``, a few at a time; their ids. With
    ``deadlines`` (wall-clock times), session ``i`` gets the ``sleep_after`` that puts its
    inactivity deadline at ``deadlines[i]`` (counted from now; it starts running a moment
    later, so the stored deadline is a little after it)."""
    slots = asyncio.Semaphore(CREATE_CONCURRENCY)
    ids: list[str] = [""] * count

    async def one(i: int) -> None:
        async with slots:
            policy = None
            if deadlines:
                policy = {"sleep_after": max(1.0, deadlines[i] - time.time()), "warn_before": 0}
            record = await engine.create_session(
                tenant="default", user_id=f"{label}-{i}", policy=policy
            )
            ids[i] = record.id

    await asyncio.gather(*(one(i) for i in range(count)))
    return ids


async def paced_activity(
    engine: Engine, ids: list[str], bg: Background, rng: random.Random, stop: asyncio.Event
) -> None:
    record = engine.record_activity
    kind = ActivityKind.COMMAND
    n_ids = len(ids)
    last = time.perf_counter()
    owed = 0.0
    while not stop.is_set():
        await asyncio.sleep(PACE)
        now = time.perf_counter()
        if bg.measuring:
            bg.lag.append(now - last - PACE)
        owed += bg.rate * (now - last)
        last = now
        cap = bg.rate * MAX_ARREARS
        if owed > cap:
            bg.dropped += owed - cap
            owed = cap
        n = int(owed)
        owed -= n
        for _ in range(n):
            record(ids[rng.randrange(n_ids)], kind)
        bg.applied += n


async def unpaced_activity(
    engine: Engine, ids: list[str], rng: random.Random, until: float
) -> tuple[int, float, float]:
    """As many events as the event loop allows until ``until``: (events, seconds, CPU s)."""
    record = engine.record_activity
    kind = ActivityKind.COMMAND
    n_ids = len(ids)
    events = 0
    t0, c0 = time.time(), time.process_time()
    while time.time() < until:
        for _ in range(256):
            record(ids[rng.randrange(n_ids)], kind)
        events += 256
        await asyncio.sleep(0)  # the scheduler, flusher and heartbeat get their turn
    return events, time.time() - t0, time.process_time() - c0


async def replica(spec: ReplicaSpec, commands: Any, results: Any) -> None:
    problems = ProblemCounter()
    logging.getLogger("dormant").addHandler(problems)
    rng = random.Random(spec.seed)
    store = SqlStore(spec.url)
    engine = Engine(
        store,
        {"process": FakeRuntime()},
        default_catalog(),
        SystemClock(),
        PortAllocator(range(*spec.ports), store.used_ports),
        EngineSettings(instance_id=spec.instance),
    )

    def listen(event: EngineEvent) -> None:
        if isinstance(event, Transitioned) and event.to_state is State.SLEEPING:
            results.put(("slept", spec.index, event.session.id, time.time()))
        elif isinstance(event, DeadlineDue):
            results.put(("due", spec.index, event.session_id, time.time()))

    engine.listeners.append(listen)
    flushes: list[tuple[float, int, float]] = []  # (wall-clock end, rows, seconds)
    original_flush = engine.flush

    async def timed_flush() -> int:  # the real flush loop calls this
        t0 = time.perf_counter()
        rows = await original_flush()
        if rows:
            flushes.append((time.time(), rows, time.perf_counter() - t0))
        return rows

    engine.flush = timed_flush  # type: ignore[method-assign]
    await engine.heartbeat()
    await engine.load()
    await engine.start()
    stop = asyncio.Event()
    bg = Background(rate=spec.rate)
    pacer: asyncio.Task[None] | None = None
    out: dict[str, Any] = {"index": spec.index, "pid": os.getpid()}
    try:
        t0 = time.perf_counter()
        ids = await create_many(engine, spec.create, f"r{spec.index}")
        await engine.drain()  # every create has run to `running`
        results.put(("created", spec.index, ids, time.perf_counter() - t0))

        (_, everyone) = await command(commands)
        t0 = time.perf_counter()
        mine = set(ids)
        foreign = [sid for sid in everyone if sid not in mine]
        for start in range(0, len(foreign), 32):
            await asyncio.gather(*(engine.get(sid) for sid in foreign[start : start + 32]))
        pacer = asyncio.create_task(paced_activity(engine, list(everyone), bg, rng, stop))
        results.put(("ready", spec.index, time.perf_counter() - t0))

        (_, targets, window_start, window_end) = await command(commands)
        t0 = time.perf_counter()
        timed = await create_many(engine, len(targets), f"t{spec.index}", targets)
        await engine.drain()
        results.put(("timed", spec.index, timed, time.perf_counter() - t0))

        await sleep_until(window_start)
        e0, c0, w0 = engine.events_applied, time.process_time(), time.time()
        d0 = bg.dropped
        bg.measuring = True
        await sleep_until(window_end)
        bg.measuring = False
        e1, c1, w1 = engine.events_applied, time.process_time(), time.time()
        in_window = [(rows, secs) for at, rows, secs in flushes if w0 <= at <= w1]
        out.update(
            flush_rows=sum(rows for rows, _ in in_window),
            flush_seconds=sorted(secs for _, secs in in_window),
            events=e1 - e0,
            cpu=c1 - c0,
            seconds=w1 - w0,
            dropped=bg.dropped - d0,
            lag_p50=percentile(bg.lag, 50),
            lag_p99=percentile(bg.lag, 99),
            lag_max=max(bg.lag, default=float("nan")),
        )

        (_, sat_start, sat_end) = await command(commands)
        stop.set()
        await pacer
        pacer = None
        await sleep_until(sat_start)
        events, seconds, cpu = await unpaced_activity(engine, list(everyone), rng, sat_end)
        out.update(sat_events=events, sat_seconds=seconds, sat_cpu=cpu)
        (_,) = await command(commands)  # stop
    finally:
        stop.set()
        if pacer is not None:
            with contextlib.suppress(Exception):
                await pacer
        with contextlib.suppress(Exception):
            await engine.stop()
        await store.close()
    out["problems"] = dict(problems.kinds.most_common(8))
    out["problem_count"] = sum(problems.kinds.values())
    out["problem_times"] = problems.times[:1000]
    results.put(("result", spec.index, out))


def replica_entry(spec: ReplicaSpec, commands: Any, results: Any) -> None:
    try:
        asyncio.run(replica(spec, commands, results))
    except BaseException:
        results.put(("error", spec.index, traceback.format_exc()))
        raise


# the coordinator ---------------------------------------------------------------------------


@dataclass
class Run:
    setup: str
    replicas: int
    load_at_start: str
    window: float = 0.0
    events: int = 0
    cpu: float = 0.0
    server: tuple[int, int] | None = None  # server-wide deltas, window until all slept
    problem_times: list[float] = field(default_factory=list)  # s into the window
    db_cpu: float | None = None  # PostgreSQL backends of this database (a lower bound)
    machine_busy: float = 0.0  # share of all cores busy over the window (anyone's work)
    machine_cpu: float = 0.0  # CPU seconds used on the machine over the window (anyone's)
    sat_machine_busy: float = 0.0
    dropped: float = 0.0
    per_replica: list[dict[str, Any]] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)  # deadline -> sleeping, s
    claims: list[float] = field(default_factory=list)  # deadline -> DeadlineDue, s
    claims_own: list[float] = field(default_factory=list)  # ... claimed by the creator
    claims_other: list[float] = field(default_factory=list)  # ... claimed by another replica
    after_claim: list[float] = field(default_factory=list)  # DeadlineDue -> sleeping, s
    handled_by: Counter[int] = field(default_factory=Counter)
    past_at_read: int = 0
    timed: int = 0
    slept_twice: int = 0
    lost: int = 0
    other_sleeps: int = 0
    final_states: dict[str, int] = field(default_factory=dict)
    sat_events: int = 0
    sat_seconds: float = 0.0
    sat_cpu: float = 0.0
    setup_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    #: the slowest sleeps: (latency s, deadline - window start s, creator, claimer, sleeper)
    slowest: list[tuple[float, float, int, int, int]] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.events / self.window if self.window else float("nan")

    @property
    def per_cpu(self) -> float:
        return self.events / self.cpu if self.cpu else float("nan")

    @property
    def sat_rate(self) -> float:
        return self.sat_events / self.sat_seconds if self.sat_seconds else float("nan")


class Coordinator:
    def __init__(self, results: Any, n: int) -> None:
        self.results = results
        self.n = n
        self.slept: list[tuple[int, str, float]] = []
        self.due: dict[str, tuple[int, float]] = {}  # first DeadlineDue: (replica, time)
        self.inbox: dict[str, dict[int, tuple[Any, ...]]] = {}

    def pump(self, timeout: float) -> bool:
        """Handle one message; False if none came within ``timeout``."""
        try:
            message = self.results.get(True, timeout)
        except queue.Empty:
            return False
        kind, index = message[0], message[1]
        if kind == "error":
            raise RuntimeError(f"replica {index} failed:\n{message[2]}")
        if kind == "slept":
            self.slept.append((index, message[2], message[3]))
        elif kind == "due":
            self.due.setdefault(message[2], (index, message[3]))
        else:
            self.inbox.setdefault(kind, {})[index] = message[2:]
        return True

    def gather(self, kind: str, procs: Sequence[Any]) -> list[tuple[Any, ...]]:
        """One ``kind`` message from every replica, in replica order."""
        deadline = time.monotonic() + MESSAGE_TIMEOUT
        while len(self.inbox.get(kind, {})) < self.n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"replicas did not all send {kind!r}")
            if not self.pump(1.0):
                got = self.inbox.get(kind, {})
                dead = [p.pid for i, p in enumerate(procs) if not p.is_alive() and i not in got]
                if dead and not self.pump(5.0):  # its last message may still be on its way
                    raise RuntimeError(f"replica process(es) {dead} ended early")
        got = self.inbox.pop(kind)
        return [got[i] for i in range(self.n)]


async def read_deadlines(url: str, ids: list[str]) -> dict[str, tuple[str | None, float | None]]:
    store = SqlStore(url)
    found: dict[str, tuple[str | None, float | None]] = {}
    try:
        async with store.engine.connect() as conn:
            for start in range(0, len(ids), 500):
                query = select(
                    sessions.c.id, sessions.c.next_action, sessions.c.next_action_at
                ).where(sessions.c.id.in_(ids[start : start + 500]))
                for row in (await conn.execute(query)).all():
                    at = row.next_action_at.timestamp() if row.next_action_at else None
                    found[row.id] = (row.next_action, at)
    finally:
        await store.close()
    return found


async def read_outcome(url: str, ids: list[str]) -> tuple[Counter[str], Counter[str]]:
    """(transitions to sleeping per session, final state counts) for ``ids``."""
    store = SqlStore(url)
    sleeps: Counter[str] = Counter()
    states: Counter[str] = Counter()
    try:
        async with store.engine.connect() as conn:
            for start in range(0, len(ids), 500):
                part = ids[start : start + 500]
                query = (
                    select(session_events.c.session_id, func.count())
                    .where(
                        session_events.c.session_id.in_(part),
                        session_events.c.type == "transition",
                        session_events.c.to_state == State.SLEEPING.value,
                    )
                    .group_by(session_events.c.session_id)
                )
                sleeps.update({r[0]: int(r[1]) for r in (await conn.execute(query)).all()})
                query = select(sessions.c.state).where(sessions.c.id.in_(part))
                states.update(r.state for r in (await conn.execute(query)).all())
    finally:
        await store.close()
    return sleeps, states


def spread(total: int, n: int) -> list[int]:
    return [total // n + (1 if i < total % n else 0) for i in range(n)]


def run_setup(kind: str, n: int, args: argparse.Namespace, rng: random.Random) -> Run:
    run = Run(setup=kind, replicas=n, load_at_start=load_average())
    print(f"\n== {kind}, {n} replica(s); load average at start {run.load_at_start}", flush=True)
    with database(kind, args) as (url, dbname):
        asyncio.run(upgrade_async(url))
        ctx = mp.get_context("spawn")
        results = ctx.Queue()
        commands = [ctx.Queue() for _ in range(n)]
        counts = spread(args.sessions, n)
        specs = [
            ReplicaSpec(
                index=i,
                url=url,
                instance=f"bench-replica-{i}",
                ports=(PORT_BASE + i * PORTS_PER_REPLICA, PORT_BASE + (i + 1) * PORTS_PER_REPLICA),
                create=counts[i],
                rate=args.rate / n,
                seed=args.seed * 100 + i,
            )
            for i in range(n)
        ]
        procs = [
            ctx.Process(target=replica_entry, args=(s, commands[s.index], results), daemon=True)
            for s in specs
        ]
        for p in procs:
            p.start()
        coord = Coordinator(results, n)
        try:
            measure(run, coord, procs, commands, url, dbname, args, rng)
        finally:
            for q in commands:  # on failure: replicas still waiting for a command end
                q.cancel_join_thread()
                with contextlib.suppress(Exception):
                    q.put(("stop",))
            for p in procs:
                p.join(timeout=60)
                if p.is_alive():
                    p.terminate()
                    p.join(timeout=10)
    return run


def measure(
    run: Run,
    coord: Coordinator,
    procs: Sequence[Any],
    commands: Sequence[Any],
    url: str,
    dbname: str | None,
    args: argparse.Namespace,
    rng: random.Random,
) -> None:
    n = run.replicas
    t_setup = time.perf_counter()
    created = coord.gather("created", procs)
    everyone = [sid for ids, _ in created for sid in ids]
    print(
        f"setup: {len(everyone):,} sessions created through the engines in "
        + ", ".join(f"{s:.1f} s" for _, s in created)
        + " (per replica)",
        flush=True,
    )
    for q in commands:
        q.put(("known", everyone))
    ready = coord.gather("ready", procs)
    print(
        "setup: others' sessions read by every replica in "
        + ", ".join(f"{s:.1f} s" for (s,) in ready)
        + f"; background activity {args.rate:,.0f}/s started",
        flush=True,
    )

    window_start = time.time() + args.lead
    window_end = window_start + args.window
    targets = sorted(window_start + rng.uniform(0, args.window) for _ in range(args.timed))
    shares: list[list[float]] = [targets[i::n] for i in range(n)]
    for i, q in enumerate(commands):
        q.put(("timed", shares[i], window_start, window_end))
    timed_msgs = coord.gather("timed", procs)
    timed_ids = [sid for ids, _ in timed_msgs for sid in ids]
    creator = {sid: i for i, (ids, _) in enumerate(timed_msgs) for sid in ids}
    run.timed = len(timed_ids)
    deadlines = asyncio.run(read_deadlines(url, timed_ids))
    now = time.time()
    sleeping_deadlines: dict[str, float] = {}
    for sid, (action, at) in deadlines.items():
        if action == "sleep" and at is not None:
            sleeping_deadlines[sid] = at
    run.past_at_read = sum(1 for at in sleeping_deadlines.values() if at <= now)
    if len(sleeping_deadlines) != len(timed_ids):
        run.notes.append(
            f"{len(timed_ids) - len(sleeping_deadlines)} timed sessions had no sleep deadline "
            "stored when read"
        )
    first = min(sleeping_deadlines.values(), default=now)
    last = max(sleeping_deadlines.values(), default=now)
    run.setup_s = time.perf_counter() - t_setup
    print(
        f"setup: {len(timed_ids)} timed sessions created in "
        + ", ".join(f"{s:.1f} s" for _, s in timed_msgs)
        + f"; deadlines {first - now:+.1f} s .. {last - now:+.1f} s from now "
        f"({run.past_at_read} already past when read); window {args.window:g} s",
        flush=True,
    )

    # machine-wide and PostgreSQL CPU over the window, seen from here
    while time.time() < window_start:
        coord.pump(max(0.01, min(0.5, window_start - time.time())))
    pids = backend_pids(dbname, args)
    server0 = server_stats(dbname, args)
    db0 = process_cpu_seconds(pids)
    busy0, total0 = cpu_ticks()
    w0 = time.monotonic()
    while time.time() < window_end:
        coord.pump(max(0.01, min(0.5, window_end - time.time())))
    busy1, total1 = cpu_ticks()
    if dbname is not None:
        run.db_cpu = cpu_between(db0, process_cpu_seconds(backend_pids(dbname, args)))
    run.machine_busy = (busy1 - busy0) / max(1, total1 - total0)
    run.machine_cpu = run.machine_busy * (os.cpu_count() or 1) * (time.monotonic() - w0)

    # wait until every timed session slept (and a little longer for a second sleep)
    give_up = last + args.grace
    done_at: float | None = None
    while time.time() < give_up:
        coord.pump(0.25)
        slept = {sid for _, sid, _ in coord.slept}
        if done_at is None and all(sid in slept for sid in sleeping_deadlines):
            done_at = time.time()
        if done_at is not None and time.time() > done_at + 3.0:
            break
    server1 = server_stats(dbname, args)
    if server0 is not None and server1 is not None:
        run.server = (server1[0] - server0[0], server1[1] - server0[1])

    sat_start = time.time() + 1.0
    for q in commands:
        q.put(("saturate", sat_start, sat_start + args.saturate))
    while time.time() < sat_start:
        coord.pump(max(0.01, min(0.25, sat_start - time.time())))
    busy0, total0 = cpu_ticks()
    while time.time() < sat_start + args.saturate:
        coord.pump(max(0.01, min(0.25, sat_start + args.saturate - time.time())))
    busy1, total1 = cpu_ticks()
    run.sat_machine_busy = (busy1 - busy0) / max(1, total1 - total0)
    while time.time() < sat_start + args.saturate + 0.5:
        coord.pump(0.25)
    for q in commands:
        q.put(("stop",))
    outs = [o for (o,) in coord.gather("result", procs)]
    while coord.pump(0.2):  # late events
        pass

    run.per_replica = outs
    run.problem_times = sorted(t - window_start for o in outs for t in o["problem_times"])
    run.window = max(o["seconds"] for o in outs)
    run.events = sum(o["events"] for o in outs)
    run.cpu = sum(o["cpu"] for o in outs)
    run.dropped = sum(o["dropped"] for o in outs)
    run.sat_events = sum(o["sat_events"] for o in outs)
    run.sat_seconds = max(o["sat_seconds"] for o in outs)
    run.sat_cpu = sum(o["sat_cpu"] for o in outs)

    first_sleep: dict[str, tuple[int, float]] = {}
    for index, sid, at in coord.slept:
        if sid not in sleeping_deadlines:
            run.other_sleeps += 1
        elif sid not in first_sleep or at < first_sleep[sid][1]:
            first_sleep[sid] = (index, at)
    for sid, (index, at) in first_sleep.items():
        run.latencies.append(at - sleeping_deadlines[sid])
        run.handled_by[index] += 1
        if sid in coord.due:
            claimer, claimed_at = coord.due[sid]
            late = claimed_at - sleeping_deadlines[sid]
            run.claims.append(late)
            (run.claims_own if claimer == creator[sid] else run.claims_other).append(late)
            run.after_claim.append(at - claimed_at)
        claimer = coord.due.get(sid, (-1, 0.0))[0]
        run.slowest.append(
            (
                at - sleeping_deadlines[sid],
                sleeping_deadlines[sid] - window_start,
                creator[sid],
                claimer,
                index,
            )
        )
    run.slowest = sorted(run.slowest, reverse=True)[:8]
    events_seen = Counter(sid for _, sid, _ in coord.slept if sid in sleeping_deadlines)
    stored, states = asyncio.run(read_outcome(url, timed_ids))
    run.slept_twice = sum(
        1 for sid in timed_ids if max(stored.get(sid, 0), events_seen.get(sid, 0)) > 1
    )
    run.lost = sum(1 for sid in timed_ids if sid not in first_sleep)
    run.final_states = dict(states.most_common())
    report_run(run)


# report ------------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f}" if seconds == seconds else "-"


def report_run(run: Run) -> None:
    lat = run.latencies
    print(
        f"window: {run.events:,} events applied in {run.window:.1f} s = {run.rate:,.0f}/s "
        f"(offered {run.events + run.dropped:,.0f}, {run.dropped:,.0f} not offered: loop behind); "
        f"replica CPU {run.cpu:.1f} s = {run.per_cpu:,.0f} events per CPU-second; "
        + (
            f"PostgreSQL backends of this database >= {run.db_cpu:.1f} CPU-s; "
            if run.db_cpu is not None
            else ""
        )
        + f"machine busy {run.machine_busy:.0%} of all cores ({run.machine_cpu:.1f} CPU-s, up "
        f"to {run.machine_cpu - run.cpu - (run.db_cpu or 0.0):.1f} of them other work than "
        "these replicas and their database backends)"
    )
    rows = sum(o["flush_rows"] for o in run.per_replica)
    secs = sorted(x for o in run.per_replica for x in o["flush_seconds"])
    print(
        f"flush: {rows / run.window:,.0f} session rows written per second by all replicas "
        f"({rows / max(1, run.events):.3f} per event); flush time p50 {ms(percentile(secs, 50))} "
        f"max {ms(max(secs, default=float('nan')))} ms"
    )
    for o in run.per_replica:
        print(
            f"  replica {o['index']}: {o['events'] / o['seconds']:,.0f} events/s, CPU "
            f"{o['cpu']:.1f} s ({o['cpu'] / o['seconds']:.0%} of a core), pacing-loop lag p50 "
            f"{ms(o['lag_p50'])} p99 {ms(o['lag_p99'])} max {ms(o['lag_max'])} ms; "
            f"saturated {o['sat_events'] / o['sat_seconds']:,.0f} events/s "
            f"({o['sat_events'] / max(o['sat_cpu'], 1e-9):,.0f}/CPU-s); "
            f"{o['problem_count']} warnings/errors logged"
        )
        for what, count in o["problems"].items():
            print(f"      {count:>5} x {what}")
    print(
        f"deadlines: {len(lat)}/{run.timed} slept; deadline -> sleeping p50 "
        f"{ms(percentile(lat, 50))} p99 {ms(percentile(lat, 99))} "
        f"max {ms(max(lat, default=float('nan')))} ms; "
        f"deadline -> claimed p50 {ms(percentile(run.claims, 50))} p99 "
        f"{ms(percentile(run.claims, 99))} max {ms(max(run.claims, default=float('nan')))} ms; "
        f"claimed by the replica that made it {len(run.claims_own)} (p50 "
        f"{ms(percentile(run.claims_own, 50))} p99 {ms(percentile(run.claims_own, 99))} ms), "
        f"by another {len(run.claims_other)} (p50 {ms(percentile(run.claims_other, 50))} p99 "
        f"{ms(percentile(run.claims_other, 99))} ms); claimed -> sleeping p50 "
        f"{ms(percentile(run.after_claim, 50))} p99 {ms(percentile(run.after_claim, 99))} max "
        f"{ms(max(run.after_claim, default=float('nan')))} ms; "
        f"handled by replica {dict(sorted(run.handled_by.items()))}; "
        f"slept twice {run.slept_twice}, lost {run.lost}, "
        f"other sessions slept {run.other_sleeps}; timed sessions by state "
        f"{run.final_states}"
    )
    if run.problem_times:
        shown = [t for t in run.problem_times if -5 <= t <= run.window + 15]
        print(
            f"engine warnings/errors at s into the window (all replicas, {len(shown)} of "
            f"{len(run.problem_times)} shown): " + ", ".join(f"{t:.1f}" for t in shown[:40])
        )
    if run.server is not None:
        checkpoints, wal = run.server
        print(
            f"PostgreSQL server-wide (every database, anyone's work) from the window's start "
            f"until all slept: {checkpoints} checkpoint(s), {wal / 2**20:,.0f} MiB of WAL written"
        )
    if run.slowest:
        print(
            "slowest (deadline -> sleeping ms @ deadline s into the window, replica that made "
            "/ claimed / slept it): "
            + "; ".join(
                f"{ms(lat)} @ {pos:.1f} s ({a}/{b}/{c})" for lat, pos, a, b, c in run.slowest
            )
        )
    print(
        f"saturated: {run.sat_rate:,.0f} events/s aggregate "
        f"({run.sat_events / max(run.sat_cpu, 1e-9):,.0f} per replica CPU-second); the replicas "
        f"got {run.sat_cpu / max(run.sat_seconds, 1e-9):.2f} cores between them; machine busy "
        f"{run.sat_machine_busy:.0%} of all cores"
    )
    for note in run.notes:
        print(f"note: {note}")


def table(runs: list[Run]) -> str:
    header = (
        "setup",
        "replicas",
        "load avg at start",
        "events/s applied (aggregate)",
        "events per CPU-s",
        "saturated events/s",
        "deadline -> sleeping p50 / p99 / max ms",
        "slept twice",
        "lost",
    )
    rows = [
        (
            r.setup,
            str(r.replicas),
            r.load_at_start.split()[0],
            f"{r.rate:,.0f}",
            f"{r.per_cpu:,.0f}",
            f"{r.sat_rate:,.0f}",
            f"{ms(percentile(r.latencies, 50))} / {ms(percentile(r.latencies, 99))} / "
            f"{ms(max(r.latencies, default=float('nan')))}",
            str(r.slept_twice),
            str(r.lost),
        )
        for r in runs
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def verdicts(runs: list[Run]) -> list[str]:
    out = []
    for r in runs:
        p99 = percentile(r.latencies, 99) * 1000
        ok = p99 <= TARGET_P99_MS and r.lost == 0 and r.slept_twice == 0
        out.append(
            f"{r.setup}:{r.replicas}: p99 {p99:,.0f} ms (target <= {TARGET_P99_MS:g} ms), "
            f"slept twice {r.slept_twice}, lost {r.lost}: {'met' if ok else 'MISSED'}"
        )
    pg = {r.replicas: r for r in runs if r.setup == "postgres"}
    if 1 in pg and 3 in pg:
        for what, one, three in (
            ("paced", pg[1].rate, pg[3].rate),
            ("saturated", pg[1].sat_rate, pg[3].sat_rate),
        ):
            ratio = three / one if one else float("nan")
            out.append(
                f"postgres 3 vs 1 replica, {what} events/s: {three:,.0f} / {one:,.0f} = "
                f"{ratio:.2f}x (target >= {TARGET_SCALE:g}x): "
                f"{'met' if ratio >= TARGET_SCALE else 'MISSED'}"
            )
    return out


def parse_setups(text: str) -> list[tuple[str, int]]:
    setups = []
    for part in text.split(","):
        kind, _, count = part.strip().partition(":")
        if kind not in ("postgres", "sqlite") or not count.isdigit() or int(count) < 1:
            raise SystemExit(f"bad setup {part!r}: expected postgres:N or sqlite:N")
        setups.append((kind, int(count)))
    return setups


def main(args: argparse.Namespace) -> None:
    setups = parse_setups(args.setups)
    print(f"machine: {machine()}")
    print(f"source: {source_version()}; load average at start {load_average()}")
    print(
        f"sessions {args.sessions:,} (+{args.timed} timed over a {args.window:g} s window, "
        f"{args.lead:g} s ahead), background {args.rate:,.0f} events/s in total, saturation "
        f"{args.saturate:g} s, seed {args.seed}; setups {args.setups}"
    )
    if any(kind == "postgres" for kind, _ in setups):
        version = psql("SHOW server_version", args).strip()
        print(f"PostgreSQL {version} at {args.pg_host}:{args.pg_port}")
    rng = random.Random(args.seed)
    runs: list[Run] = []
    for kind, n in setups:
        runs.append(run_setup(kind, n, args, rng))
    print(f"\nload average at end {load_average()}\n")
    print(table(runs))
    print()
    for line in verdicts(runs):
        print(line)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--setups",
        default="postgres:1,postgres:2,postgres:3,sqlite:1",
        help="store:replicas, comma separated (postgres:1,postgres:2,postgres:3,sqlite:1)",
    )
    parser.add_argument("--sessions", type=int, default=2000, help="kept-active sessions (2000)")
    parser.add_argument("--timed", type=int, default=300, help="sessions that fall due (300)")
    parser.add_argument("--window", type=float, default=20.0, help="deadline window, s (20)")
    parser.add_argument("--lead", type=float, default=25.0, help="s until the window (25)")
    parser.add_argument("--rate", type=float, default=10_000, help="activity events/s (10000)")
    parser.add_argument(
        "--grace", type=float, default=30.0, help="s past the last deadline before giving up (30)"
    )
    parser.add_argument(
        "--saturate", type=float, default=5.0, help="s of unpaced activity after the window (5)"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--pg-host", default="127.0.0.1")
    parser.add_argument("--pg-port", type=int, default=5432)
    parser.add_argument("--pg-user", default="postgres")
    parser.add_argument("--tmp-dir", default=None, help="where the SQLite file goes")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
    sys.stdout.flush()
