"""Trace formats (CSV, JSON Lines, the Azure per-minute table) and the synthetic generator."""

from __future__ import annotations

import csv
import itertools
import statistics
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from dormant.errors import InvalidInput
from dormant.simulate.generate import POPULATIONS, generate
from dormant.simulate.trace import (
    AZURE_START,
    KINDS,
    MEANINGFUL,
    TraceEvent,
    import_azure,
    make_trace,
    parse_ts,
    read_trace,
    write_trace,
)

ROOT = Path(__file__).resolve().parents[2]
AZURE = ROOT / "examples" / "traces" / "azure-functions-2019-sample-100.csv"
SYNTHETIC = ROOT / "examples" / "traces" / "mixed-10-users.csv"
T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC).timestamp()


def test_timestamps_iso_or_epoch() -> None:
    assert parse_ts("2026-01-05T09:00:00Z") == T0
    assert parse_ts("2026-01-05T10:00:00+01:00") == T0
    assert parse_ts("2026-01-05T09:00:00") == T0  # naive is UTC
    assert parse_ts(str(T0)) == T0 == parse_ts(T0) == parse_ts(int(T0))
    for bad in ("yesterday", "", True, None, float("nan")):
        with pytest.raises(InvalidInput):
            parse_ts(bad)


def test_csv_and_jsonl_round_trip(tmp_path: Path) -> None:
    events = [
        TraceEvent(T0, "s1", "alice", "connect"),
        TraceEvent(T0 + 1, "s1", "alice", "user-interaction"),
        TraceEvent(T0 + 1.5, "s2", "bob", "chat"),
        TraceEvent(T0 + 90, "s1", "alice", "focus"),
        TraceEvent(T0 + 100, "s1", "alice", "disconnect"),
        TraceEvent(T0 + 200, "s1", "alice", "logout"),
    ]
    trace = make_trace(events, end=T0 + 3600)
    for name in ("t.csv", "t.jsonl"):
        path = write_trace(trace, tmp_path / name)
        back = read_trace(path)
        assert back.events == trace.events
        assert back.end == T0 + 3600  # the "end" row


