"""``dormant sessions`` calls on one session (activity, keepalive, busy, token, link, events,
policy) and on a user (logout)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

import typer

from dormant.cli.common import (
    ConfigOpt,
    Format,
    JsonOpt,
    KeyOpt,
    OutputOpt,
    UrlOpt,
    die,
    emit,
    human,
    json_mode,
    parse_at,
    remote,
    table,
)
from dormant.cli.sessions import SessionArg, print_timeline, sessions_app
from dormant.clock import SystemClock
from dormant.errors import DormantError
from dormant.policy import ActivityKind, parse_duration


@sessions_app.command("activity")
def sessions_activity(
    session_id: SessionArg,
    kind: Annotated[
        str,
        typer.Argument(
            metavar="KIND",
            help="What the user did: " + ", ".join(k.value for k in ActivityKind) + ".",
        ),
    ] = "api",
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    config: ConfigOpt = None,
    output: OutputOpt = Format.table,
    as_json: JsonOpt = False,
) -> None:
    """Record activity on a session.

    A meaningful kind postpones the sleep (and wakes a sleeping session
    if its policy says so); presence kinds move only last seen."""
    wanted = json_mode(output, as_json)
    with remote(url, api_key, config) as dormant:
        answer = dormant.activity(session_id, kind)
    if wanted:
        emit(answer)
    else:
        typer.echo(f"activity {kind} recorded for {session_id} ({answer['state']})")


def _until(for_: str | None, until: str | None) -> Any:
    if (for_ is None) == (until is None):
        die("give either --for DURATION or --until TIME", "invalid")
    try:
        if for_ is not None:
            return SystemClock().now() + timedelta(seconds=parse_duration(for_, name="--for"))
        at = parse_at(str(until))
    except (DormantError, ValueError) as exc:
        die(str(exc), "invalid")
    if at.tzinfo is None:
        die("--until needs a time zone, like 2030-01-01T12:00:00+00:00 or ...Z", "invalid")
    return at


ForOpt = Annotated[
    str | None,
    typer.Option(
        "--for", metavar="DURATION", help="How long from now: seconds, or like 90m, 2h, 1d."
    ),
]
UntilOpt = Annotated[
    str | None,
    typer.Option(
        "--until", metavar="TIME", help="Until this ISO 8601 time with a zone (…Z or +02:00)."
    ),
]


def _hold(busy: bool) -> Any:
    def command(
        session_id: SessionArg,
        for_: ForOpt = None,
        until: UntilOpt = None,
        url: UrlOpt = None,
        api_key: KeyOpt = None,
        config: ConfigOpt = None,
        output: OutputOpt = Format.table,
        as_json: JsonOpt = False,
    ) -> None:
        wanted = json_mode(output, as_json)
        at = _until(for_, until)
        with remote(url, api_key, config) as dormant:
            session = (dormant.busy if busy else dormant.keepalive)(session_id, at)
        if wanted:
            emit(session)
            return
        field = "busy_until" if busy else "keepalive_until"
        typer.echo(f"{session_id} {'busy' if busy else 'kept alive'} until {session[field]}")

    if busy:
        command.__doc__ = (
            "Mark a session busy until a time.\n\nBackground work: it is not slept for "
            "inactivity before then (at most the policy's max_busy ahead)."
        )
    else:
        command.__doc__ = (
            "Keep a session alive until a time.\n\nIt is not slept for inactivity before then "
            "(at most the policy's max_keepalive ahead)."
        )
    return command


sessions_app.command("keepalive")(_hold(busy=False))
sessions_app.command("busy")(_hold(busy=True))


TtlOpt = Annotated[
    float | None,
    typer.Option(
        "--ttl", min=1, max=86400, metavar="SECONDS", help="Lifetime in seconds (1-86400)."
    ),
]


@sessions_app.command("token")
def sessions_token(
    session_id: SessionArg,
    name: Annotated[
        str | None,
        typer.Option(
            metavar="NAME", help="The participant shown in presence (default: the session's user)."
        ),
    ] = None,
    ttl: TtlOpt = None,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    config: ConfigOpt = None,
    output: OutputOpt = Format.table,
    as_json: JsonOpt = False,
) -> None:
    """Mint a real-time token for a browser.

    The gateway's Socket.IO auth. Prints the token
    alone (its expiry goes to stderr), or JSON {token, expires_at, session_id}."""
    wanted = json_mode(output, as_json)
    with remote(url, api_key, config) as dormant:
        token = dormant.token(session_id, name=name, ttl=ttl)
    if wanted:
        emit(
            {
                "token": token.token,
                "expires_at": token.expires_at.isoformat(),
                "session_id": token.session_id,
            }
        )
        return
    typer.echo(token.token)
    typer.echo(f"expires at {token.expires_at.isoformat()}", err=True)


@sessions_app.command("link")
def sessions_link(
    session_id: SessionArg,
    ttl: Annotated[
        float | None,
        typer.Option(
            "--ttl",
            min=1,
            max=86400,
            metavar="SECONDS",
            help="How long the link waits for its one use, in seconds (default 300).",
        ),
    ] = None,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    config: ConfigOpt = None,
    output: OutputOpt = Format.table,
    as_json: JsonOpt = False,
) -> None:
    """Make a one-time link that opens a session.

    It opens the session in a browser through dormant's proxy (and wakes it).
    Prints the URL alone, or JSON {url, expires_at, session_id}."""
    wanted = json_mode(output, as_json)
    with remote(url, api_key, config) as dormant:
        link = dormant.link(session_id, ttl=ttl)
    if wanted:
        emit(link)
        return
    typer.echo(link["url"])
    typer.echo(f"expires at {link['expires_at']}", err=True)


@sessions_app.command("events")
def sessions_events(
    session_id: SessionArg,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    config: ConfigOpt = None,
    output: OutputOpt = Format.table,
    as_json: JsonOpt = False,
) -> None:
    """Print a session's timeline.

    Deleted sessions' too: transitions, decisions and activity samples,
    each with its reason. JSON: {"session_id", "items"}."""
    wanted = json_mode(output, as_json)
    with remote(url, api_key, config) as dormant:
        events = dormant.events(session_id)
    if wanted:
        emit({"session_id": session_id, "items": events})
    else:
        print_timeline(events)


#: Policy values that are numbers but not durations (every other number is seconds).
NOT_DURATIONS = frozenset({"missed_pongs", "trust", "prior_weight", "half_life"})


def show_value(name: str, value: Any) -> str:
    """A policy value for people: durations as ``30m (1800s)``; the rest as JSON writes it
    (``null`` is "never" for ``max_lifetime``)."""
    import json

    number = isinstance(value, int | float) and not isinstance(value, bool)
    if number and name not in NOT_DURATIONS:
        return f"{human(value)} ({value:g}s)" if value >= 60 else f"{value:g}s"
    if isinstance(value, dict):
        return ", ".join(f"{k}={show_value(k, v)}" for k, v in value.items())
    return value if isinstance(value, str) else json.dumps(value)


@sessions_app.command("policy")
def sessions_policy(
    session_id: SessionArg,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    config: ConfigOpt = None,
    output: OutputOpt = Format.table,
    as_json: JsonOpt = False,
) -> None:
    """Show the policy values in effect for a session.

    Its template's policy with this session's overrides, resolved; durations in seconds in JSON."""
    wanted = json_mode(output, as_json)
    with remote(url, api_key, config) as dormant:
        resolved = dormant.session_policy(session_id)
    if wanted:
        emit(resolved)
        return
    typer.echo(f"session {resolved['session_id']}: policy {resolved['policy']}")
    values = resolved["values"]
    table(["SETTING", "VALUE"], [[k, show_value(k, v)] for k, v in values.items()])


@sessions_app.command("logout")
def sessions_logout(
    user: Annotated[str, typer.Argument(metavar="USER", help="The user's id.")],
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    config: ConfigOpt = None,
    output: OutputOpt = Format.table,
    as_json: JsonOpt = False,
) -> None:
    """Delete every live session of a user now (logout).

    The policy's logout rule. Prints the ids deleted."""
    wanted = json_mode(output, as_json)
    with remote(url, api_key, config) as dormant:
        deleted = dormant.logout(user)
    if wanted:
        emit({"user_id": user, "deleted": deleted})
        return
    typer.echo(f"deleted {len(deleted)} session(s) of {user}")
    for sid in deleted:
        typer.echo(f"  {sid}")
