"""The ``adaptive`` policy: learned idle timeouts (learning-augmented ski rental). Pure.

Every idle gap is a ski-rental problem: keeping the container warm costs ``price`` per second,
putting it to sleep costs one cold wake (``wake_penalty``) if the user comes back. Their ratio is
the **break-even** time ``B = wake_penalty / price``: a gap longer than ``B`` is cheaper asleep.
Sleeping after exactly ``B`` is the classic 2-competitive rule; knowing the gaps does better.

This module learns each user's idle-gap distribution online and picks the timeout that minimises
the expected cost under it, the way the hybrid histogram policy of Shahrad et al. (USENIX ATC
2020) keeps a histogram of idle times per application:

- **Histogram.** Gaps longer than a minute go into log-spaced bins ``(E[i], E[i+1]]`` holding a
  weight and the weighted sum of the gaps (so the expected cost at every bin edge is exact). Old
  observations decay with a half-life counted in observations, so the model follows changes.
- **Expected cost** of a timeout ``T`` (in container-seconds): gaps ``<= T`` cost their length,
  longer gaps cost ``T + B``. The chosen ``T`` is the bin edge that minimises it.
- **Thin data.** A user's histogram is blended with ``prior_weight`` pseudo-observations drawn
  from the shared (template-wide) histogram, so a new user starts from what the population does;
  with no data at all the policy's own ``sleep_after`` is used.
- **Trust.** The learned ``T`` is clamped to ``[(1 - trust) B, B / (1 - trust)]``, which bounds the
  worst case whatever the data says: at most ``1 + 1 / (1 - trust)`` times the offline optimum on
  any gap (learning-augmented ski rental, Purohit, Svitkina and Kumar, NeurIPS 2018). ``trust=0``
  is the break-even rule.

The same machinery offers ``mode="randomized"``: the randomized ski-rental rule (timeout drawn
with density ``e^(t/B) / (B (e - 1))`` on ``[0, B]``, ``e/(e-1)``-competitive in expectation), with
the randomness derived from a hash of the session and the start of the idle period, so that
``decide`` stays a pure function of its inputs.

Nothing here reads a clock or does I/O: the engine keeps the models in memory, feeds gaps to
:func:`learn`, persists :meth:`GapModel.to_json` in the store, and asks :func:`effective_policy`
for the settings to hand to ``decide``.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime
from typing import Any

from dormant.errors import InvalidInput
from dormant.policy.durations import parse_duration
from dormant.policy.model import SessionView
from dormant.policy.presets import PRESETS
from dormant.policy.settings import MAX_DURATION, PolicySettings

#: The name under which the adaptive policy is offered (templates: ``policy = "adaptive"``).
ADAPTIVE_PRESET = "adaptive"

#: Bin edges in seconds. Bin ``i`` holds gaps in ``(EDGES[i], EDGES[i + 1]]``; the last bin holds
#: everything above a day. Gaps of a minute or less are not recorded: no candidate timeout is
#: shorter, so they cost the same under every choice.
EDGES: tuple[float, ...] = (
    60.0,
    90.0,
    120.0,
    180.0,
    240.0,
    300.0,
    420.0,
    600.0,
    900.0,
    1200.0,
    1800.0,
    2700.0,
    3600.0,
    5400.0,
    7200.0,
    10800.0,
    14400.0,
    21600.0,
    28800.0,
    43200.0,
    86400.0,
)
MIN_GAP = EDGES[0]
_BINS = len(EDGES)

SCOPES = ("user", "template")
MODES = ("learned", "randomized")


@dataclass(frozen=True, slots=True)
class AdaptiveSettings:
    """How the adaptive policy learns. Durations in seconds."""

    #: Whose gaps train the model that decides: each ``user``'s own (blended with the template's
    #: while thin), or one model per ``template``.
    scope: str = "user"
    #: ``learned`` (histogram) or ``randomized`` (randomized ski rental, no learning).
    mode: str = "learned"
    #: The break-even time: a cold wake costs as much as this many seconds of a running container.
    break_even: float = 600.0
    #: How far the learned timeout may stray from ``break_even`` (0: never; 0.9: within 10x).
    trust: float = 0.9
    #: Observations after which an old observation weighs half as much.
    half_life: float = 300.0
    #: Pseudo-observations of the shared model mixed into a user's model.
    prior_weight: float = 20.0

    def __post_init__(self) -> None:
        if self.scope not in SCOPES:
            raise InvalidInput(f"policy.scope: must be one of {', '.join(SCOPES)}")
        if self.mode not in MODES:
            raise InvalidInput(f"policy.mode: must be one of {', '.join(MODES)}")
        for name in ("break_even", "trust", "half_life", "prior_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidInput(f"policy.{name}: expected a number, got {value!r}")
            if not math.isfinite(value):
                raise InvalidInput(f"policy.{name}: must be finite")
        if not 1 <= self.break_even <= MAX_DURATION:
            raise InvalidInput("policy.break_even: must be between 1s and 366 days")
        if not 0 <= self.trust < 1:
            raise InvalidInput("policy.trust: must be at least 0 and below 1")
        if self.half_life < 1:
            raise InvalidInput("policy.half_life: must be at least 1 observation")
        if self.prior_weight < 0:
            raise InvalidInput("policy.prior_weight: must not be negative")

    @property
    def bounds(self) -> tuple[float, float]:
        """``(lo, hi)``: the learned timeout always lies within these."""
        lo = self.break_even - self.break_even * self.trust  # exact for round numbers
        return lo, min(self.break_even / (1.0 - self.trust), MAX_DURATION)

    def competitive_bound(self) -> float:
        """Worst-case cost ratio to the offline optimum on any single idle gap."""
        return 1.0 + 1.0 / (1.0 - self.trust)


_ADAPTIVE_FIELDS = {f.name for f in fields(AdaptiveSettings)}
_BASE_FIELDS = {f.name for f in fields(PolicySettings)}


def _adaptive_from(values: Mapping[str, Any]) -> AdaptiveSettings:
    data = dict(values)
    unknown = sorted(set(data) - _ADAPTIVE_FIELDS)
    if unknown:
        raise InvalidInput(f"unknown adaptive setting(s): {', '.join(unknown)}")
    for name in ("break_even",):
        if name in data:
            data[name] = parse_duration(data[name], name=f"policy.{name}")
    for name in ("trust", "half_life", "prior_weight"):
        if isinstance(data.get(name), str):
            try:
                data[name] = float(data[name])
            except ValueError:
                raise InvalidInput(f"policy.{name}: expected a number") from None
    return AdaptiveSettings(**data)


@dataclass(frozen=True, slots=True)
class AdaptivePolicy(PolicySettings):
    """Policy settings whose ``sleep_after`` is learned; ``sleep_after`` itself is the timeout
    used until there is any data. ``to_dict()`` nests the learning settings under ``adaptive``,
    which is how a session's stored policy says it is adaptive."""

    adaptive: AdaptiveSettings = field(default_factory=AdaptiveSettings)

    def __post_init__(self) -> None:
        self.base()  # validates the common settings
        if not isinstance(self.adaptive, AdaptiveSettings):
            raise InvalidInput("policy.adaptive: expected adaptive settings")

    def base(self) -> PolicySettings:
        return PolicySettings(**{name: getattr(self, name) for name in _BASE_FIELDS})

    def with_overrides(self, overrides: dict[str, Any]) -> AdaptivePolicy:
        """Common settings and adaptive ones (``scope``, ``mode``, ``break_even``, ``trust``,
        ``half_life``, ``prior_weight``) side by side, as in ``[policies.NAME]``."""
        nested = overrides.get("adaptive")
        flat = {k: v for k, v in overrides.items() if k != "adaptive"}
        learn = {k: flat.pop(k) for k in list(flat) if k in _ADAPTIVE_FIELDS}
        if isinstance(nested, Mapping):
            learn = {**nested, **learn}
        elif nested is not None:
            raise InvalidInput("policy.adaptive: expected a table of adaptive settings")
        base = self.base().with_overrides(flat) if flat else self.base()
        current = asdict(self.adaptive)
        return adaptive_policy(base, _adaptive_from({**current, **learn}))


