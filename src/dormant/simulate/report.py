"""Tables and plots of a simulation: Markdown, and PNGs drawn with matplotlib (Agg)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dormant.policy import format_duration
from dormant.simulate.optimum import FrontierPoint
from dormant.simulate.policies import Prices, WakeLatency
from dormant.simulate.simulator import PolicyResult
from dormant.simulate.trace import Trace, iso

COLUMNS = (
    ("policy", "policy"),
    ("cost", "cost"),
    ("cost_ratio", "x optimum"),
    ("running_seconds", "running h"),
    ("waste_seconds", "waste h"),
    ("cold_wakes", "cold wakes"),
    ("wake_wait_p95_seconds", "wake p95 s"),
    ("deletions_recreated", "re-created"),
)


def _cells(r: PolicyResult) -> list[str]:
    ratio = "-" if r.cost_ratio is None else f"{r.cost_ratio:.3f}"
    return [
        r.policy,
        f"{r.cost:.2f}",
        ratio,
        f"{r.running_seconds / 3600:.1f}",
        f"{r.waste_seconds / 3600:.1f}",
        str(r.cold_wakes),
        f"{r.wake_wait_p95_seconds:.1f}",
        str(r.deletions_recreated),
    ]


def text_table(results: Sequence[PolicyResult]) -> str:
    """A fixed-width table for the terminal."""
    head = [title for _, title in COLUMNS]
    rows = [_cells(r) for r in results]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    lines = [
        "  ".join(
            h.ljust(w) if i == 0 else h.rjust(w)
            for i, (h, w) in enumerate(zip(head, widths, strict=True))
        )
    ]
    for row in rows:
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    return "\n".join(lines)


def markdown_table(results: Sequence[PolicyResult]) -> str:
    head = [title for _, title in COLUMNS]
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|",
    ]
    for r in results:
        cells = _cells(r)
        cells[0] = f"`{cells[0]}`"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def as_json(
    trace: Trace,
    results: Sequence[PolicyResult],
    prices: Prices,
    latency: WakeLatency,
    frontier: Sequence[FrontierPoint] | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "trace": trace.summary(),
        "prices": prices.to_dict(),
        "wake_latency": latency.describe(),
        "policies": [r.row() for r in results],
    }
    if frontier is not None:
        out["frontier"] = [
            {
                "cold_wakes": p.cold_wakes,
                "waste_seconds": round(p.waste_seconds, 3),
                "running_seconds": round(p.running_seconds, 3),
                "cost": round(p.cost, 6),
            }
            for p in frontier
        ]
    return out


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_frontier(
    results: Sequence[PolicyResult],
    frontier: Sequence[FrontierPoint],
    path: Path,
    title: str,
) -> Path:
    """Two panels: waste against cold wakes, and cost against cold wakes, each policy a point,
    the frontier (least waste, and least cost, reachable with k cold wakes) a line."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.5))
    xs = [p.cold_wakes for p in frontier]
    left.plot(
        xs,
        [p.waste_seconds / 3600 for p in frontier],
        color="0.4",
        lw=1.5,
        label="frontier (offline)",
    )
    right.plot(xs, [p.cost for p in frontier], color="0.4", lw=1.5, label="least cost for k wakes")
    markers = "os^vDPX*<>hp"
    for i, r in enumerate(results):
        style = {"marker": markers[i % len(markers)], "s": 60, "zorder": 3}
        if r.policy == "optimal":
            style.update(marker="*", s=220, color="black")
        elif r.policy == "adaptive":
            style.update(color="tab:red", s=120)
        left.scatter([r.cold_wakes], [r.waste_seconds / 3600], label=r.policy, **style)
        right.scatter([r.cold_wakes], [r.cost], label=r.policy, **style)
    left.set_xlabel("cold wakes")
    left.set_ylabel("waste: hours running with nobody active")
    left.set_title("waste vs cold wakes")
    right.set_xlabel("cold wakes")
    right.set_ylabel("cost (price x running + penalty x cold wakes)")
    right.set_title("cost vs cold wakes")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
    right.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def pick_sessions(trace: Trace, results: Sequence[PolicyResult], n: int = 4) -> list[str]:
    """Sessions worth looking at: the busiest, the one with the most cold wakes (under the
    first policy), and a few in between."""
    counts: dict[str, int] = {}
    for e in trace.events:
        if e.meaningful:
            counts[e.session] = counts.get(e.session, 0) + 1
    ranked = sorted(counts, key=lambda s: (-counts[s], s))
    if not ranked:
        return []
    chosen = [ranked[0]]
    first = next((r for r in results if r.books), None)
    if first is not None:
        wakes = sorted(
            first.books,
            key=lambda s: (-len(first.books[s].wakes) - len(first.books[s].recreations), s),
        )
        chosen += [s for s in wakes[:1] if s not in chosen]
    step = max(1, len(ranked) // max(1, n))
    for s in ranked[::step]:
        if len(chosen) >= n:
            break
        if s not in chosen:
            chosen.append(s)
    return chosen[:n]


def plot_timelines(
    trace: Trace,
    results: Sequence[PolicyResult],
    sessions: Sequence[str],
    path: Path,
) -> Path:
    """Per session: its meaningful activity (ticks) and, per policy, when its container ran
    (bars), and the sleeps (▼), cold wakes (▲), deletions (✕) and warnings (·) decided."""
    plt = _pyplot()
    policies = [r for r in results if r.books]
    height = max(2.5, 0.45 * (len(policies) + 1))
    fig, axes = plt.subplots(len(sessions), 1, figsize=(14, height * len(sessions)), squeeze=False)
    start = trace.start
    for ax, sid in zip(axes[:, 0], sessions, strict=True):
        acts = [(e.ts - start) / 3600 for e in trace.events if e.session == sid and e.meaningful]
        ax.vlines(acts, len(policies) - 0.1, len(policies) + 0.5, color="tab:green", lw=0.6)
        labels = []
        for row, r in enumerate(reversed(policies)):
            books = r.books.get(sid)
            labels.append(r.policy)
            if books is None:
                continue
            runs = [((s - start) / 3600, (e - s) / 3600) for s, e in books.runs]
            ax.broken_barh(runs, (row - 0.3, 0.6), color="tab:blue", alpha=0.7)
            sleeps = [(s.at - start) / 3600 for s in books.steps if s.to_state == "stopping"]
            deletes = [(s.at - start) / 3600 for s in books.steps if s.to_state == "deleting"]
            warns = [(s.at - start) / 3600 for s in books.steps if s.kind == "warning"]
            wakes = [(t - start) / 3600 for t in (*books.wakes, *books.recreations)]
            ax.scatter(sleeps, [row + 0.4] * len(sleeps), marker="v", color="black", s=18, zorder=3)
            ax.scatter(wakes, [row + 0.4] * len(wakes), marker="^", color="tab:red", s=18, zorder=3)
            ax.scatter(deletes, [row + 0.4] * len(deletes), marker="x", color="tab:purple", s=22)
            ax.scatter(warns, [row + 0.4] * len(warns), marker=".", color="tab:orange", s=10)
        ax.set_yticks([*range(len(policies)), len(policies) + 0.2])
        ax.set_yticklabels([*labels, "activity"], fontsize=8)
        ax.set_xlim(0, (trace.end - start) / 3600)
        ax.set_title(f"session {sid}", fontsize=9, loc="left")
        ax.grid(axis="x", alpha=0.3)
    axes[-1, 0].set_xlabel(f"hours since {iso(start)}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(
    out: Path,
    trace: Trace,
    results: Sequence[PolicyResult],
    frontier: Sequence[FrontierPoint],
    prices: Prices,
    latency: WakeLatency,
    sessions: Sequence[str] | None = None,
) -> list[Path]:
    """``report.md`` (the table and what it means), ``frontier.png``, ``timeline.png`` and
    ``results.json`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    summary = trace.summary()
    title = (
        f"{summary['name']}: {summary['users']} users, {summary['hours']} h, "
        f"break-even {format_duration(prices.break_even)}"
    )
    files = [plot_frontier(results, frontier, out / "frontier.png", title)]
    chosen = list(sessions) if sessions else pick_sessions(trace, results)
    if chosen:
        files.append(plot_timelines(trace, results, chosen, out / "timeline.png"))
    data = as_json(trace, results, prices, latency, frontier)
    (out / "results.json").write_text(json.dumps(data, indent=2) + "\n")
    files.append(out / "results.json")
    lines = [
        f"# Policy simulation: {summary['name']}",
        "",
        f"{summary['events']} events ({summary['meaningful_events']} meaningful) of "
        f"{summary['users']} users in {summary['sessions']} sessions, from {summary['start']} "
        f"to {summary['end']}.",
        "",
        f"Prices: {prices.price_per_hour:g} per container-hour, {prices.wake_penalty:g} per "
        f"cold wake (break-even {format_duration(prices.break_even)}); wake latency "
        f"{latency.describe()} s.",
        "",
        markdown_table(results),
        "",
        "`x optimum` is the cost divided by the offline optimum's (`optimal`: per idle gap, keep "
        "warm or sleep at once, knowing the future). Waste is running time more than two minutes "
        "after the last meaningful activity. Every policy ran through dormant's engine and "
        "`decide`; see `frontier.png` (each policy against the least waste and cost reachable "
        "with as many cold wakes) and `timeline.png` (sessions: activity, running time, "
        "decisions).",
        "",
        "| policy | what it is |",
        "|---|---|",
        *(f"| `{r.policy}` | {r.description} |" for r in results),
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))
    files.insert(0, out / "report.md")
    return files
