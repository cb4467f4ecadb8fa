"""What a simulated policy is, the prices it is judged by, and the baselines.

Every baseline is a real dormant policy (``PolicySettings`` the engine runs as it would in
``dormant serve``); the only addition is ``check_every``, which models the source documents'
``setInterval`` cullers: the engine's deadlines are then only looked at every ``check_every``
seconds instead of exactly when they fall due.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from typing import Any

from dormant.errors import InvalidInput
from dormant.policy import (
    PRESETS,
    AdaptiveSettings,
    PolicySettings,
    adaptive_policy,
    format_duration,
    parse_duration,
)

DEFAULT_PRICE = 0.12
DEFAULT_WAKE_PENALTY = 0.02
DEFAULT_WAKE_LATENCY = "lognormal:3,12"


@dataclass(frozen=True, slots=True)
class Prices:
    """``price`` per container-hour of running, ``wake_penalty`` per cold wake (what a user's
    wait and lost context are worth), in one currency. Defaults: $0.12 per hour (a 2 vCPU /
    4 GB container on demand) and $0.02 per cold wake, so a cold wake costs as much as ten
    minutes of a running container (the break-even time)."""

    price_per_hour: float = DEFAULT_PRICE
    wake_penalty: float = DEFAULT_WAKE_PENALTY

    def __post_init__(self) -> None:
        if not (math.isfinite(self.price_per_hour) and self.price_per_hour > 0):
            raise InvalidInput("price: must be a positive number (per container-hour)")
        if not (math.isfinite(self.wake_penalty) and self.wake_penalty >= 0):
            raise InvalidInput("wake penalty: must be a non-negative number")

    @property
    def per_second(self) -> float:
        return self.price_per_hour / 3600.0

    @property
    def break_even(self) -> float:
        """Seconds of running that cost as much as one cold wake."""
        return self.wake_penalty / self.per_second

    def cost(self, running_seconds: float, cold_wakes: int) -> float:
        return self.per_second * running_seconds + self.wake_penalty * cold_wakes

    def to_dict(self) -> dict[str, float]:
        return {
            "price_per_hour": self.price_per_hour,
            "price_per_second": self.per_second,
            "wake_penalty": self.wake_penalty,
            "break_even_seconds": round(self.break_even, 3),
        }


@dataclass(frozen=True, slots=True)
class WakeLatency:
    """How long a cold wake makes the user wait: ``fixed:S``, ``uniform:LO,HI`` or
    ``lognormal:MEDIAN,P95`` (seconds). Default ``lognormal:3,12``: a small container on a warm
    host usually starts in a few seconds, with a tail when images or hosts are cold."""

    kind: str = "lognormal"
    a: float = 3.0
    b: float = 12.0

    @classmethod
    def parse(cls, text: str) -> WakeLatency:
        raw = text.strip().lower()
        kind, _, rest = raw.partition(":")
        if not rest:
            return cls("fixed", parse_duration(kind, name="wake latency"), 0.0)
        try:
            values = [parse_duration(v, name="wake latency") for v in rest.split(",")]
        except InvalidInput:
            values = []
        if kind == "fixed" and len(values) == 1:
            return cls("fixed", values[0], 0.0)
        if kind == "uniform" and len(values) == 2 and values[0] <= values[1]:
            return cls("uniform", values[0], values[1])
        if kind == "lognormal" and len(values) == 2 and 0 < values[0] <= values[1]:
            return cls("lognormal", values[0], values[1])
        raise InvalidInput(
            f"wake latency {text!r}: use fixed:S, uniform:LO,HI or lognormal:MEDIAN,P95 (seconds)"
        )

    def sample(self, rng: random.Random) -> float:
        if self.kind == "fixed":
            return self.a
        if self.kind == "uniform":
            return rng.uniform(self.a, self.b)
        mu = math.log(self.a)
        sigma = (math.log(self.b) - mu) / 1.6448536269514722 if self.b > self.a else 0.0
        return rng.lognormvariate(mu, sigma)

    def describe(self) -> str:
        if self.kind == "fixed":
            return f"fixed:{self.a:g}"
        return f"{self.kind}:{self.a:g},{self.b:g}"


@dataclass(frozen=True, slots=True)
class PolicySpec:
    name: str
    settings: PolicySettings
    check_every: float | None = None
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.name,
            "description": self.description,
            "settings": self.settings.to_dict(),
            "check_every": self.check_every,
        }


FIXED_MINUTES = (5, 10, 15, 30, 60)
#: What ``--policy all`` runs, in this order.
STANDARD = (
    *(f"fixed-{m}m" for m in FIXED_MINUTES),
    "aggressive",
    "balanced",
    "conservative",
    "option1",
    "option2",
    "break-even",
    "randomized",
    "adaptive",
)


def _fixed(seconds: float, name: str, description: str) -> PolicySpec:
    base = PRESETS["balanced"]
    settings = PolicySettings(
        **{
            **base.to_dict(),
            "sleep_after": seconds,
            "warn_before": min(base.warn_before, seconds / 2),
        }
    )
    return PolicySpec(name, settings, None, description)


def resolve(
    name: str,
    prices: Prices,
    *,
    adaptive: dict[str, Any] | None = None,
    catalog: dict[str, PolicySettings] | None = None,
) -> PolicySpec:
    """A policy by name: a baseline, ``fixed-<duration>``, or one of ``catalog`` (the
    ``[policies.NAME]`` of a dormant.toml). ``adaptive`` overrides the adaptive settings."""
    b = prices.break_even
    key = name.strip()
    if key in PRESETS:
        s = PRESETS[key]
        return PolicySpec(
            key,
            s,
            None,
            f"preset: sleep after {format_duration(s.sleep_after)}, "
            f"delete after {format_duration(s.delete_after)} asleep",
        )
    match = re.fullmatch(r"fixed-(.+)", key)
    if match:
        seconds = parse_duration(match.group(1), name=f"policy {key}")
        if seconds <= 0:
            raise InvalidInput(f"policy {key}: the timeout must be positive")
        return _fixed(seconds, key, f"sleep after {format_duration(seconds)} without activity")
    if key == "option1":
        s = PolicySettings(sleep_after=1800, delete_after=0, warn_before=60)
        return PolicySpec(key, s, 300.0, "source 'Option 1': delete after 30m, checked every 5m")
    if key == "option2":
        s = PolicySettings(sleep_after=900, delete_after=86400, warn_before=60)
        return PolicySpec(
            key, s, 300.0, "source 'Option 2': sleep 15m, delete 24h asleep, checked every 5m"
        )
    if key == "break-even":
        return _fixed(b, key, f"deterministic ski rental: sleep after B = {format_duration(b)}")
    if key in ("adaptive", "randomized"):
        learn = {"break_even": b, **(adaptive or {})}
        if key == "randomized":
            learn = {"break_even": b, "mode": "randomized"}
        settings = adaptive_policy(None, AdaptiveSettings(**learn))
        a = settings.adaptive
        if key == "randomized":
            text = f"randomized ski rental: T ~ e^(t/B) on [0, B], B = {format_duration(b)}"
        else:
            lo, hi = a.bounds
            text = (
                f"learned per {a.scope} (trust {a.trust:g}: T in "
                f"[{format_duration(lo)}, {format_duration(hi)}])"
            )
        return PolicySpec(key, settings, None, text)
    if catalog and key in catalog:
        return PolicySpec(key, catalog[key], None, "from the configuration")
    known = ", ".join([*STANDARD, "fixed-<duration>"])
    raise InvalidInput(f"unknown policy {name!r}; known: {known} (or 'all')")


def resolve_all(
    names: list[str],
    prices: Prices,
    *,
    adaptive: dict[str, Any] | None = None,
    catalog: dict[str, PolicySettings] | None = None,
) -> list[PolicySpec]:
    wanted: list[str] = []
    for name in names or ["all"]:
        for part in name.split(","):
            part = part.strip()
            if not part:
                continue
            for n in STANDARD if part == "all" else (part,):
                if n not in wanted:
                    wanted.append(n)
    return [resolve(n, prices, adaptive=adaptive, catalog=catalog) for n in wanted]