def test_events_are_sorted_stably_and_the_default_end_is_next_midnight(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text(
        "ts,session_id,user_id,event\n"
        "2026-01-05T10:00:00Z,s,u,command\n"
        "2026-01-05T09:00:00Z,s,u,connect\n"
        "2026-01-05T10:00:00Z,s,u,build\n"
    )
    trace = read_trace(path)
    assert [e.event for e in trace.events] == ["connect", "command", "build"]
    assert trace.end == datetime(2026, 1, 6, tzinfo=UTC).timestamp()
    assert trace.summary()["meaningful_events"] == 2


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("ts,session_id,user_id,event\n2026-01-05T10:00:00Z,s,u,dance\n", "t.csv:2: unknown event"),
        ("ts,session_id,user_id,event\n2026-01-05T10:00:00Z,,u,chat\n", "required"),
        ("ts,session_id,user_id,event\nsoon,s,u,chat\n", "t.csv:2: ts"),
        ("ts,session,event\n1,s,chat\n", "not a trace"),
        (
            "ts,session_id,user_id,event\n2026-01-05T10:00:00Z,s,u,chat\n"
            "2026-01-05T09:00:00Z,,,end\n",
            "before its last event",
        ),
    ],
)
def test_bad_traces_are_refused_with_the_line(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "t.csv"
    path.write_text(body)
    with pytest.raises(InvalidInput, match=message):
        read_trace(path)


def test_bad_jsonl_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text('{"ts": 1, "session_id": "s", "user_id": "u", "event": "chat"}\n{oops\n')
    with pytest.raises(InvalidInput, match=r"t\.jsonl:2"):
        read_trace(path)
    with pytest.raises(InvalidInput, match="does not exist"):
        read_trace(tmp_path / "missing.csv")


def test_azure_sample_imports_one_user_per_application() -> None:
    trace = read_trace(AZURE)
    with AZURE.open() as handle:
        rows = list(csv.reader(handle))
    header, body = rows[0], rows[1:]
    minutes = [i for i, h in enumerate(header) if h.startswith("minute_")]
    expected = sum(1 for row in body for i in minutes if float(row[i]) > 0)
    assert len(trace.events) == expected
    assert len(trace.users) == len(body) == 100
    assert all(e.event == "request" and e.user == e.session for e in trace.events)
    assert trace.start >= AZURE_START.timestamp()
    assert trace.end == AZURE_START.timestamp() + 1440 * 60
    # a minute with invocations is one request at the start of that minute
    first = body[0]
    active = [int(header[i].split("_")[1]) for i in minutes if float(first[i]) > 0]
    got = sorted(e.ts for e in trace.events if e.session == first[header.index("HashApp")])
    assert got == [AZURE_START.timestamp() + (m - 1) * 60 for m in active]


def test_azure_original_layout_merges_the_functions_of_an_app(tmp_path: Path) -> None:
    path = tmp_path / "invocations_per_function_md.anon.d01.csv"
    cols = ",".join(str(m) for m in range(1, 1441))
    zeros = ["0"] * 1440

    def row(owner: str, app: str, fn: str, minutes: dict[int, int]) -> str:
        cells = list(zeros)
        for m, n in minutes.items():
            cells[m - 1] = str(n)
        return ",".join([owner, app, fn, "http", *cells])

    path.write_text(
        f"HashOwner,HashApp,HashFunction,Trigger,{cols}\n"
        + row("o1", "a1", "f1", {1: 3, 10: 1})
        + "\n"
        + row("o1", "a1", "f2", {10: 2, 20: 5})
        + "\n"
        + row("o2", "a2", "f3", {1440: 1})
        + "\n"
    )
    trace = read_trace(path)  # found by content
    by_session = Counter(e.session for e in trace.events)
    assert by_session == {"o1:a1": 3, "o2:a2": 1}
    minutes = sorted((e.ts - AZURE_START.timestamp()) / 60 + 1 for e in trace.events)
    assert minutes == [1, 10, 20, 1440]
    assert import_azure(path, limit=1).users == {"o1:a1"}


def test_generator_is_reproducible_and_seeded() -> None:
    a = generate("mixed", 8, days=2, seed=7)
    assert a.events == generate("mixed", 8, days=2, seed=7).events
    assert a.events != generate("mixed", 8, days=2, seed=8).events
    # users are independent of how many there are
    small = generate("steady", 3, seed=7)
    big = generate("steady", 6, seed=7)
    assert [e for e in big.events if e.user in small.users] == list(small.events)


@pytest.mark.parametrize("population", POPULATIONS)
def test_generated_traces_are_well_formed(population: str) -> None:
    trace = generate(population, 12, days=2, seed=3)
    assert trace.events and list(trace.events) == sorted(trace.events, key=lambda e: e.ts)
    assert all(trace.start <= e.ts < trace.end for e in trace.events)
    assert all(
        e.event in KINDS or e.event in ("connect", "disconnect", "logout") for e in trace.events
    )
    for sid in trace.sessions:  # connections never go negative
        open_ = 0
        for e in (e for e in trace.events if e.session == sid):
            if e.event == "connect":
                open_ += 1
            elif e.event == "disconnect":
                open_ -= 1
                assert open_ >= 0
            elif e.event == "logout":
                open_ = 0


def _gaps(population: str) -> list[float]:
    trace = generate(population, 40, seed=5)
    out = []
    for sid in trace.sessions:
        ts = [e.ts for e in trace.events if e.session == sid and e.event in MEANINGFUL]
        out += [b - a for a, b in itertools.pairwise(ts) if b > a]
    return out


def test_populations_have_their_documented_shapes() -> None:
    steady = generate("steady", 40, seed=5)
    hours = [datetime.fromtimestamp(e.ts, UTC).hour for e in steady.events if e.event in MEANINGFUL]
    assert sum(7 <= h < 19 for h in hours) / len(hours) > 0.95  # a working day
    per_user = Counter(e.user for e in steady.events if e.event in MEANINGFUL)
    idle = generate("idle", 40, seed=5)
    per_idle = Counter(e.user for e in idle.events if e.event in MEANINGFUL)
    assert statistics.median(per_user.values()) > 5 * statistics.median(per_idle.values())
    bursty = sorted(_gaps("bursty"))
    # heavy tail: the typical gap is well under a minute, one in a hundred is a quarter of an
    # hour or more, and the longest are hours
    assert statistics.median(bursty) < 60
    assert bursty[int(0.99 * len(bursty))] > 900 and bursty[-1] > 3 * 3600
    assert any(e.event == "logout" for e in steady.events)
    assert any(e.event == "disconnect" for e in idle.events)


def test_generator_refuses_nonsense() -> None:
    for args in (("lazy", 1, 1), ("steady", 0, 1), ("steady", 1, 0)):
        with pytest.raises(InvalidInput):
            generate(*args)


def test_the_shipped_examples_read() -> None:
    assert len(read_trace(AZURE).users) == 100
    synthetic = read_trace(SYNTHETIC)
    assert len(synthetic.users) == 10 and synthetic.meta == {}
    assert synthetic.events == generate("mixed", 10, seed=1).events


def test_a_trace_splits_into_a_day_to_learn_from_and_a_day_to_measure() -> None:
    two = generate("steady", 5, days=2, seed=4)
    monday, tuesday = two.split(two.start + 86400 - (two.start % 86400))
    assert monday.events and tuesday.events
    assert monday.events + tuesday.events == two.events
    assert monday.end == tuesday.events[0].ts - (tuesday.events[0].ts % 86400)
    assert tuesday.end == two.end and all(e.ts >= monday.end for e in tuesday.events)
    window = two.between(tuesday.start, tuesday.start + 3600, name="hour")
    assert window.name == "hour" and window.end == tuesday.start + 3600
    assert all(tuesday.start <= e.ts < window.end for e in window.events)
