"""``dormant sessions``: list, show, create, sleep and wake sessions (talks to the server)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from dormant.cli.common import (
    ConfigOpt,
    Format,
    JsonOpt,
    KeyOpt,
    OutputOpt,
    UrlOpt,
    WaitOpt,
    ago,
    die,
    emit,
    json_mode,
    kv_pairs,
    remote,
    table,
)
from dormant.policy import Level, State

sessions_app = typer.Typer(no_args_is_help=True, help="Manage sessions (talks to the server).")

SessionArg = Annotated[str, typer.Argument(metavar="SESSION_ID", help="The session's id.")]
LabelOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--label",
        "-l",
        metavar="KEY=VALUE",
        help="A label (repeatable). On ls: only sessions with every label given.",
    ),
]


def why(session: dict[str, Any]) -> str:
    """What happened and what comes next (the server's ``why``), else the next action's
    reason (servers before ``why``)."""
    return str(session.get("why") or session["next_action"]["reason"])


def _activity(session: dict[str, Any]) -> str:
    last = session["last_activity"]
    if not last["at"]:
        return "-"
    via = f" via {last['source']}" if last.get("source") else ""
    return f"{last['kind'] or '-'}{via} {ago(last['at'])}"


def _next(session: dict[str, Any]) -> str:
    nxt = session["next_action"]
    return f"{nxt['action']} {ago(nxt['at'])}" if nxt["at"] else str(nxt["action"])


def _state(session: dict[str, Any]) -> str:
    position = session.get("queue_position")
    return f"queued #{position}" if session["state"] == "queued" and position else session["state"]


@sessions_app.command("ls")
def sessions_ls(
    user: Annotated[str | None, typer.Option(metavar="USER", help="Only this user's.")] = None,
    state: Annotated[
        str | None,
        typer.Option(
            metavar="STATE",
            help=f"Only sessions in this state: {', '.join(s.value for s in State)}.",
        ),
    ] = None,
    level: Annotated[
        str | None,
        typer.Option(
            metavar="LEVEL",
            help=f"Only sessions at this level: {', '.join(v.value for v in Level)}.",
        ),
    ] = None,
    template: Annotated[
        str | None, typer.Option(metavar="TEMPLATE", help="Only sessions of this template.")
    ] = None,
    name: Annotated[
        str | None, typer.Option(metavar="NAME", help="Only sessions of this name.")
    ] = None,
    label: LabelOpt = None,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    config: ConfigOpt = None,
    output: OutputOpt = Format.table,
    as_json: JsonOpt = False,
) -> None:
    """List sessions.

    Every session the key may see (all pages): tenant, user, template, state, level, last
    activity, next action, URL and why. Columns are as wide as their content."""
    wanted = json_mode(output, as_json)
    labels = kv_pairs(label, "--label")
    with remote(url, api_key, config) as dormant:
        rows = dormant.list_sessions(
            user_id=user, state=state, level=level, template=template, name=name, labels=labels
        )
    if wanted:
        emit({"items": rows})
        return
    header = ["ID", "TENANT", "USER", "TEMPLATE", "STATE", "LEVEL", "LAST ACTIVITY", "NEXT"]
    table(
        [*header, "URL", "WHY"],
        [
            [
                s["id"],
                s["tenant"],
                s["user_id"] + (f" ({s['name']})" if s.get("name") else ""),
                s["template"],
                _state(s),
                s["level"],
                _activity(s),
                _next(s),
                s.get("url") or "-",
                why(s),
            ]
            for s in rows
        ],
    )


def describe(session: dict[str, Any]) -> list[tuple[str, str]]:
    """The session as ``field: value`` lines for people."""
    lines = [
        ("id", session["id"]),
        ("tenant", session["tenant"]),
        ("user", session["user_id"]),
        ("name", session.get("name") or "-"),
        ("template", session["template"]),
        ("policy", session["policy"]),
        ("state", f"{_state(session)} since {ago(session['state_since'])}"),
        ("level", session["level"]),
        ("why", why(session)),
        ("next", f"{_next(session)}: {session['next_action']['reason']}"),
        ("last activity", _activity(session)),
        ("last seen", ago(session.get("last_seen_at"))),
        ("connections", str(session["connections"])),
        ("url", session.get("url") or "-"),
        ("created", f"{session['created_at']} ({ago(session['created_at'])})"),
    ]
    for key, label in (("keepalive_until", "keep alive until"), ("busy_until", "busy until")):
        if session.get(key):
            lines.append((label, f"{session[key]} ({ago(session[key])})"))
    if session.get("labels"):
        lines.append(("labels", ", ".join(f"{k}={v}" for k, v in session["labels"].items())))
    if session.get("error"):
        lines.append(("error", session["error"]))
    return lines


def event_rows(events: list[dict[str, Any]]) -> list[list[str]]:
    """A timeline for people: when, what (a transition, a decision, activity with its
    source), its code, and the reason as written by the server."""
    rows = []
    for e in events:
        if e.get("to_state"):
            what = f"{e.get('from_state') or '-'} -> {e['to_state']}"
        elif e["type"] == "activity":
            source = f" via {e['source']}" if e.get("source") else ""
            what = f"activity {e.get('kind') or '-'}{source}"
        else:
            what = e["type"] + (f" {e['action']}" if e.get("action") else "")
        rows.append([str(e["at"]), what, e.get("code") or "-", e.get("reason") or ""])
    return rows


def print_timeline(events: list[dict[str, Any]]) -> None:
    table(["AT", "EVENT", "CODE", "REASON"], event_rows(events))


@sessions_app.command("show")
def sessions_show(
    session_id: SessionArg,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    config: ConfigOpt = None,
    output: OutputOpt = Format.table,
    as_json: JsonOpt = False,
) -> None:
    """Show a session and its timeline.

    A deleted session's timeline too (until it is purged,
    DORMANT_RETENTION after). JSON: {"session": the session or null once deleted,
    "events": the timeline}."""
    from dormant.client import ApiError

    wanted = json_mode(output, as_json)
    with remote(url, api_key, config) as dormant:
        try:
            session: dict[str, Any] | None = dormant.get_session(session_id)
        except ApiError as exc:
            if exc.status != 404:
                raise
            session = None  # deleted, or never ours: the timeline tells which
        events = dormant.events(session_id)
    if wanted:
        emit({"session": session, "events": events})
        return
    if session is None:
        typer.echo(f"session {session_id} is deleted; its timeline:")
    else:
        width = max(len(k) for k, _ in describe(session))
        for key, value in describe(session):
            typer.echo(f"{key + ':':{width + 1}} {value}")
        typer.echo("\ntimeline:")
    print_timeline(events)


@sessions_app.command("create")
def sessions_create(
    user: Annotated[str, typer.Option("--user", metavar="USER", help="The user's id.")],
    template: Annotated[
        str | None,
        typer.Option(
            metavar="TEMPLATE",
            help="Template (see `dormant templates`; default: the server's default_template).",
        ),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(
            metavar="NAME",
            help="Get or create the user's session of this name (and template): an existing "
            "live one is answered as it is, and the other options are not applied.",
        ),
    ] = None,
    policy: Annotated[
        list[str] | None,
        typer.Option(
            "--policy",
            "-p",
            metavar="SETTING=VALUE",
            help="Override a setting of the template's policy for this session (repeatable), "
            "like sleep_after=30m; see `dormant policies`.",
        ),
    ] = None,
    label: LabelOpt = None,
    env: Annotated[
        list[str] | None,
        typer.Option(
            "--env",
            "-e",
            metavar="NAME=VALUE",
            help="An environment variable for the session (repeatable); the template's "
            "env_allow says which names are allowed.",
        ),
    ] = None,
    wait: WaitOpt = None,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    config: ConfigOpt = None,
    output: OutputOpt = Format.table,
    as_json: JsonOpt = False,
) -> None:
    """Create a session for a user.

    Prints its id, state, port and URL (with --wait: once it
    runs, or failed)."""
    wanted = json_mode(output, as_json)
    overrides = kv_pairs(policy, "--policy") or None
    labels = kv_pairs(label, "--label") or None
    variables = kv_pairs(env, "--env") or None
    with remote(url, api_key, config, wait) as dormant:
        if name is not None:
            session = dormant.ensure_session(
                user,
                name,
                template=template,
                policy=overrides,
                labels=labels,
                env=variables,
                wait=wait,
            )
        else:
            session = dormant.create_session(
                user, template=template, policy=overrides, labels=labels, env=variables, wait=wait
            )
    if wanted:
        emit(session)
    else:
        where = f" url={session['url']}" if session.get("url") else ""
        typer.echo(f"{session['id']} {session['state']} port={session['port']}{where}")
    if wait is not None and session["state"] != "running":
        reason = session.get("error") or "not running yet"
        die(f"session {session['id']} is {session['state']}: {reason}", "not_running")


def _operation(action: str, target: str) -> Any:
    def command(
        session_id: SessionArg,
        wait: WaitOpt = None,
        url: UrlOpt = None,
        api_key: KeyOpt = None,
        config: ConfigOpt = None,
        output: OutputOpt = Format.table,
        as_json: JsonOpt = False,
    ) -> None:
        wanted = json_mode(output, as_json)
        with remote(url, api_key, config, wait) as dormant:
            answer = getattr(dormant, action)(session_id, wait=wait)
        outcome = answer.get("outcome")
        if wanted:
            emit(answer)
        elif wait is None:
            typer.echo(f"{action} requested for {session_id}")
        elif outcome is not None:
            typer.echo(f"{session_id} {outcome['state']}")
        if wait is None:
            return
        if outcome is None:
            die(f"{action} of {session_id} did not finish within {wait:g}s", "timeout")
        if not outcome["ok"]:
            die(
                f"{action} of {session_id} ended {outcome['state']}: {outcome.get('error')}",
                "not_" + target,
            )

    command.__doc__ = (
        f"{action.capitalize()} a session.\n\nWith --wait: until it is {target}; exit 1 otherwise."
    )
    return command


sessions_app.command("sleep")(_operation("sleep", "sleeping"))
sessions_app.command("wake")(_operation("wake", "running"))
