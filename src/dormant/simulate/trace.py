"""Traces: what users did, in order, for the simulator to replay.

**Event traces** are CSV (with a header) or JSON Lines with four fields per event:

``ts``
    when: ISO 8601 (``2026-01-05T09:00:00Z``; no offset means UTC) or seconds since the Unix epoch.
``session_id``
    the user's unit of work (one container); sessions are created at their first event.
``user_id``
    whose session it is (``logout`` deletes all of a user's sessions; the adaptive policy learns
    per user).
``event``
    an activity kind (meaningful: ``user-interaction``, ``file-change``, ``build``, ``chat``,
    ``command``, ``request``, ``api``; presence: ``navigation``, ``focus``, ``visibility``;
    keepalive: ``ping``, ``pong``, ``heartbeat``), or ``connect``, ``disconnect``, ``logout``;
    or ``end`` (session and user empty): the trace's horizon. Without an ``end`` row a trace
    ends at the first UTC midnight after its last event.

**Per-minute invocation tables** in the Azure Functions 2019 layout (``HashOwner, HashApp,
HashFunction, Trigger, 1 .. 1440``, one row per function; columns found by name, so the
``minute_N`` variant of the vHive sample works too) are imported by :func:`import_azure`: one
application is one user's container, and every minute with at least one invocation of any of
its functions is one ``request`` at the start of that minute. The day starts at ``start``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from dormant.errors import InvalidInput
from dormant.policy import ActivityKind, Category

CONNECT = "connect"
DISCONNECT = "disconnect"
LOGOUT = "logout"
END = "end"
CONTROL_EVENTS = frozenset({CONNECT, DISCONNECT, LOGOUT})
KINDS = {k.value: k for k in ActivityKind}
MEANINGFUL = frozenset(k.value for k in ActivityKind if k.category is Category.MEANINGFUL)
FIELDS = ("ts", "session_id", "user_id", "event")

#: Day 1 of the imported Azure sample (the dataset has no dates; any day would do).
AZURE_START = datetime(2019, 7, 15, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class TraceEvent:
    ts: float  # seconds since the Unix epoch, UTC
    session: str
    user: str
    event: str

    @property
    def meaningful(self) -> bool:
        return self.event in MEANINGFUL


@dataclass(frozen=True)
class Trace:
    """Events sorted by time (ties keep their order in the file) and the horizon ``end``."""

    events: tuple[TraceEvent, ...]
    end: float
    name: str = "trace"
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def start(self) -> float:
        return self.events[0].ts if self.events else self.end

    @property
    def users(self) -> set[str]:
        return {e.user for e in self.events}

    @property
    def sessions(self) -> set[str]:
        return {e.session for e in self.events}

    def between(self, start: float, end: float, name: str | None = None) -> Trace:
        """The events in ``[start, end)``, ending at ``end`` (sessions start afresh)."""
        events = tuple(e for e in self.events if start <= e.ts < end)
        return Trace(events, end, name or f"{self.name}[{iso(start)}..{iso(end)}]", dict(self.meta))

    def split(self, at: float) -> tuple[Trace, Trace]:
        """``(before, after)``: e.g. a day to learn from and the day after to measure."""
        first = self.events[0].ts if self.events else at
        return self.between(min(first, at), at), self.between(at, self.end)

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "events": len(self.events),
            "meaningful_events": sum(1 for e in self.events if e.meaningful),
            "users": len(self.users),
            "sessions": len(self.sessions),
            "start": iso(self.start),
            "end": iso(self.end),
            "hours": round((self.end - self.start) / 3600, 3),
        }


def iso(ts: float) -> str:
    at = datetime.fromtimestamp(ts, UTC)
    text = at.isoformat(timespec="milliseconds" if ts % 1 else "seconds")
    return text.replace("+00:00", "Z")


def parse_ts(value: Any, where: str = "ts") -> float:
    """Seconds since the epoch from a number or an ISO 8601 string (naive means UTC)."""
    if isinstance(value, bool):
        raise InvalidInput(f"{where}: expected a time, got {value!r}")
    if isinstance(value, int | float):
        ts = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            ts = float(text)
        except ValueError:
            try:
                at = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
            except ValueError:
                raise InvalidInput(
                    f"{where}: cannot read {value!r} as a time (ISO 8601 or epoch seconds)"
                ) from None
            if at.tzinfo is None:
                at = at.replace(tzinfo=UTC)
            ts = at.timestamp()
    else:
        raise InvalidInput(f"{where}: expected a time, got {value!r}")
    if not math.isfinite(ts):
        raise InvalidInput(f"{where}: not a finite time")
    return ts


def next_midnight(ts: float) -> float:
    at = datetime.fromtimestamp(ts, UTC)
    day = at.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    return day.timestamp()


def _event(ts: Any, session: Any, user: Any, event: Any, where: str) -> TraceEvent | float:
    name = str(event or "").strip()
    at = parse_ts(ts, f"{where}: ts")
    if name == END:
        return at
    if name not in KINDS and name not in CONTROL_EVENTS:
        known = ", ".join([*KINDS, *sorted(CONTROL_EVENTS), END])
        raise InvalidInput(f"{where}: unknown event {name!r}; known: {known}")
    sid = str(session or "").strip()
    uid = str(user or "").strip()
    if not sid or not uid:
        raise InvalidInput(f"{where}: session_id and user_id are required")
    return TraceEvent(at, sid, uid, name)


def make_trace(
    rows: Iterable[TraceEvent | float],
    *,
    name: str = "trace",
    end: float | None = None,
    meta: dict[str, Any] | None = None,
) -> Trace:
    events: list[TraceEvent] = []
    ends: list[float] = []
    for row in rows:
        if isinstance(row, TraceEvent):
            events.append(row)
        else:
            ends.append(row)
    events.sort(key=lambda e: e.ts)  # stable: ties keep the file's order
    last = events[-1].ts if events else 0.0
    horizon = end if end is not None else (max(ends) if ends else next_midnight(last))
    if horizon < last:
        raise InvalidInput(
            f"the trace ends at {iso(horizon)}, before its last event at {iso(last)}"
        )
    return Trace(tuple(events), horizon, name, dict(meta or {}))


def _sniff(path: Path, head: str) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    first = head.splitlines()[0] if head else ""
    cols = [c.strip().lower() for c in first.split(",")]
    if all(f in cols for f in FIELDS):
        return "csv"
    if "hashapp" in cols and any(_minute_column(c) for c in cols):
        return "azure"
    if first.lstrip().startswith("{"):
        return "jsonl"
    raise InvalidInput(
        f"{path}: not a trace: expected a CSV header with {', '.join(FIELDS)}, JSON Lines, "
        "or an Azure Functions per-minute table (HashApp, 1..1440)"
    )


def read_trace(path: str | Path, *, fmt: str | None = None, end: float | None = None) -> Trace:
    """Read an event trace (CSV or JSON Lines) or an Azure per-minute table, by content."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InvalidInput(f"trace {path} does not exist") from None
    kind = fmt or _sniff(path, text[:4096])
    if kind == "azure":
        return import_azure(path, text=text, end=end)
    if kind == "csv":
        rows: Iterator[TraceEvent | float] = _csv_rows(text, str(path))
    elif kind == "jsonl":
        rows = _jsonl_rows(text, str(path))
    else:
        raise InvalidInput(f"unknown trace format {kind!r}; use csv, jsonl or azure")
    return make_trace(rows, name=path.stem, end=end)


