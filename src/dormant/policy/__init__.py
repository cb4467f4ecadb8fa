"""Pure policy: the rules that turn what users do into decisions. No I/O, no clock."""

from dormant.policy.activity import ActivityTimes, apply_activity, parse_kind
from dormant.policy.adaptive import (
    ADAPTIVE_PRESET,
    AdaptivePolicy,
    AdaptiveSettings,
    GapModel,
    adaptive_policy,
    build_adaptive,
    effective_policy,
)
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
    "ADAPTIVE_PRESET",
    "DEFAULT_PRESET",
    "PRESETS",
    "Action",
    "ActivityKind",
    "ActivityTimes",
    "AdaptivePolicy",
    "AdaptiveSettings",
    "Category",
    "Decision",
    "GapModel",
    "Level",
    "PolicySettings",
    "SessionView",
    "State",
    "adaptive_policy",
    "apply_activity",
    "build_adaptive",
    "build_policy",
    "decide",
    "effective_policy",
    "format_duration",
    "level",
    "parse_duration",
    "parse_kind",
    "preset",
]
