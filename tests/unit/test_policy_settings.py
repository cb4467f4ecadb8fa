"""Policy settings: validation, overrides, presets, and durations as people write them."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest

from dormant.errors import InvalidInput, PermanentError
from dormant.policy import (
    DEFAULT_PRESET,
    PRESETS,
    PolicySettings,
    build_policy,
    format_duration,
    parse_duration,
    preset,
)
from dormant.policy.settings import MAX_DURATION

MINUTE = 60.0
HOUR = 3600.0
DAY = 86400.0

# --- presets ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "sleep_after", "delete_after", "texts"),
    [
        ("aggressive", 5 * MINUTE, 1 * HOUR, ("5m", "1h")),
        ("balanced", 15 * MINUTE, 24 * HOUR, ("15m", "24h")),
        ("conservative", 30 * MINUTE, 7 * DAY, ("30m", "7d")),
    ],
)
def test_preset_numbers(
    name: str, sleep_after: float, delete_after: float, texts: tuple[str, str]
) -> None:
    p = preset(name)
    assert p is PRESETS[name]
    assert p.sleep_after == sleep_after
    assert p.delete_after == delete_after
    assert (format_duration(p.sleep_after), format_duration(p.delete_after)) == texts
    # the shared numbers of DESIGN.md
    assert p.disconnect_grace == 30
    assert p.warn_before == 60
    assert p.max_lifetime is None
    assert p.heartbeat_interval == 25
    assert p.missed_pongs == 3
    assert p.wake_on_activity is True
    assert p.active_within == 2 * MINUTE
    assert p.idle_within == 10 * MINUTE


def test_there_are_exactly_three_presets_and_balanced_is_the_default() -> None:
    assert set(PRESETS) == {"aggressive", "balanced", "conservative"}
    assert DEFAULT_PRESET == "balanced"
    assert PolicySettings() == preset("balanced")
    assert build_policy() == preset("balanced")


def test_unknown_preset_names_the_choices() -> None:
    with pytest.raises(InvalidInput) as info:
        preset("lazy")
    message = str(info.value)
    assert "'lazy'" in message
    for name in PRESETS:
        assert name in message


def test_build_policy_applies_overrides_to_a_preset() -> None:
    p = build_policy("aggressive", {"sleep_after": "10m", "max_lifetime": "8h"})
    assert p.sleep_after == 10 * MINUTE
    assert p.delete_after == 1 * HOUR
    assert p.max_lifetime == 8 * HOUR
    assert preset("aggressive").sleep_after == 5 * MINUTE  # the preset itself is untouched
    assert build_policy("conservative", {}) is preset("conservative")


def test_build_policy_with_unknown_base() -> None:
    with pytest.raises(InvalidInput):
        build_policy("nope", {"sleep_after": 60})


# --- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"sleep_after": 0}, "sleep_after"),
        ({"sleep_after": -1}, "sleep_after"),
        ({"sleep_after": math.inf}, "sleep_after"),
        ({"sleep_after": math.nan}, "sleep_after"),
        ({"sleep_after": MAX_DURATION + 1}, "sleep_after"),
        ({"sleep_after": "15m"}, "sleep_after"),
        ({"sleep_after": True}, "sleep_after"),
        ({"delete_after": -0.001}, "delete_after"),
        ({"delete_after": 400 * DAY}, "delete_after"),
        ({"disconnect_grace": -30}, "disconnect_grace"),
        ({"warn_before": 900}, "warn_before"),
        ({"warn_before": 901}, "warn_before"),
        ({"sleep_after": 60, "warn_before": 60}, "warn_before"),
        ({"max_lifetime": 0}, "max_lifetime"),
        ({"max_lifetime": -5}, "max_lifetime"),
        ({"max_lifetime": 367 * DAY}, "max_lifetime"),
        ({"heartbeat_interval": 0.5}, "heartbeat_interval"),
        ({"missed_pongs": 0}, "missed_pongs"),
        ({"missed_pongs": 101}, "missed_pongs"),
        ({"missed_pongs": 3.0}, "missed_pongs"),
        ({"missed_pongs": True}, "missed_pongs"),
        ({"missed_pongs": "3"}, "missed_pongs"),
        ({"wake_on_activity": "yes"}, "wake_on_activity"),
        ({"wake_on_activity": 1}, "wake_on_activity"),
        ({"active_within": 601}, "active_within"),
        ({"max_keepalive": -1}, "max_keepalive"),
        ({"max_busy": MAX_DURATION * 2}, "max_busy"),
    ],
)
def test_invalid_settings_are_refused(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InvalidInput) as info:
        PolicySettings(**kwargs)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sleep_after": MAX_DURATION},
        {"delete_after": 0},
        {"delete_after": MAX_DURATION},
        {"disconnect_grace": 0},
        {"warn_before": 0},
        {"sleep_after": 61, "warn_before": 60},
        {"max_lifetime": 1},
        {"max_lifetime": MAX_DURATION},
        {"heartbeat_interval": 1},
        {"missed_pongs": 1},
        {"missed_pongs": 100},
        {"wake_on_activity": False},
        {"active_within": 600, "idle_within": 600},
        {"sleep_after": 0.5, "warn_before": 0},
    ],
)
def test_boundary_settings_are_accepted(kwargs: dict[str, Any]) -> None:
    p = PolicySettings(**kwargs)
    for key, value in kwargs.items():
        assert getattr(p, key) == value


def test_invalid_input_is_a_permanent_value_error() -> None:
    with pytest.raises(ValueError) as info:
        PolicySettings(sleep_after=-1)
    assert isinstance(info.value, PermanentError)
    assert info.value.code == "invalid"
    assert info.value.status == 422


def test_settings_are_frozen_and_round_trip_through_a_dict() -> None:
    p = build_policy("conservative", {"max_lifetime": "30d"})
    d = p.to_dict()
    assert d["sleep_after"] == 30 * MINUTE
    assert d["max_lifetime"] == 30 * DAY
    assert PolicySettings(**d) == p
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.sleep_after = 1  # type: ignore[misc]


# --- with_overrides ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "raw", "expected"),
    [
        ("sleep_after", "10m", 10 * MINUTE),
        ("sleep_after", 600, 600.0),
        ("sleep_after", "600", 600.0),
        ("sleep_after", "1h30m", 90 * MINUTE),
        ("delete_after", "7d", 7 * DAY),
        ("delete_after", "2w", 14 * DAY),
        ("delete_after", 0, 0.0),
        ("disconnect_grace", "45s", 45.0),
        ("warn_before", "2m", 120.0),
        ("max_lifetime", "8h", 8 * HOUR),
        ("max_lifetime", 3600, 3600.0),
        ("max_lifetime", None, None),
        ("max_lifetime", "", None),
        ("max_lifetime", "off", None),
        ("max_lifetime", "none", None),
        ("heartbeat_interval", "10s", 10.0),
        ("missed_pongs", 5, 5),
        ("missed_pongs", "5", 5),
        ("missed_pongs", " 7 ", 7),
        ("wake_on_activity", False, False),
        ("wake_on_activity", "off", False),
        ("wake_on_activity", "No", False),
        ("wake_on_activity", "0", False),
        ("wake_on_activity", "ON", True),
        ("wake_on_activity", "yes", True),
        ("wake_on_activity", "true", True),
        ("active_within", "1m", 60.0),
        ("idle_within", "1h", 3600.0),
        ("max_keepalive", "1d", DAY),
        ("max_busy", "366d", MAX_DURATION),
    ],
)
def test_with_overrides_reads_values_as_people_write_them(
    key: str, raw: Any, expected: Any
) -> None:
    base = build_policy("balanced", {"max_lifetime": "1d"})
    p = base.with_overrides({key: raw})
    assert getattr(p, key) == expected
    assert type(getattr(p, key)) is type(expected)
    assert base.max_lifetime == DAY  # a copy; the original is unchanged
    others = {k: v for k, v in p.to_dict().items() if k != key}
    assert others == {k: v for k, v in base.to_dict().items() if k != key}


def test_with_overrides_of_nothing_is_equal() -> None:
    base = preset("aggressive")
    assert base.with_overrides({}) == base


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"sleep_after": -1}, "policy.sleep_after"),
        ({"sleep_after": "-5m"}, "policy.sleep_after"),
        ({"sleep_after": "soon"}, "policy.sleep_after"),
        ({"sleep_after": "400d"}, "policy.sleep_after"),
        ({"sleep_after": "30s"}, "policy.warn_before"),  # shorter than the warning
        ({"sleep_after": None}, "policy.sleep_after"),
        ({"sleep_after": True}, "policy.sleep_after"),
        ({"delete_after": math.inf}, "policy.delete_after"),
        ({"delete_after": math.nan}, "policy.delete_after"),
        ({"max_lifetime": "0"}, "policy.max_lifetime"),
        ({"max_lifetime": "forever"}, "policy.max_lifetime"),
        ({"max_lifetime": "367d"}, "policy.max_lifetime"),
        ({"missed_pongs": "many"}, "policy.missed_pongs"),
        ({"missed_pongs": "0"}, "policy.missed_pongs"),
        ({"missed_pongs": 2.5}, "policy.missed_pongs"),
        ({"wake_on_activity": "maybe"}, "policy.wake_on_activity"),
        ({"wake_on_activity": None}, "policy.wake_on_activity"),
        ({"idle_within": "1m"}, "policy.active_within"),
        ({"heartbeat_interval": 0}, "policy.heartbeat_interval"),
    ],
)
def test_with_overrides_refuses_bad_values(overrides: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InvalidInput) as info:
        preset("balanced").with_overrides(overrides)
    assert fragment in str(info.value)


def test_with_overrides_refuses_unknown_settings_and_lists_the_known_ones() -> None:
    with pytest.raises(InvalidInput) as info:
        preset("balanced").with_overrides({"sleep_afer": "10m", "zzz": 1, "sleep_after": "10m"})
    message = str(info.value)
    assert "sleep_afer, zzz" in message
    assert "known:" in message
    assert "delete_after" in message


def test_several_overrides_are_validated_together() -> None:
    # each alone would be refused by the other default; together they are consistent
    p = preset("balanced").with_overrides({"sleep_after": "30s", "warn_before": "10s"})
    assert (p.sleep_after, p.warn_before) == (30.0, 10.0)


def test_missed_pongs_with_a_non_decimal_digit_string_is_invalid_input() -> None:
    with pytest.raises(InvalidInput):
        preset("balanced").with_overrides({"missed_pongs": "³"})


def test_none_is_only_allowed_for_max_lifetime() -> None:
    with pytest.raises(InvalidInput):
        PolicySettings(delete_after=None)  # type: ignore[arg-type]


# --- durations --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (0, 0.0),
        (90, 90.0),
        (1.5, 1.5),
        ("0", 0.0),
        ("90", 90.0),
        ("2.5", 2.5),
        ("90s", 90.0),
        ("15m", 900.0),
        ("24h", 86400.0),
        ("7d", 604800.0),
        ("1w", 604800.0),
        ("1h30m", 5400.0),
        ("1d12h", 129600.0),
        ("1.5h", 5400.0),
        ("15M", 900.0),
        (" 15 m ", 900.0),
        ("1m 30s", 90.0),
    ],
)
def test_parse_duration(value: object, seconds: float) -> None:
    result = parse_duration(value)
    assert result == seconds
    assert isinstance(result, float)


@pytest.mark.parametrize(
    "value",
    [
        "",
        " ",
        "abc",
        "15x",
        "m",
        "-5",
        "-5m",
        "15m-",
        "1e3",
        "1,5h",
        "inf",
        -1,
        -0.5,
        math.inf,
        math.nan,
        True,
        False,
        None,
        [15],
        {"m": 15},
    ],
)
def test_parse_duration_refuses(value: object) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_duration(value, name="policy.sleep_after")
    assert "policy.sleep_after" in str(info.value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (1, "1s"),
        (30, "30s"),
        (59, "59s"),
        (60, "1m"),
        (90, "1m30s"),
        (300, "5m"),
        (900, "15m"),
        (1800, "30m"),
        (3600, "1h"),
        (3661, "1h1m1s"),
        (5400, "1h30m"),
        (86400, "24h"),
        (90000, "25h"),
        (172800, "2d"),
        (604800, "7d"),
        (216000, "60h"),
        (0.25, "0.25s"),
        (900.0, "15m"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize("text", ["15m", "24h", "7d", "1h30m", "1m30s", "2d", "45s", "25h"])
def test_format_of_parse_is_identity_for_canonical_text(text: str) -> None:
    assert format_duration(parse_duration(text)) == text
