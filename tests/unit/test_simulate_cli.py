"""``dormant simulate``: both command forms, JSON, the report, and errors."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from dormant.cli import app
from dormant.simulate.trace import read_trace, write_trace

ROOT = Path(__file__).resolve().parents[2]
AZURE = ROOT / "examples" / "traces" / "azure-functions-2019-sample-100.csv"
FIELDS = {
    "policy",
    "cost",
    "cost_ratio",
    "waste_seconds",
    "running_seconds",
    "cold_wakes",
    "wake_wait_p95_seconds",
    "deletions_recreated",
}
runner = CliRunner()


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("traces") / "small.csv"
    result = runner.invoke(
        app, ["simulate", "generate", "-p", "mixed", "--users", "4", "--seed", "2", "-o", str(path)]
    )
    assert result.exit_code == 0, result.output
    return path


def run_json(*args: str) -> dict[str, Any]:
    result = runner.invoke(app, ["simulate", *args, "--json"])
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def test_generate_writes_a_readable_trace(small: Path, tmp_path: Path) -> None:
    trace = read_trace(small)
    # four users drawn; user 2 (an idle one) did not come on that Monday
    assert sorted(trace.users) == ["idle-00000", "steady-00001", "steady-00003"]
    assert small.read_text().startswith("ts,session_id,user_id,event")
    out = runner.invoke(app, ["simulate", "generate", "-p", "idle", "--users", "2"])
    assert out.exit_code == 0 and out.stdout.splitlines()[-1].endswith(",,,end")
    bad = runner.invoke(app, ["simulate", "generate", "-p", "sleepy"])
    assert bad.exit_code == 2 and "population must be one of" in bad.output


def test_json_lists_every_policy_and_the_optimum(small: Path) -> None:
    data = run_json(str(small), "--policy", "balanced", "-p", "adaptive", "-p", "fixed-7m")
    names = [p["policy"] for p in data["policies"]]
    assert names == ["balanced", "adaptive", "fixed-7m", "optimal"]
    for p in data["policies"]:
        assert set(p) >= FIELDS
        assert p["cost_ratio"] >= 1.0 - 1e-9
        assert p["running_seconds"] >= p["waste_seconds"] >= 0
    optimal = data["policies"][-1]
    assert optimal["cost_ratio"] == 1.0 and optimal["deletions_recreated"] == 0
    assert data["prices"]["break_even_seconds"] == 600.0
    assert data["trace"]["users"] == 3


def test_both_forms_and_prices(small: Path) -> None:
    short = run_json(str(small), "-p", "balanced")
    long = run_json("run", str(small), "-p", "balanced")
    assert short["policies"] == long["policies"]
    dear = run_json(str(small), "-p", "balanced", "--wake-penalty", "0.2", "--price", "0.12")
    assert dear["prices"]["break_even_seconds"] == 6000.0
    wakes = short["policies"][0]["cold_wakes"]
    assert dear["policies"][0]["cold_wakes"] == wakes  # the policy did the same...
    assert dear["policies"][0]["cost"] > short["policies"][0]["cost"]  # ...and costs more
    fixed = run_json(str(small), "-p", "balanced", "--wake-latency", "fixed:7")
    assert fixed["policies"][0]["wake_wait_p95_seconds"] == (7.0 if wakes else 0.0)


def test_table_on_the_shipped_azure_sample() -> None:
    result = runner.invoke(app, ["simulate", str(AZURE), "--policy", "balanced"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["policy", "cost", "x"]
    assert lines[1].startswith("balanced") and lines[2].startswith("optimal")


def test_report_writes_markdown_plots_and_json(small: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    result = runner.invoke(
        app, ["simulate", str(small), "-p", "balanced", "-p", "adaptive", "--report", str(out)]
    )
    assert result.exit_code == 0, result.output
    md = (out / "report.md").read_text()
    assert "| `balanced` |" in md and "| `optimal` |" in md and "break-even 10m" in md
    for png in ("frontier.png", "timeline.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    saved = json.loads((out / "results.json").read_text())
    assert [p["policy"] for p in saved["policies"]] == ["balanced", "adaptive", "optimal"]
    assert saved["frontier"][0]["cold_wakes"] == 0


def test_sqlite_store_gives_the_same_numbers(small: Path) -> None:
    memory = run_json(str(small), "-p", "aggressive")
    sqlite = run_json(str(small), "-p", "aggressive", "--store", "sqlite")
    assert memory["policies"] == sqlite["policies"]


def test_policies_from_a_config_file(small: Path, tmp_path: Path) -> None:
    config = tmp_path / "dormant.toml"
    config.write_text('[policies.team]\npreset = "conservative"\nsleep_after = "45m"\n')
    data = run_json(str(small), "-p", "team", "-p", "conservative", "--config", str(config))
    team, conservative = data["policies"][0], data["policies"][1]
    assert team["policy"] == "team"
    assert team["running_seconds"] >= conservative["running_seconds"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-p", "psychic"], "unknown policy 'psychic'"),
        (["-p", "balanced", "--wake-latency", "soon"], "wake latency"),
        (["-p", "balanced", "--price", "0"], "price"),
        (["-p", "adaptive", "--trust", "1.5"], "trust"),
        (["-p", "balanced", "--store", "redis"], "--store"),
    ],
)
def test_mistakes_are_reported_not_raised(small: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["simulate", str(small), *args])
    assert result.exit_code == 2 and message in result.output


def test_a_missing_trace_is_reported() -> None:
    result = runner.invoke(app, ["simulate", "no-such-trace.csv"])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_learning_first(tmp_path: Path) -> None:
    path = tmp_path / "two-days.csv"
    made = runner.invoke(
        app, ["simulate", "generate", "-p", "idle", "--users", "6", "--days", "2", "-o", str(path)]
    )
    assert made.exit_code == 0, made.output
    split = run_json(str(path), "-p", "adaptive", "--learn-until", "2026-01-06T00:00:00Z")
    assert split["trace"]["start"].startswith("2026-01-06")
    first, _ = read_trace(path).split(datetime(2026, 1, 6, tzinfo=UTC).timestamp())
    monday = tmp_path / "monday.csv"
    write_trace(first, monday)
    tuesday = tmp_path / "tuesday.csv"
    write_trace(read_trace(path).split(first.end)[1], tuesday)
    warm = run_json(str(tuesday), "-p", "adaptive", "--warmup", str(monday))
    assert warm["policies"] == split["policies"]
    both = runner.invoke(
        app, ["simulate", str(path), "--warmup", str(monday), "--learn-until", "2026-01-06"]
    )
    assert both.exit_code == 2 and "not both" in both.output
    outside = runner.invoke(app, ["simulate", str(path), "--learn-until", "2027-01-01"])
    assert outside.exit_code == 2 and "within the trace" in outside.output
