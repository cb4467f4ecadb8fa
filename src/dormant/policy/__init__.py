"""Pure policy: the rules that turn what users do into decisions. No I/O, no clock."""

from dormant.policy.activity import ActivityTimes, apply_activity, parse_kind
from dormant.policy.decide import decide
from dormant.policy.durations import format_duration, parse_duration
from dormant.policy.levels import level
from dormant.policy.model import (
    Action,
    ActivityKind,
    Category,
    Decision,
    Level,
    SessionView,
    State,
)
from dormant.policy.presets import DEFAULT_PRESET, PRESETS, build_policy, preset
from dormant.policy.settings import PolicySettings

__all__ = [
    "DEFAULT_PRESET",
    "PRESETS",
    "Action",
    "ActivityKind",
    "ActivityTimes",
    "Category",
    "Decision",
    "Level",
    "PolicySettings",
    "SessionView",
    "State",
    "apply_activity",
    "build_policy",
    "decide",
    "format_duration",
    "level",
    "parse_duration",
    "parse_kind",
    "preset",
]
