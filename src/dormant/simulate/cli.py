"""``dormant simulate``: what each policy costs on a trace, and synthetic traces to try it on.

``dormant simulate TRACE --policy P [--policy Q ...]`` is short for ``dormant simulate run TRACE
...``; ``dormant simulate generate`` writes a synthetic trace.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from typer.core import TyperGroup

from dormant.errors import DormantError
from dormant.simulate.generate import POPULATIONS, generate
from dormant.simulate.optimum import frontier
from dormant.simulate.policies import (
    DEFAULT_PRICE,
    DEFAULT_WAKE_LATENCY,
    DEFAULT_WAKE_PENALTY,
    STANDARD,
    Prices,
    WakeLatency,
    resolve_all,
)
from dormant.simulate.report import as_json, text_table, write_report
from dormant.simulate.simulator import PolicyResult, run_policies
from dormant.simulate.trace import parse_ts, read_trace, write_trace


class _TraceOrCommand(TyperGroup):
    """``dormant simulate TRACE ...`` runs ``run``; ``dormant simulate generate ...`` generates."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


simulate_app = typer.Typer(
    cls=_TraceOrCommand,
    no_args_is_help=True,
    add_completion=False,
    help=(
        "Replay a trace through dormant's engine under each policy and compare costs with the "
        "offline optimum. `dormant simulate TRACE --policy P` is short for "
        "`dormant simulate run TRACE --policy P`."
    ),
)


def _die(message: str) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _catalog(config: str | None) -> dict[str, Any] | None:
    if not config:
        return None
    from dormant.config import load_settings

    return dict(load_settings(config, environ={}).catalog().policies)


