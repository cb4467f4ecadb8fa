"""The named starting points for a policy (numbers from DESIGN.md)."""

from __future__ import annotations

from typing import Any

from dormant.errors import InvalidInput
from dormant.policy.settings import PolicySettings

PRESETS: dict[str, PolicySettings] = {
    "aggressive": PolicySettings(sleep_after=5 * 60, delete_after=3600),
    "balanced": PolicySettings(sleep_after=15 * 60, delete_after=24 * 3600),
    "conservative": PolicySettings(sleep_after=30 * 60, delete_after=7 * 86400),
}

DEFAULT_PRESET = "balanced"


def preset(name: str) -> PolicySettings:
    try:
        return PRESETS[name]
    except KeyError:
        raise InvalidInput(
            f"unknown policy preset {name!r}; choose one of: {', '.join(PRESETS)}"
        ) from None


def build_policy(
    base: str = DEFAULT_PRESET, overrides: dict[str, Any] | None = None
) -> PolicySettings:
    """A preset with overrides applied (the shape of ``[policies.NAME]`` in dormant.toml)."""
    settings = preset(base)
    return settings.with_overrides(overrides) if overrides else settings