def adaptive_policy(
    base: PolicySettings | None = None, settings: AdaptiveSettings | None = None
) -> AdaptivePolicy:
    """The ``adaptive`` preset: ``balanced`` for everything but the learned ``sleep_after``."""
    start = base if base is not None else PRESETS["balanced"]
    if isinstance(start, AdaptivePolicy):
        start = start.base()
    return AdaptivePolicy(**start.to_dict(), adaptive=settings or AdaptiveSettings())


def build_adaptive(overrides: Mapping[str, Any] | None = None) -> AdaptivePolicy:
    """``[policies.NAME] preset = "adaptive"`` plus overrides."""
    policy = adaptive_policy()
    return policy.with_overrides(dict(overrides)) if overrides else policy


# --- the model -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GapModel:
    """A decaying histogram of idle gaps over :data:`EDGES`."""

    weights: tuple[float, ...] = (0.0,) * _BINS
    sums: tuple[float, ...] = (0.0,) * _BINS
    observations: int = 0

    @property
    def weight(self) -> float:
        return sum(self.weights)

    def to_json(self) -> dict[str, Any]:
        return {
            "edges": list(EDGES),
            "weights": list(self.weights),
            "sums": list(self.sums),
            "observations": self.observations,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> GapModel:
        """A model stored by this or an older version (different edges start afresh)."""
        if list(data.get("edges", [])) != list(EDGES):
            return cls()
        weights = tuple(float(w) for w in data["weights"])
        sums = tuple(float(s) for s in data["sums"])
        if len(weights) != _BINS or len(sums) != _BINS:
            return cls()
        return cls(weights, sums, int(data.get("observations", 0)))


def _bin(gap: float) -> int:
    """Index of the bin holding ``gap`` (> MIN_GAP): ``EDGES[i] < gap <= EDGES[i + 1]``."""
    lo, hi = 0, _BINS - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if EDGES[mid] < gap:
            lo = mid
        else:
            hi = mid - 1
    return lo


def learn(model: GapModel | None, gap: float, settings: AdaptiveSettings) -> GapModel:
    """The model after observing one idle gap of ``gap`` seconds (pure)."""
    model = model or GapModel()
    if not gap > MIN_GAP or not math.isfinite(gap):
        return model
    decay = 0.5 ** (1.0 / settings.half_life)
    i = _bin(gap)
    weights = [w * decay for w in model.weights]
    sums = [s * decay for s in model.sums]
    weights[i] += 1.0
    sums[i] += gap
    return GapModel(tuple(weights), tuple(sums), model.observations + 1)


def expected_costs(model: GapModel, break_even: float) -> list[float]:
    """Cost (container-seconds, weighted) of timeout ``EDGES[k]`` for every ``k``: recorded gaps
    up to the edge run to their end, longer ones run ``EDGES[k]`` and pay a cold wake."""
    costs = []
    below = 0.0
    above = model.weight
    for k, edge in enumerate(EDGES):
        costs.append(below + above * (edge + break_even))
        if k < _BINS - 1:  # bin k's gaps (EDGES[k], EDGES[k+1]] are warm from EDGES[k+1] on
            below += model.sums[k]
            # no negative rounding residue once every gap is below: it would make longer
            # timeouts look (very slightly) cheaper than shorter ones that cost the same
            above = max(0.0, above - model.weights[k]) if model.weights[k] else above
    return costs


def choose_timeout(
    own: GapModel | None,
    shared: GapModel | None,
    settings: AdaptiveSettings,
    fallback: float,
) -> float:
    """The timeout minimising the expected cost under ``own`` blended with ``prior_weight``
    pseudo-observations of ``shared``; ``fallback`` with no data; always within the bounds.
    The expected cost is linear in the histogram: the blend is a weighted sum of the costs."""
    lo, hi = settings.bounds
    b = settings.break_even
    costs: list[float] | None = None
    if own is not None and own.weight > 0:
        costs = list(_costs(own, b))
    if shared is not None and settings.prior_weight > 0:
        total = shared.weight
        if total > 0:
            scale = settings.prior_weight / total
            prior = _costs(shared, b)
            costs = (
                [scale * x for x in prior]
                if costs is None
                else [c + scale * x for c, x in zip(costs, prior, strict=True)]
            )
    if costs is None:
        return min(max(fallback, lo), hi)
    least = min(costs)
    # the shortest among (numerically) equal costs: beyond the longest gap seen, every timeout
    # costs the same under the model, and the shortest is the one that loses least to the
    # long gaps not seen yet
    best = next(k for k, c in enumerate(costs) if c <= least + 1e-9 * max(1.0, abs(least)))
    return min(max(EDGES[best], lo), hi)


@functools.lru_cache(maxsize=8192)
def _costs(model: GapModel, break_even: float) -> tuple[float, ...]:
    return tuple(expected_costs(model, break_even))


def randomized_timeout(break_even: float, key: str) -> float:
    """Randomized ski rental: ``T = B ln(1 + u (e - 1))`` with ``u`` uniform from ``key``."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    u = int.from_bytes(digest, "big") / 2.0**64
    return max(1.0, break_even * math.log1p(u * (math.e - 1.0)))


# --- what the engine uses --------------------------------------------------------------------


def adaptive_settings_of(policy: Mapping[str, Any]) -> AdaptiveSettings | None:
    """The learning settings of a stored policy, or ``None`` for a fixed policy."""
    raw = policy.get("adaptive")
    if raw is None:
        return None
    try:
        return _cached_settings(tuple(sorted(raw.items())))
    except TypeError:  # unhashable values: not from to_dict(); validate the slow way
        return _adaptive_from(raw)


# Decisions ask for the same settings and timeouts over and over (every ``decide`` of every
# adaptive session); they are pure functions of immutable values, so they are remembered.
@functools.lru_cache(maxsize=256)
def _cached_settings(items: tuple[tuple[str, Any], ...]) -> AdaptiveSettings:
    return _adaptive_from(dict(items))


@functools.lru_cache(maxsize=1024)
def _cached_base(items: tuple[tuple[str, Any], ...]) -> PolicySettings:
    return PolicySettings(**dict(items))


@functools.lru_cache(maxsize=4096)
def _cached_timeout(
    own: GapModel | None, shared: GapModel | None, settings: AdaptiveSettings, fallback: float
) -> float:
    return choose_timeout(own, shared, settings, fallback)


@functools.lru_cache(maxsize=4096)
def _with_timeout(base: PolicySettings, timeout: float) -> PolicySettings:
    return replace(base, sleep_after=timeout, warn_before=min(base.warn_before, timeout / 2))


def model_keys(
    settings: AdaptiveSettings, tenant: str, user_id: str, template: str
) -> tuple[str, str | None]:
    """``(own, shared)`` model keys: the model that learns and decides, and its prior."""
    shared = f"template:{tenant}/{template}"
    if settings.scope == "template":
        return shared, None
    return f"user:{tenant}/{user_id}", shared


@dataclass(frozen=True, slots=True)
class Learner:
    """What the engine remembers of one adaptive session to learn from it: its settings, its
    model keys, its fallback timeout and its last meaningful activity (where a gap starts)."""

    settings: AdaptiveSettings
    keys: tuple[str, str | None]
    base: PolicySettings
    last: datetime
    #: The timeout chosen after the last gap it learned from (``inf``: none yet).
    timeout: float = math.inf

    @property
    def fallback(self) -> float:
        return self.base.sleep_after


def learner_of(
    policy: Mapping[str, Any], tenant: str, user_id: str, template: str, last: datetime
) -> Learner | None:
    """A learner for a session with this stored policy, or ``None`` if it is not adaptive."""
    settings = adaptive_settings_of(policy)
    if settings is None:
        return None
    base = _base_of(policy)
    return Learner(settings, model_keys(settings, tenant, user_id, template), base, last)


def timeout_of(learner: Learner, models: Callable[[str], GapModel | None]) -> float:
    """The learned timeout for this learner's session under the current models."""
    own, shared = learner.keys
    return _cached_timeout(
        models(own), models(shared) if shared else None, learner.settings, learner.fallback
    )


def observe(
    learner: Learner, at: datetime, models: Mapping[str, GapModel]
) -> tuple[Learner, dict[str, GapModel], bool]:
    """Meaningful activity at ``at``: the learner moved on, the models that learned from the
    gap that ended (none if it was a minute or less, or the policy does not learn), and whether
    the session's timeout got shorter than after the previous gap (then its deadline must be
    decided again now; a longer one is found when the old deadline fires)."""
    if at <= learner.last:
        return learner, {}, False
    gap = (at - learner.last).total_seconds()
    if learner.settings.mode != "learned" or not gap > MIN_GAP:
        return Learner(learner.settings, learner.keys, learner.base, at, learner.timeout), {}, False
    own, shared = learner.keys
    changed = {own: learn(models.get(own), gap, learner.settings)}
    if shared is not None:
        changed[shared] = learn(models.get(shared), gap, learner.settings)
    prior = changed[shared] if shared is not None else None
    after = _cached_timeout(changed[own], prior, learner.settings, learner.fallback)
    moved = Learner(learner.settings, learner.keys, learner.base, at, after)
    return moved, changed, after < learner.timeout


def _idle_since(session: SessionView) -> datetime:
    last = session.last_activity_at or session.created_at
    return max(last, session.state_since)


def _base_of(policy: Mapping[str, Any]) -> PolicySettings:
    items = tuple(sorted((k, v) for k, v in policy.items() if k != "adaptive"))
    try:
        return _cached_base(items)
    except TypeError:
        return PolicySettings(**dict(items))


def effective_policy(
    policy: Mapping[str, Any],
    session: SessionView,
    models: Callable[[str], GapModel | None],
    *,
    tenant: str,
    user_id: str,
    template: str,
    learner: Learner | None = None,
) -> PolicySettings:
    """The settings ``decide`` gets for this session: the stored ones, with ``sleep_after``
    learned (or drawn, for ``randomized``) when the stored policy is adaptive. ``learner``, the
    session's own (made from the same policy), saves parsing the policy again."""
    if learner is not None:
        settings: AdaptiveSettings | None = learner.settings
        base = learner.base
    else:
        settings = adaptive_settings_of(policy)
        base = _base_of(policy)
    if settings is None:
        return base
    if settings.mode == "randomized":
        anchor = _idle_since(session).isoformat()
        timeout = randomized_timeout(settings.break_even, f"{tenant}/{user_id}/{anchor}")
    else:
        keys = learner.keys if learner else model_keys(settings, tenant, user_id, template)
        own, shared = keys
        timeout = _cached_timeout(
            models(own), models(shared) if shared else None, settings, base.sleep_after
        )
    return _with_timeout(base, max(1.0, min(timeout, MAX_DURATION)))