@simulate_app.command("run")
def run(
    trace: Annotated[
        Path, typer.Argument(help="Trace: CSV or JSON Lines events, or an Azure per-minute table")
    ],
    policy: Annotated[
        list[str] | None,
        typer.Option(
            "--policy",
            "-p",
            help=f"Policy to replay (repeatable; default all): {', '.join(STANDARD)}, "
            "fixed-<duration>, a [policies.NAME] of --config, or 'all'",
        ),
    ] = None,
    as_json_out: Annotated[
        bool, typer.Option("--json", help="Print JSON instead of a table")
    ] = False,
    report: Annotated[
        Path | None,
        typer.Option("--report", help="Write report.md, frontier.png, timeline.png here"),
    ] = None,
    price: Annotated[
        float, typer.Option(help="Price of a running container per hour")
    ] = DEFAULT_PRICE,
    wake_penalty: Annotated[
        float, typer.Option(help="Cost of one cold wake (a user waiting), same currency")
    ] = DEFAULT_WAKE_PENALTY,
    wake_latency: Annotated[
        str,
        typer.Option(help="Cold wake wait: fixed:S, uniform:LO,HI or lognormal:MEDIAN,P95 (s)"),
    ] = DEFAULT_WAKE_LATENCY,
    trust: Annotated[
        float | None, typer.Option(help="adaptive: how far from break-even it may go (0..1)")
    ] = None,
    scope: Annotated[
        str | None, typer.Option(help="adaptive: learn per 'user' or per 'template'")
    ] = None,
    fmt: Annotated[
        str | None, typer.Option("--format", help="csv, jsonl or azure (default: by content)")
    ] = None,
    end: Annotated[
        str | None, typer.Option("--end", help="The trace's horizon (ISO 8601 or epoch seconds)")
    ] = None,
    warmup: Annotated[
        Path | None,
        typer.Option(help="A trace for learning policies to learn from first (not accounted)"),
    ] = None,
    learn_until: Annotated[
        str | None,
        typer.Option(help="Learn from TRACE before this time, measure from it (ISO 8601)"),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the wake latency draws")] = 0,
    jobs: Annotated[int, typer.Option(min=1, max=64, help="Policies replayed in parallel")] = 1,
    store: Annotated[
        str, typer.Option(help="memory (fast) or sqlite (a temporary SQLite file, as served)")
    ] = "memory",
    sessions: Annotated[
        str | None, typer.Option(help="Sessions for timeline.png, comma-separated")
    ] = None,
    config: Annotated[
        str | None, typer.Option("--config", "-c", help="dormant.toml whose policies to offer")
    ] = None,
) -> None:
    """Replay TRACE under each policy; print cost, waste and cold wakes against the optimum."""
    try:
        prices = Prices(price, wake_penalty)
        latency = WakeLatency.parse(wake_latency)
        horizon = parse_ts(end, "--end") if end else None
        data = read_trace(trace, fmt=fmt, end=horizon)
        learn_from = read_trace(warmup) if warmup is not None else None
        if learn_until is not None:
            if learn_from is not None:
                _die("give --warmup or --learn-until, not both")
            cut = parse_ts(learn_until, "--learn-until")
            if not data.start < cut < data.end:
                _die("--learn-until must fall within the trace")
            learn_from, data = data.split(cut)
        learn: dict[str, Any] = {}
        if trust is not None:
            learn["trust"] = trust
        if scope is not None:
            learn["scope"] = scope
        specs = resolve_all(policy or [], prices, adaptive=learn, catalog=_catalog(config))
    except DormantError as exc:
        _die(str(exc))
    if store not in ("memory", "sqlite"):
        _die("--store must be memory or sqlite")
    if not data.events:
        _die(f"{trace}: no events")

    def progress(r: PolicyResult) -> None:
        if not as_json_out:
            typer.echo(f"  {r.policy:<14} replayed in {r.wall_seconds:6.1f} s", err=True)

    if not as_json_out:
        s = data.summary()
        typer.echo(
            f"{s['name']}: {s['events']} events, {s['users']} users, {s['sessions']} sessions, "
            f"{s['hours']} h; break-even {prices.break_even:g} s",
            err=True,
        )
    if store == "sqlite":
        results = _with_sqlite(data, specs, prices, latency, seed, progress, learn_from)
    else:
        results, _ = run_policies(
            data,
            specs,
            prices,
            latency,
            seed=seed,
            jobs=jobs,
            keep_books=report is not None,
            progress=progress,
            warmup=learn_from,
        )
    front = frontier(data, prices)
    if report is not None:
        chosen = [s.strip() for s in sessions.split(",")] if sessions else None
        files = write_report(report, data, results, front, prices, latency, chosen)
        if not as_json_out:
            typer.echo("wrote " + ", ".join(str(f) for f in files), err=True)
    if as_json_out:
        typer.echo(json.dumps(as_json(data, results, prices, latency), indent=2))
    else:
        typer.echo(text_table(results))


def _with_sqlite(
    data: Any,
    specs: list[Any],
    prices: Prices,
    latency: WakeLatency,
    seed: int,
    progress: Any,
    warmup: Any,
) -> list[PolicyResult]:
    import asyncio

    from dormant.simulate.simulator import optimal_result, simulate_async, with_ratios
    from dormant.store.migrate import upgrade_async
    from dormant.store.sql import SqlStore

    async def main() -> list[PolicyResult]:
        out = []
        with tempfile.TemporaryDirectory(prefix="dormant-sim-") as tmp:
            for i, spec in enumerate(specs):
                url = f"sqlite+aiosqlite:///{Path(tmp) / f'sim-{i}.db'}"
                await upgrade_async(url)
                sql = SqlStore(url)
                try:
                    r = await simulate_async(
                        data, spec, prices, latency, seed=seed, store=sql, warmup=warmup
                    )
                finally:
                    await sql.close()
                progress(r)
                out.append(r)
        return out

    results = asyncio.run(main())
    best, opt = optimal_result(data, prices, latency, seed)
    return with_ratios([*results, best], opt.cost)


@simulate_app.command("generate")
def generate_cmd(
    population: Annotated[
        str, typer.Option("--population", "-p", help=f"One of: {', '.join(POPULATIONS)}")
    ] = "mixed",
    users: Annotated[int, typer.Option(min=1, max=1_000_000, help="How many users")] = 100,
    days: Annotated[int, typer.Option(min=1, max=366, help="How many days (from a Monday)")] = 1,
    seed: Annotated[int, typer.Option(help="Same seed, same trace")] = 1,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="File (.csv or .jsonl); default stdout")
    ] = None,
) -> None:
    """Write a synthetic trace of people at work (see `dormant.simulate.generate`)."""
    try:
        data = generate(population, users, days, seed)
    except DormantError as exc:
        _die(str(exc))
    if output is None:
        with tempfile.TemporaryDirectory() as tmp:
            path = write_trace(data, Path(tmp) / "trace.csv")
            sys.stdout.write(path.read_text())
        return
    write_trace(data, output)
    s = data.summary()
    typer.echo(
        f"wrote {output}: {s['events']} events, {s['users']} users, {s['hours']} h", err=True
    )
