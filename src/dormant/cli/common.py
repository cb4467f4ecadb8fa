"""What every command shares: options, settings, the server connection, errors and output.

Output is for people (tables, sized to their content: nothing cut) unless ``--json`` or
``-o json`` asks for the API's objects, unchanged, for scripts. Errors go to stderr as
``error: <message>`` (exit 1), or in JSON mode as the API's ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, NoReturn

import httpx
import typer

from dormant.clock import SystemClock
from dormant.config import Settings, load_settings
from dormant.errors import DormantError

#: Whether this invocation prints JSON (errors too); reset by the app's callback each run.
JSON_MODE: ContextVar[bool] = ContextVar("dormant_cli_json", default=False)


class Format(StrEnum):
    table = "table"
    json = "json"


ConfigOpt = Annotated[
    str | None,
    typer.Option(
        "--config",
        "-c",
        metavar="PATH",
        help="dormant.toml to read (default: DORMANT_CONFIG, else none: built-in defaults "
        "and DORMANT_* environment variables).",
    ),
]
UrlOpt = Annotated[
    str | None,
    typer.Option(
        "--url",
        metavar="URL",
        help="dormant serve's address, like http://127.0.0.1:8080 (a trailing /v1 is fine). "
        "Default: DORMANT_URL, else the host and port of the settings.",
    ),
]
KeyOpt = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        metavar="KEY",
        help="API key. Default: DORMANT_API_KEY, else dormant-admin.key next to the database.",
    ),
]
OutputOpt = Annotated[
    Format,
    typer.Option(
        "--output",
        "-o",
        metavar="FORMAT",
        help="table (for people) or json (the API's objects, for scripts).",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON: the same as -o json.")]
WaitOpt = Annotated[
    float | None,
    typer.Option(
        "--wait",
        min=0,
        max=120,
        metavar="SECONDS",
        help="Wait up to SECONDS (0-120) for the outcome; exit 1 unless it is the one asked for.",
    ),
]


def json_mode(output: Format, as_json: bool) -> bool:
    """Called first by every command that prints: errors follow the format asked for."""
    wanted = as_json or output is Format.json
    JSON_MODE.set(wanted)
    return wanted


def die(message: str, code: str = "error", exit_code: int = 1) -> NoReturn:
    if JSON_MODE.get():
        error = {"error": {"code": code, "message": message}}
        typer.echo(json.dumps(error), err=True)
    else:
        typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(exit_code)


def settings(config: str | None) -> Settings:
    try:
        return load_settings(config)
    except DormantError as exc:
        die(str(exc), exc.code)


def emit(data: Any) -> None:
    """The API's object as JSON, one document (``| python -m json.tool`` works)."""
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


# --- the server ---------------------------------------------------------------------------------


def open_client(
    url: str | None, api_key: str | None, config: str | None, wait: float | None = None
) -> Any:
    """A :class:`dormant.client.Client` for the server (tests swap this for one on a fake
    transport)."""
    from dormant.client import Client

    current = settings(config)
    address = url or os.environ.get("DORMANT_URL") or f"http://{current.host}:{current.port}"
    key = api_key or os.environ.get("DORMANT_API_KEY")
    if not key:
        path = current.admin_key_file()
        if path.exists():
            key = path.read_text().strip()
    if not key:
        die(
            "no API key: pass --api-key, set DORMANT_API_KEY, or run next to the database "
            "(dormant-admin.key)",
            "no_api_key",
        )
    try:
        return Client(address, key, timeout=30 + (wait or 0))
    except DormantError as exc:
        die(str(exc), exc.code)


@contextmanager
def remote(
    url: str | None, api_key: str | None, config: str | None, wait: float | None = None
) -> Iterator[Any]:
    """The client, with the server's refusals printed as ``error: <message>`` (exit 1)."""
    from dormant.client import ApiError

    client = open_client(url, api_key, config, wait)
    try:
        yield client
    except ApiError as exc:
        die(exc.message, exc.code)
    except httpx.HTTPError as exc:
        die(f"cannot reach dormant at {client.url}: {exc}", "unreachable")
    finally:
        client.close()


# --- tables and times ---------------------------------------------------------------------------


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Columns as wide as their widest cell (nothing cut); the last one is not padded."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]
    for row in [list(header), *rows]:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])]
        typer.echo("  ".join([*cells, row[-1]]).rstrip())


def parse_at(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def ago(value: str | None) -> str:
    """``5m ago``, ``in 2h``, or ``-``."""
    if not value:
        return "-"
    seconds = int((SystemClock().now() - parse_at(value)).total_seconds())
    if seconds < 0:
        return f"in {human(-seconds)}"
    return f"{human(seconds)} ago"


def human(seconds: float) -> str:
    """``2d3h``, ``3h5m``, ``4m``, ``12s``: two units at most."""
    whole = int(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if whole >= size:
            parts.append(f"{whole // size}{unit}")
            whole %= size
            if len(parts) == 2:
                break
        elif parts:
            break
    return "".join(parts) if parts else f"{whole}s"


def kv_pairs(values: list[str] | None, what: str) -> dict[str, str]:
    """``K=V`` options (repeatable) as a dict; a malformed one is refused, naming the option."""
    found: dict[str, str] = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            die(f"{what} {item!r} must look like KEY=VALUE", "invalid")
        found[key.strip()] = value
    return found
