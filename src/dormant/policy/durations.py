"""Durations as people write them: ``90``, ``"90s"``, ``"15m"``, ``"24h"``, ``"1h30m"``."""

from __future__ import annotations

import math
import re

from dormant.errors import InvalidInput

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_duration(value: object, *, name: str = "duration") -> float:
    """Seconds from a number or a duration string; raises InvalidInput for anything else."""
    if isinstance(value, bool):
        raise InvalidInput(f"{name}: expected seconds or a duration like '15m', got {value!r}")
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:
            raise InvalidInput(f"{name}: {str(value)[:20]}... is far too large") from None
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            seconds = float(text)
        elif text and _PART.sub("", text) == "":
            seconds = sum(float(n) * _UNITS[u] for n, u in _PART.findall(text))
        else:
            raise InvalidInput(
                f"{name}: cannot read {value!r} as a duration (try '90s', '15m', '24h')"
            )
    else:
        raise InvalidInput(f"{name}: expected seconds or a duration like '15m', got {value!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidInput(f"{name}: must be a finite, non-negative duration, got {value!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest exact human form: 900 -> '15m', 86400 -> '24h', 90 -> '1m30s'."""
    total = round(seconds)
    if total == 0:
        return "0s" if seconds == 0 else f"{seconds:.3g}s"
    if total % 86400 == 0 and total >= 2 * 86400:
        return f"{total // 86400}d"
    parts = []
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        if total >= size:
            parts.append(f"{total // size}{unit}")
            total %= size
    return "".join(parts)
