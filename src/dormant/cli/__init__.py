"""``dormant``: serve, keys, sessions, templates, policies, stats, config, reconcile, migrate.

Help is plain text (``rich_markup_mode=None``): rich markup swallowed ``[policies.NAME]`` in
help texts, and every option carries its own metavar instead of a type tag.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

import dormant
from dormant.cli import actions, remove  # noqa: F401  (they add commands to `sessions`)
from dormant.cli.catalog import register as register_catalog
from dormant.cli.common import JSON_MODE, Format, JsonOpt, OutputOpt, emit, json_mode
from dormant.cli.config_show import config_app
from dormant.cli.local import keys_app, migrate, reconcile, serve, volumes_app
from dormant.cli.sessions import sessions_app
from dormant.simulate.cli import simulate_app


class _PlainHelp(TyperGroup):
    """The root group: every value a command takes shows a name in its help (``--price
    PRICE``), never typer's type tags (``<float>``, ``<list[str]>``), and command lists show
    whole summaries, also in commands that did not see to it themselves (``simulate``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _name_values(self)


def _no_type_tag(ctx: Any) -> None:
    return None


def _name_values(command: Any) -> None:
    # typer vendors its own click: its classes are not click's, so duck typing
    for param in command.params:
        flag = getattr(param, "is_flag", False) or getattr(param, "count", False)
        if param.metavar is None and not flag and param.name:
            param.metavar = param.name.upper()
        if getattr(param, "param_type_name", "") == "argument":
            # typer lists an argument as "NAME <str>" even with a metavar (options drop it)
            param.display_type_rich = _no_type_tag
    if not command.short_help and command.help:
        # click cuts a summary at ~45 characters with "..."; a paragraph is wrapped instead
        command.short_help = " ".join(command.help.split("\n\n")[0].split())
    for sub in getattr(command, "commands", {}).values():
        _name_values(sub)


app = typer.Typer(
    name="dormant",
    cls=_PlainHelp,
    no_args_is_help=True,
    rich_markup_mode=None,
    help="Runs per-user containers only while people use them: sleeps idle ones, wakes them "
    "on demand. Server commands find the server at DORMANT_URL and the key in "
    "DORMANT_API_KEY (or dormant-admin.key next to the database).",
)


def _version(show: bool) -> None:
    if show:
        typer.echo(f"dormant {dormant.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version",
            is_eager=True,
            callback=_version,
            help="Print dormant's version and exit.",
        ),
    ] = False,
) -> None:
    JSON_MODE.set(False)  # each run starts in text mode; commands with --json switch it


@app.command()
def version(output: OutputOpt = Format.table, as_json: JsonOpt = False) -> None:
    """Print dormant's version."""
    if json_mode(output, as_json):
        emit({"version": dormant.__version__})
    else:
        typer.echo(dormant.__version__)


app.command()(serve)
app.command()(migrate)
app.command()(reconcile)
app.add_typer(keys_app, name="keys")
app.add_typer(sessions_app, name="sessions")
register_catalog(app)
app.add_typer(config_app, name="config")
app.add_typer(volumes_app, name="volumes")
app.add_typer(  # dormant simulate TRACE | generate
    simulate_app, name="simulate", short_help="Replay a trace under each policy; compare costs."
)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


__all__ = ["app", "main"]
