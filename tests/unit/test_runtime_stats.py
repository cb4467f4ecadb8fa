"""The arithmetic behind ``Runtime.stats`` (dormant.runtimes.stats), on hand-made counters."""

from __future__ import annotations

from typing import Any

from dormant.runtimes.stats import (
    cpu_percent_between,
    docker_cpu_percent,
    docker_memory,
    proc_cpu_ticks,
    proc_rss_bytes,
)


def _sample(total: int, pre: int, system: int, presystem: int, cpus: int = 2) -> dict[str, Any]:
    return {
        "cpu_stats": {
            "cpu_usage": {"total_usage": total},
            "system_cpu_usage": system,
            "online_cpus": cpus,
        },
        "precpu_stats": {"cpu_usage": {"total_usage": pre}, "system_cpu_usage": presystem},
    }


def test_docker_formula_from_cpu_and_precpu() -> None:
    # 0.5 s of CPU while the two-CPU system counted 2 s (1 s of wall time): half a core
    sample = _sample(1_500_000_000, 1_000_000_000, 12_000_000_000, 10_000_000_000)
    assert docker_cpu_percent(sample) == 50.0


def test_docker_formula_needs_a_precpu_sample() -> None:
    assert docker_cpu_percent(_sample(1_500_000_000, 0, 12_000_000_000, 0)) is None


def test_cpu_between_two_samples_over_wall_time() -> None:
    assert cpu_percent_between(250_000_000, 0.5) == 50.0  # 0.25 s of CPU in 0.5 s
    assert cpu_percent_between(3_000_000_000, 1.0) == 300.0  # three busy cores
    assert cpu_percent_between(0, 0.5) == 0.0
    assert cpu_percent_between(10, 0) == 0.0


def test_docker_memory_leaves_out_the_inactive_page_cache() -> None:
    v2 = {"memory_stats": {"usage": 10_000, "stats": {"inactive_file": 4_000}}}
    v1 = {"memory_stats": {"usage": 10_000, "stats": {"total_inactive_file": 1_000}}}
    podman = {"memory_stats": {"usage": 2_609_152, "limit": 67_108_864}}
    assert [docker_memory(s) for s in (v2, v1, podman)] == [6_000, 9_000, 2_609_152]


def test_proc_counters() -> None:
    # a command name with a space and parentheses; utime 150, stime 25 (fields 14 and 15)
    stat = "4242 (my (odd) cmd) S 1 4242 4242 0 -1 4194560 1 0 0 0 150 25 0 0 20 0 1 0 99 0 0"
    assert proc_cpu_ticks(stat) == 175
    status = "Name:\tpython3\nVmPeak:\t  20000 kB\nVmRSS:\t   12345 kB\nThreads:\t1\n"
    assert proc_rss_bytes(status) == 12345 * 1024
    assert proc_rss_bytes("Name:\tkthreadd\n") == 0
