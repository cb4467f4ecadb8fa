"""Policy settings: every number of the policy, validated, in seconds."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from dormant.errors import InvalidInput
from dormant.policy.durations import parse_duration

#: Nothing dormant waits for may be longer than this; larger values are typos, not intentions.
MAX_DURATION = 366 * 86400.0


@dataclass(frozen=True, slots=True)
class PolicySettings:
    sleep_after: float = 15 * 60
    delete_after: float = 24 * 3600
    disconnect_grace: float = 30
    warn_before: float = 60
    max_lifetime: float | None = None
    heartbeat_interval: float = 25
    missed_pongs: int = 3
    wake_on_activity: bool = True
    active_within: float = 2 * 60
    idle_within: float = 10 * 60
    max_keepalive: float = 12 * 3600
    max_busy: float = 6 * 3600

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("missed_pongs", "wake_on_activity"):
                continue
            if value is None:
                if f.name == "max_lifetime":
                    continue
                raise InvalidInput(f"policy.{f.name}: a duration is required")
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise InvalidInput(f"policy.{f.name}: expected a duration, got {value!r}")
            if not math.isfinite(value) or value < 0 or value > MAX_DURATION:
                raise InvalidInput(
                    f"policy.{f.name}: must be between 0 and 366 days, got {value!r} seconds"
                )
        if self.sleep_after <= 0:
            raise InvalidInput("policy.sleep_after: must be greater than zero")
        if self.warn_before >= self.sleep_after:
            raise InvalidInput("policy.warn_before: must be shorter than sleep_after")
        if self.max_lifetime is not None and self.max_lifetime <= 0:
            raise InvalidInput("policy.max_lifetime: must be greater than zero (or unset)")
        if self.heartbeat_interval < 1:
            raise InvalidInput("policy.heartbeat_interval: must be at least 1s")
        if isinstance(self.missed_pongs, bool) or not isinstance(self.missed_pongs, int):
            raise InvalidInput("policy.missed_pongs: expected a whole number")
        if not 1 <= self.missed_pongs <= 100:
            raise InvalidInput("policy.missed_pongs: must be between 1 and 100")
        if not isinstance(self.wake_on_activity, bool):
            raise InvalidInput("policy.wake_on_activity: expected true or false")
        if self.active_within > self.idle_within:
            raise InvalidInput("policy.active_within: must not exceed idle_within")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_overrides(self, overrides: dict[str, Any]) -> PolicySettings:
        """A copy with the given settings changed; durations may be strings like ``"15m"``."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise InvalidInput(
                f"unknown policy setting(s): {', '.join(unknown)}; "
                f"known: {', '.join(sorted(known))}"
            )
        values = self.to_dict()
        for key, raw in overrides.items():
            values[key] = _coerce(key, raw)
        return PolicySettings(**values)


def _coerce(key: str, raw: Any) -> Any:
    if key == "wake_on_activity":
        if isinstance(raw, str) and raw.lower() in (
            "true",
            "1",
            "yes",
            "on",
            "false",
            "0",
            "no",
            "off",
        ):
            return raw.lower() in ("true", "1", "yes", "on")
        return raw
    if key == "missed_pongs":
        if isinstance(raw, str) and raw.strip().isdecimal() and raw.strip().isascii():
            return int(raw)
        return raw
    if key == "max_lifetime" and (raw is None or str(raw).strip().lower() in ("", "off", "none")):
        return None
    return parse_duration(raw, name=f"policy.{key}")
