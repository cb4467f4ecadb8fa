"""``dormant config show``: the effective settings and where each value came from.

The sources follow :func:`dormant.config.load_settings`: a built-in default, the file
(``--config`` or ``DORMANT_CONFIG``), then ``DORMANT_*`` variables over it. Secrets are never
printed in full: the gateway secret shows its length only, passwords in URLs are masked.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import typer
from pydantic import BaseModel

from dormant.cli.common import ConfigOpt, Format, JsonOpt, OutputOpt, emit, json_mode, settings
from dormant.cli.common import table as print_table
from dormant.config import Settings

config_app = typer.Typer(no_args_is_help=True, help="Inspect dormant's configuration.")

#: Values shown only as "set, N characters".
SECRETS = frozenset({"gateway_secret"})
#: Tables of their own, with their own variable prefixes.
_NESTED = {"policy_overrides": "DORMANT_POLICY_", "limits": "DORMANT_LIMITS_"}


def mask(name: str, value: Any) -> Any:
    if value is None:
        return None
    if name in SECRETS:
        return f"(hidden: set, {len(str(value))} characters)"
    if isinstance(value, str) and "://" in value:
        parts = urlsplit(value)
        if parts.password:
            host = parts.netloc.rsplit("@", 1)[1]
            netloc = f"{parts.username or ''}:***@{host}"
            return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def sources(current: Settings, path: str | None, environ: dict[str, str]) -> list[dict[str, Any]]:
    """One item per setting: ``name``, ``value`` (masked), ``source`` and ``env`` (the
    variable that sets it)."""
    data: dict[str, Any] = tomllib.loads(Path(path).read_text()) if path else {}
    in_file = f"file {Path(path).resolve()}" if path else ""

    def source(variable: str, from_file: bool) -> str:
        if variable in environ:
            return f"env {variable}"
        return in_file if from_file else "default"

    items = []
    for name in Settings.model_fields:
        if name in _NESTED or name in ("templates", "policies"):
            continue
        variable = f"DORMANT_{name.upper()}"
        items.append(
            {
                "name": name,
                "value": mask(name, _plain(getattr(current, name))),
                "source": source(variable, name in data),
                "env": variable,
            }
        )
    limits = dict(data.get("limits") or {})
    for name in type(current.limits).model_fields:
        variable = f"DORMANT_LIMITS_{name.upper()}"
        items.append(
            {
                "name": f"limits.{name}",
                "value": _plain(getattr(current.limits, name)),
                "source": source(variable, name in limits),
                "env": variable,
            }
        )
    overrides = dict(data.get("policy_overrides") or {})
    prefixed = {
        k[len("DORMANT_POLICY_") :].lower() for k in environ if k.startswith("DORMANT_POLICY_")
    }
    for name in sorted(set(current.policy_overrides) | prefixed | set(overrides)):
        variable = f"DORMANT_POLICY_{name.upper()}"
        items.append(
            {
                "name": f"policy.{name}",
                "value": current.policy_overrides.get(name),
                "source": source(variable, name in overrides),
                "env": variable,
            }
        )
    for table_name in ("templates", "policies"):
        for name in getattr(current, table_name):
            items.append(
                {
                    "name": f"{table_name}.{name}",
                    "value": _plain(getattr(current, table_name)[name]),
                    "source": in_file,
                    "env": None,
                }
            )
    return items


def _client_items(current: Settings, environ: dict[str, str]) -> list[dict[str, Any]]:
    """What the CLI's server commands use: the server's address and the API key."""
    url = environ.get("DORMANT_URL")
    key = environ.get("DORMANT_API_KEY")
    key_file = current.admin_key_file()
    if key:
        key_value, key_source = f"(hidden: set, {len(key)} characters)", "env DORMANT_API_KEY"
    elif key_file.exists():
        key_value, key_source = "(hidden: read from the file)", f"file {key_file}"
    else:
        key_value, key_source = None, "none: pass --api-key or set DORMANT_API_KEY"
    return [
        {
            "name": "cli.url",
            "value": url or f"http://{current.host}:{current.port}",
            "source": "env DORMANT_URL" if url else "host and port above",
            "env": "DORMANT_URL",
        },
        {"name": "cli.api_key", "value": key_value, "source": key_source, "env": "DORMANT_API_KEY"},
    ]


def _shown(value: Any) -> str:
    import json

    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


@config_app.command("show")
def config_show(
    config: ConfigOpt = None, output: OutputOpt = Format.table, as_json: JsonOpt = False
) -> None:
    """Show the effective settings and where each came from.

    A default, the file (--config or
    DORMANT_CONFIG) or a DORMANT_* variable (which wins over the file). Secrets are never
    shown in full. JSON: {"config_file", "items": [{name, value, source, env}]}."""
    wanted = json_mode(output, as_json)
    current = settings(config)
    environ = dict(os.environ)
    path = config or environ.get("DORMANT_CONFIG") or None
    items = sources(current, path, environ) + _client_items(current, environ)
    if wanted:
        emit({"config_file": str(Path(path).resolve()) if path else None, "items": items})
        return
    typer.echo(f"config file: {Path(path).resolve() if path else 'none'}")
    print_table(
        ["SETTING", "VALUE", "SOURCE"],
        [[i["name"], _shown(i["value"]), i["source"]] for i in items],
    )
