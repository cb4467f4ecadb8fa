"""Policy benchmark: every policy against the offline optimum, and how fast the simulator is.

Run from the repository root::

    .venv/bin/python benchmarks/bench_policies.py                    # what BENCHMARKS.md shows
    .venv/bin/python benchmarks/bench_policies.py --users 100 --jobs 2 --speed-users 200

1. **Policies.** Three synthetic populations (``steady``, ``bursty``, ``idle``; ``--users`` each,
   seed 1, measured on a Tuesday) and the real Azure Functions 2019 sample in
   ``examples/traces/`` (100 applications, one day, per minute; and its afternoon alone) are
   replayed through dormant's engine under every baseline and ``adaptive`` (cold: no data
   before), plus ``adaptive-warm``, whose models were learned on the Monday (the Azure
   morning) first, as they persist in a deployment. At the default prices (break-even 10 min)
   and, with ``--sensitivity``, at a break-even of 20 and 30 minutes. For each: the cost ratio
   to the offline optimum, waste, cold wakes, an estimate of the best per-user fixed timeout in
   hindsight, and the issue's targets: within 1.15x of the optimum, cheaper than the best fixed
   timeout (5, 10, 15, 30, 60 min, chosen with hindsight per population), no more cold wakes
   than ``balanced``.
2. **Speed.** A day of ``--speed-users`` users (``mixed``) replayed under ``balanced`` and
   ``adaptive``, one process each, timed (wall and CPU) with events per second.

Nothing is asserted; figures are printed as Markdown, with the machine, and saved as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from dormant.policy.adaptive import EDGES
from dormant.simulate.generate import ORIGIN, generate
from dormant.simulate.optimum import incarnations
from dormant.simulate.policies import (
    FIXED_MINUTES,
    STANDARD,
    Prices,
    WakeLatency,
    resolve,
    resolve_all,
)
from dormant.simulate.simulator import PolicyResult, run_policies, simulate
from dormant.simulate.trace import Trace, read_trace

ROOT = Path(__file__).resolve().parents[1]
AZURE = ROOT / "examples" / "traces" / "azure-functions-2019-sample-100.csv"
FIXED = [f"fixed-{m}m" for m in FIXED_MINUTES]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}; load average {load:.1f} at start"
    )


def per_user_oracle(trace: Trace, prices: Prices) -> float:
    """The cost of the best fixed timeout chosen separately for each user, knowing the whole
    trace: the ceiling of any per-user timeout policy. An estimate by per-gap accounting (as
    the optimum): it ignores connections, whose grace period the simulated policies obey."""
    gaps: dict[str, list[float]] = {}
    tails: dict[str, list[float]] = {}
    for inc in incarnations(trace):
        gaps.setdefault(inc.user, []).extend(inc.gaps())
        tails.setdefault(inc.user, []).append(inc.end - inc.anchors()[-1])
    b = prices.break_even
    candidates = sorted({*EDGES, *(m * 60.0 for m in FIXED_MINUTES), b})

    def cost(t: float, user: str) -> float:
        warm = sum(g if g <= t else t + b for g in gaps[user])
        return warm + sum(min(t, x) for x in tails[user])

    seconds = sum(min(cost(t, u) for t in candidates) for u in gaps)
    return prices.per_second * seconds


def targets(results: list[PolicyResult], which: str = "adaptive") -> dict[str, Any]:
    by = {r.policy: r for r in results}
    adaptive, balanced = by[which], by["balanced"]
    best_fixed = min((by[f] for f in FIXED), key=lambda r: r.cost)
    assert adaptive.cost_ratio is not None
    return {
        "policy": which,
        "adaptive_ratio": round(adaptive.cost_ratio, 4),
        "within_1_15": adaptive.cost_ratio <= 1.15,
        "best_fixed": best_fixed.policy,
        "best_fixed_ratio": round(best_fixed.cost_ratio or 0.0, 4),
        "ahead_of_best_fixed": adaptive.cost < best_fixed.cost,
        "adaptive_cold_wakes": adaptive.cold_wakes,
        "balanced_cold_wakes": balanced.cold_wakes,
        "no_more_wakes_than_balanced": adaptive.cold_wakes <= balanced.cold_wakes,
    }


def table(results: list[PolicyResult], oracle: float, opt: float) -> str:
    lines = [
        "| policy | x optimum | cost | running h | waste h | cold wakes | re-created |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if r.policy == "optimal":
            lines.append(
                f"| _per-user oracle (estimate)_ | {oracle / opt:.3f} | {oracle:.2f} |  |  |  |  |"
            )
        lines.append(
            f"| `{r.policy}` | {r.cost_ratio:.3f} | {r.cost:.2f} | "
            f"{r.running_seconds / 3600:.0f} | {r.waste_seconds / 3600:.0f} | {r.cold_wakes} | "
            f"{r.deletions_recreated} |"
        )
    return "\n".join(lines)


def verdict(t: dict[str, Any]) -> str:
    def mark(ok: bool) -> str:
        return "met" if ok else "**missed**"

    return (
        f"`{t['policy']}` {t['adaptive_ratio']:.3f}x optimum ({mark(t['within_1_15'])}: <= 1.15); "
        f"best fixed timeout `{t['best_fixed']}` {t['best_fixed_ratio']:.3f}x "
        f"({mark(t['ahead_of_best_fixed'])}: cheaper than it); cold wakes "
        f"{t['adaptive_cold_wakes']} vs balanced {t['balanced_cold_wakes']} "
        f"({mark(t['no_more_wakes_than_balanced'])}: no more)"
    )


def workloads(users: int) -> list[tuple[Trace, Trace | None]]:
    """``(measured, learned-from)``: synthetic Tuesdays after a Monday, the Azure day in full,
    and its afternoon after its morning."""
    out: list[tuple[Trace, Trace | None]] = []
    for population in ("steady", "bursty", "idle"):
        two = generate(population, users, days=2, seed=1)
        monday, tuesday = two.split(ORIGIN + 86400)
        out.append(
            (tuesday.between(tuesday.start, tuesday.end, f"{population}-{users}u-tue"), monday)
        )
    azure = read_trace(AZURE)
    out.append((azure, None))
    morning, afternoon = azure.split(azure.end - 43200)
    out.append((afternoon.between(afternoon.start, afternoon.end, "azure-afternoon"), morning))
    return out


def policies_section(
    loads: list[tuple[Trace, Trace | None]],
    prices: Prices,
    jobs: int,
    out: dict[str, Any],
    label: str,
) -> None:
    latency = WakeLatency()
    specs = resolve_all(["all"], prices)
    print(f"\n## Policies, {label}\n")
    for trace, learned_from in loads:
        started = time.perf_counter()
        results, opt = run_policies(trace, specs, prices, latency, jobs=jobs, keep_books=False)
        if learned_from is not None:
            warm = simulate(
                trace,
                resolve("adaptive", prices),
                prices,
                latency,
                keep_books=False,
                warmup=learned_from,
            )
            warm.policy = "adaptive-warm"
            warm.description = f"adaptive, models learned on {learned_from.name}"
            warm.cost_ratio = warm.cost / opt.cost
            results.insert(len(results) - 1, warm)
        took = time.perf_counter() - started
        oracle = per_user_oracle(trace, prices)
        checks = [targets(results)]
        if learned_from is not None:
            checks.append(targets(results, "adaptive-warm"))
        s = trace.summary()
        print(
            f"\n### {trace.name}: {s['users']} users, {s['events']} events, "
            f"{s['hours']} h ({took:.0f} s)\n"
        )
        print(table(results, oracle, opt.cost))
        print()
        for t in checks:
            print(f"- {verdict(t)}")
        print(flush=True)
        out.setdefault(label, {})[trace.name] = {
            "trace": s,
            "learned_from": learned_from.name if learned_from else None,
            "policies": [r.row() for r in results],
            "per_user_oracle_ratio": round(oracle / opt.cost, 4),
            "targets": checks,
            "optimum_gaps": opt.gaps,
            "seconds": round(took, 1),
        }


def speed_section(users: int, out: dict[str, Any]) -> None:
    trace = generate("mixed", users, days=1, seed=1)
    s = trace.summary()
    print(f"\n## Speed: a day of {users} users (mixed), {s['events']} events\n")
    print("| policy | wall s | CPU s | events/s (wall) | sleeps | cold wakes |")
    print("|---|---:|---:|---:|---:|---:|")
    rows = []
    for spec in resolve_all(["balanced", "adaptive"], Prices()):
        r = simulate(trace, spec, keep_books=False)
        rate = s["events"] / r.wall_seconds
        print(
            f"| `{r.policy}` | {r.wall_seconds:.1f} | {r.cpu_seconds:.1f} | {rate:,.0f} | "
            f"{r.sleeps} | {r.cold_wakes} |",
            flush=True,
        )
        rows.append(
            {
                "policy": r.policy,
                "wall_seconds": round(r.wall_seconds, 2),
                "cpu_seconds": round(r.cpu_seconds, 2),
                "events": s["events"],
            }
        )
    out["speed"] = {"users": users, "trace": s, "runs": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=300, help="users per synthetic population")
    parser.add_argument("--speed-users", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--sensitivity", action="store_true", help="also break-even 20m, 30m")
    parser.add_argument("--skip-policies", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("bench_policies.json"))
    args = parser.parse_args(argv)
    print(f"# bench_policies ({time.strftime('%Y-%m-%d')})\n\nMachine: {machine()}")
    print(f"Policies: {', '.join(STANDARD)}")
    out: dict[str, Any] = {"machine": machine(), "argv": sys.argv[1:]}
    if not args.skip_policies:
        loads = workloads(args.users)
        policies_section(loads, Prices(), args.jobs, out, "break-even 10 min (defaults)")
        if args.sensitivity:
            for minutes in (20, 30):
                prices = Prices(0.12, 0.12 / 60 * minutes)
                policies_section(loads, prices, args.jobs, out, f"break-even {minutes} min")
    if not args.skip_speed:
        speed_section(args.speed_users, out)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\n(saved {args.out})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
