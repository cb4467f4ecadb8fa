"""Templates (how a session's container is made) and the catalog of templates and policies."""

from __future__ import annotations

from dataclasses import dataclass, field

from dormant.errors import InvalidInput
from dormant.policy import DEFAULT_PRESET, PRESETS, PolicySettings
from dormant.runtimes import Resources


@dataclass(frozen=True, slots=True)
class Template:
    name: str
    runtime: str = "process"
    command: list[str] | None = None
    image: str | None = None
    port: int | None = None  # the port inside the container; the process runtime uses the host port
    env: dict[str, str] = field(default_factory=dict)
    resources: Resources = field(default_factory=Resources)
    policy: str = DEFAULT_PRESET
    start_timeout: float = 30.0
    stop_timeout: float = 5.0
    # Isolation of container runtimes (see ContainerSpec).
    read_only: bool = False
    tmpfs: dict[str, str] = field(default_factory=dict)
    cap_drop: tuple[str, ...] = ()
    no_new_privileges: bool = False
    network_mode: str | None = None


@dataclass(frozen=True, slots=True)
class Catalog:
    templates: dict[str, Template]
    policies: dict[str, PolicySettings]
    default_template: str = "default"

    def template(self, name: str | None) -> Template:
        key = name or self.default_template
        try:
            return self.templates[key]
        except KeyError:
            raise InvalidInput(
                f"unknown template {key!r}; available: {', '.join(sorted(self.templates))}"
            ) from None

    def policy(self, name: str) -> PolicySettings:
        try:
            return self.policies[name]
        except KeyError:
            raise InvalidInput(
                f"unknown policy {name!r}; available: {', '.join(sorted(self.policies))}"
            ) from None


def default_catalog(policy_overrides: PolicySettings | None = None) -> Catalog:
    """One ``default`` template (a small HTTP server as a local process) and the presets."""
    policies = dict(PRESETS)
    if policy_overrides is not None:
        policies[DEFAULT_PRESET] = policy_overrides
    return Catalog(templates={"default": Template(name="default")}, policies=policies)
