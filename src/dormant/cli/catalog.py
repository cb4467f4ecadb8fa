"""What the server offers and how it is doing: ``dormant templates``, ``dormant policies``,
``dormant stats``."""

from __future__ import annotations

from typing import Any

import typer

from dormant.cli.actions import NOT_DURATIONS
from dormant.cli.common import (
    ConfigOpt,
    Format,
    JsonOpt,
    KeyOpt,
    OutputOpt,
    UrlOpt,
    emit,
    human,
    json_mode,
    remote,
    table,
)


def _short(name: str, value: Any) -> str:
    """A value in a narrow column: durations as ``15m``, ``1d``; ``-`` for none."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float) and name not in NOT_DURATIONS:
        return human(value) if value >= 1 else f"{value:g}s"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value) or "-"
    if isinstance(value, dict):
        return ",".join(f"{k}={_short(k, v)}" for k, v in value.items()) or "-"
    return str(value)


def templates(
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    config: ConfigOpt = None,
    output: OutputOpt = Format.table,
    as_json: JsonOpt = False,
) -> None:
    """List the templates sessions are made from.

    GET /v1/templates: runtime, image or command,
    port, policy, whether the proxy needs no sign-in (public), wake timeout and the env
    variables a create may set."""
    wanted = json_mode(output, as_json)
    with remote(url, api_key, config) as dormant:
        items = dormant.templates()
    if wanted:
        emit({"items": items})
        return
    rows = []
    for t in items:
        command = t.get("command")
        what = t.get("image") or (" ".join(command) if command else "-")
        rows.append(
            [
                t["name"],
                str(t.get("runtime") or "-"),
                what,
                "-" if t.get("port") is None else str(t["port"]),
                str(t.get("policy") or "-"),
                _short("public", t.get("public")),
                _short("wake_timeout", t.get("wake_timeout")),
                _short("env_allow", t.get("env_allow")),
            ]
        )
    header = ["NAME", "RUNTIME", "IMAGE OR COMMAND", "PORT", "POLICY", "PUBLIC", "WAKE TIMEOUT"]
    table([*header, "ENV ALLOWED"], rows)


def policies(
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    config: ConfigOpt = None,
    output: OutputOpt = Format.table,
    as_json: JsonOpt = False,
) -> None:
    """List the policies and their resolved values.

    GET /v1/policies: one column per policy, one row per setting
    (durations as 15m, 1d; in seconds in JSON)."""
    wanted = json_mode(output, as_json)
    with remote(url, api_key, config) as dormant:
        items = dormant.policies()
    if wanted:
        emit({"items": items})
        return
    flat = [_flatten(p["values"]) for p in items]
    settings: list[str] = []
    for values in flat:
        settings += [k for k in values if k not in settings]
    table(
        ["SETTING", *(p["name"] for p in items)],
        [[s, *(_short(s.rpartition(".")[2], v.get(s)) for v in flat)] for s in settings],
    )


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings (``adaptive``'s) as rows of their own: ``adaptive.trust``."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def stats(
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    config: ConfigOpt = None,
    output: OutputOpt = Format.table,
    as_json: JsonOpt = False,
) -> None:
    """Show counts of sessions and transitions.

    GET /v1/stats: sessions by state and by level, transitions by reason, and
    orphan containers removed."""
    wanted = json_mode(output, as_json)
    with remote(url, api_key, config) as dormant:
        data = dormant.stats()
    if wanted:
        emit(data)
        return
    rows = [["state", k, str(v)] for k, v in data.get("sessions_by_state", {}).items()]
    rows += [["level", k, str(v)] for k, v in data.get("sessions_by_level", {}).items()]
    for target, reasons in data.get("transitions_by_reason", {}).items():
        rows += [["transition", f"{target}: {r}", str(n)] for r, n in reasons.items()]
    rows.append(["orphans", "removed", str(data.get("orphans_removed", 0))])
    known = {"sessions_by_state", "sessions_by_level", "transitions_by_reason", "orphans_removed"}
    for key, value in data.items():  # what a newer server adds is shown, not dropped
        if key not in known and not isinstance(value, dict | list):
            rows.append([key, "-", str(value)])
    table(["COUNT OF", "WHICH", "N"], rows)


def register(app: typer.Typer) -> None:
    app.command("templates")(templates)
    app.command("policies")(policies)
    app.command("stats")(stats)