def _csv_rows(text: str, where: str) -> Iterator[TraceEvent | float]:
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in reader.fieldnames or []]
    missing = [f for f in FIELDS if f not in header]
    if missing:
        raise InvalidInput(f"{where}: missing column(s) {', '.join(missing)}")
    reader.fieldnames = header
    for n, row in enumerate(reader, start=2):
        yield _event(row["ts"], row["session_id"], row["user_id"], row["event"], f"{where}:{n}")


def _jsonl_rows(text: str, where: str) -> Iterator[TraceEvent | float]:
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"{where}:{n}: invalid JSON: {exc.msg}") from None
        if not isinstance(row, dict):
            raise InvalidInput(f"{where}:{n}: expected an object")
        yield _event(
            row.get("ts"),
            row.get("session_id"),
            row.get("user_id"),
            row.get("event"),
            f"{where}:{n}",
        )


def write_trace(trace: Trace, path: str | Path) -> Path:
    """Write as CSV, or as JSON Lines when the name ends in ``.jsonl``; with an ``end`` row."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [(iso(e.ts), e.session, e.user, e.event) for e in trace.events]
    rows.append((iso(trace.end), "", "", END))
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        with path.open("w") as out:
            for row in rows:
                out.write(json.dumps(dict(zip(FIELDS, row, strict=True))) + "\n")
    else:
        with path.open("w", newline="") as out:
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(FIELDS)
            writer.writerows(rows)
    return path


_MINUTE = re.compile(r"^(?:minute_)?(\d+)$")


def _minute_column(name: str) -> int | None:
    match = _MINUTE.match(name.strip().lower())
    return int(match.group(1)) if match else None


def import_azure(
    path: str | Path,
    *,
    text: str | None = None,
    start: datetime = AZURE_START,
    kind: str = "request",
    limit: int | None = None,
    end: float | None = None,
) -> Trace:
    """An Azure Functions 2019 per-minute invocation table as an event trace (see module doc)."""
    path = Path(path)
    if kind not in MEANINGFUL:
        raise InvalidInput(f"kind must be a meaningful activity kind, not {kind!r}")
    body = text if text is not None else path.read_text()
    reader = csv.reader(io.StringIO(body))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise InvalidInput(f"{path}: empty file") from None
    lower = [h.lower() for h in header]
    if "hashapp" not in lower:
        raise InvalidInput(f"{path}: no HashApp column")
    app_col = lower.index("hashapp")
    owner_col = lower.index("hashowner") if "hashowner" in lower else None
    minutes = [(i, m) for i, h in enumerate(header) if (m := _minute_column(h)) is not None]
    if not minutes:
        raise InvalidInput(f"{path}: no per-minute columns (1..1440 or minute_1..)")
    width = max(m for _, m in minutes)
    apps: dict[str, set[int]] = {}
    order: list[str] = []
    for n, row in enumerate(reader, start=2):
        if not row:
            continue
        app = row[app_col].strip()
        if owner_col is not None and row[owner_col].strip() != app:
            app = f"{row[owner_col].strip()}:{app}"
        if app not in apps:
            if limit is not None and len(order) >= limit:
                continue
            apps[app] = set()
            order.append(app)
        active = apps[app]
        for i, m in minutes:
            cell = row[i].strip() if i < len(row) else ""
            try:
                count = float(cell) if cell else 0.0
            except ValueError:
                raise InvalidInput(f"{path}:{n}: not a count: {cell!r}") from None
            if count > 0:
                active.add(m)
    origin = start.timestamp()
    events = [
        TraceEvent(origin + (m - 1) * 60.0, app, app, kind)
        for app in order
        for m in sorted(apps[app])
    ]
    horizon = end if end is not None else origin + width * 60.0
    meta = {"source": "azure-functions-2019", "applications": len(order), "minutes": width}
    return make_trace(events, name=path.stem, end=horizon, meta=meta)
