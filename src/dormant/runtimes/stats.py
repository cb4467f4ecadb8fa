"""A running container's CPU and memory, as :meth:`dormant.runtimes.base.Runtime.stats` reports
it, and the pure arithmetic that turns each backend's raw counters into it.

CPU is a percentage of one core over a short interval (200 % is two busy cores), like
``docker stats``. Memory is what the workload holds: for containers the cgroup's usage less
its inactive page cache (what ``docker stats`` shows), for processes the resident set (VmRSS).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class ContainerStats:
    """One reading: CPU in percent of one core, memory in bytes, the memory limit in bytes
    (``None``: unlimited) and when it was read."""

    cpu_percent: float
    memory_bytes: int
    memory_limit_bytes: int | None
    at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {
            "cpu_percent": self.cpu_percent,
            "memory_bytes": self.memory_bytes,
            "memory_limit_bytes": self.memory_limit_bytes,
            "at": self.at.isoformat(),
        }


# --- the Docker Engine API's stats document ---------------------------------------------------


def _int(value: object) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def cpu_total(sample: Mapping[str, Any], key: str = "cpu_stats") -> int:
    """Nanoseconds of CPU the container used so far (``cpu_usage.total_usage``)."""
    return _int(((sample.get(key) or {}).get("cpu_usage") or {}).get("total_usage"))


def docker_cpu_percent(sample: Mapping[str, Any]) -> float | None:
    """CPU % from one stats document's ``cpu_stats`` and ``precpu_stats`` (Docker's formula:
    used / system delta x online CPUs), or ``None`` when ``precpu_stats`` is empty (Podman,
    and Docker's one-shot reads, leave it so): then two samples are needed."""
    cpu, pre = sample.get("cpu_stats") or {}, sample.get("precpu_stats") or {}
    used = cpu_total(sample) - cpu_total(sample, "precpu_stats")
    system = _int(cpu.get("system_cpu_usage")) - _int(pre.get("system_cpu_usage"))
    if cpu_total(sample, "precpu_stats") <= 0 or system <= 0 or used < 0:
        return None
    online = _int(cpu.get("online_cpus")) or len(
        (cpu.get("cpu_usage") or {}).get("percpu_usage") or []
    )
    return round(used / system * max(online, 1) * 100.0, 2)


def cpu_percent_between(used_ns: int, wall_seconds: float) -> float:
    """CPU % from the CPU nanoseconds used over ``wall_seconds`` of wall time (two samples).
    Podman's ``system_cpu_usage`` does not advance with the host's time, so the wall time
    between the samples' ``read`` stamps is the denominator."""
    if wall_seconds <= 0 or used_ns <= 0:
        return 0.0
    return round(used_ns / (wall_seconds * 1e9) * 100.0, 2)


def docker_memory(sample: Mapping[str, Any]) -> int:
    """The container's memory less its inactive page cache (cgroup v2 ``inactive_file``,
    cgroup v1 ``total_inactive_file``), as ``docker stats`` computes it."""
    memory = sample.get("memory_stats") or {}
    usage = _int(memory.get("usage"))
    detail = memory.get("stats") or {}
    cache = _int(detail.get("inactive_file")) or _int(detail.get("total_inactive_file"))
    return usage - cache if 0 < cache < usage else usage


# --- /proc ------------------------------------------------------------------------------------


def proc_cpu_ticks(stat_text: str) -> int:
    """``utime + stime`` (clock ticks) from the text of ``/proc/PID/stat`` (the command name in
    parentheses may hold spaces and parentheses: fields are counted after the last ``)``)."""
    fields = stat_text[stat_text.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def proc_rss_bytes(status_text: str) -> int:
    """``VmRSS`` in bytes from the text of ``/proc/PID/status`` (0 for a kernel thread)."""
    for line in status_text.splitlines():
        if line.startswith("VmRSS:"):
            parts = line.split()
            return int(parts[1]) * 1024  # the kernel writes kB (KiB)
    return 0
