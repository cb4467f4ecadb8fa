"""``dormant sessions rm``: one session, or every sleeping one (confirmed, previewable, with
bounded concurrency and a progress bar)."""

from __future__ import annotations

import sys
from collections import Counter
from typing import Annotated, Any

import httpx
import typer

from dormant.cli.common import (
    ConfigOpt,
    Format,
    JsonOpt,
    KeyOpt,
    OutputOpt,
    UrlOpt,
    ago,
    die,
    emit,
    json_mode,
    remote,
    settings,
    table,
)
from dormant.cli.sessions import sessions_app


@sessions_app.command("rm")
def sessions_rm(
    session_id: Annotated[
        str | None, typer.Argument(metavar="SESSION_ID", help="The session to delete.")
    ] = None,
    all_sleeping: Annotated[
        bool, typer.Option("--all-sleeping", help="Delete every sleeping session.")
    ] = False,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Do not ask for confirmation (--all-sleeping).")
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="List what --all-sleeping would delete; delete nothing."),
    ] = False,
    concurrency: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=256,
            metavar="N",
            help="Deletes in flight at once, 1-256 (default: DORMANT_RUNTIME_CONCURRENCY, 8).",
        ),
    ] = None,
    wait: Annotated[
        bool,
        typer.Option("--wait/--no-wait", help="Wait until each is gone (--all-sleeping)."),
    ] = True,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    config: ConfigOpt = None,
    output: OutputOpt = Format.table,
    as_json: JsonOpt = False,
) -> None:
    """Delete a session, or every sleeping one.

    --all-sleeping asks for a confirmation (--yes skips it) and deletes with bounded
    concurrency and a progress bar."""
    wanted = json_mode(output, as_json)
    if (session_id is None) == (not all_sleeping):
        die("give either a session id or --all-sleeping", "invalid")
    if session_id is not None:
        if dry_run:
            die("--dry-run goes with --all-sleeping", "invalid")
        with remote(url, api_key, config) as dormant:
            answer = dormant.delete(session_id)
        if wanted:
            emit(answer)
        else:
            typer.echo(f"delete requested for {session_id}")
        return
    limit = concurrency or settings(config).runtime_concurrency
    with remote(url, api_key, config) as dormant:
        sessions = dormant.list_sessions(state="sleeping")
        if not sessions:
            if wanted:
                emit({"items": [], "deleted": [], "failed": {}})
            else:
                typer.echo("no sleeping sessions")
            return
        if dry_run:
            if wanted:
                emit({"items": sessions, "dry_run": True})
                return
            typer.echo(sleeping_summary(sessions))
            table(
                ["ID", "TENANT", "USER", "ASLEEP SINCE"],
                [[s["id"], s["tenant"], s["user_id"], ago(s["state_since"])] for s in sessions],
            )
            typer.echo("dry run: nothing deleted")
            return
        if not wanted:
            typer.echo(sleeping_summary(sessions))
        if not yes and not typer.confirm("Delete them?", default=False, err=True):
            die("nothing deleted", "not_confirmed")
        ids = [s["id"] for s in sessions]
        failures = bulk_delete(dormant, ids, limit, wait)
    done = [sid for sid in ids if sid not in failures]
    if wanted:
        emit({"items": sessions, "deleted": done, "failed": failures})
    else:
        typer.echo(f"deleted {len(done)} of {len(ids)} sleeping session(s) ({limit} at a time)")
        for sid, why in sorted(failures.items()):
            typer.secho(f"  {sid}: {why}", fg=typer.colors.RED, err=True)
    if failures:
        raise typer.Exit(1)


def sleeping_summary(sessions: list[dict[str, Any]]) -> str:
    """``5 sleeping session(s) across 2 tenant(s): acme (3), default (2)``."""
    tenants = Counter(str(s["tenant"]) for s in sessions)
    listed = ", ".join(f"{t} ({n})" for t, n in sorted(tenants.items()))
    return f"{len(sessions)} sleeping session(s) across {len(tenants)} tenant(s): {listed}"


def bulk_delete(
    dormant: Any, ids: list[str], limit: int, wait: bool, wait_timeout: float = 300.0
) -> dict[str, str]:
    """Delete each (and, with ``wait``, poll until it answers 404), ``limit`` at a time, with a
    progress bar on stderr. Returns the failures by session id."""
    import time
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from dormant.client import ApiError

    def gone(sid: str, call: Any) -> bool:
        try:
            call(sid)
        except ApiError as exc:
            if exc.status == 404:
                return True
            raise
        return False

    def one(sid: str) -> str | None:
        try:
            if gone(sid, dormant.delete) or not wait:
                return None
            deadline = time.monotonic() + wait_timeout
            while not gone(sid, dormant.get_session):
                if time.monotonic() > deadline:
                    return f"still there after {wait_timeout:g}s"
                time.sleep(0.2)
        except ApiError as exc:
            return f"HTTP {exc.status}: {exc.message}"
        except httpx.HTTPError as exc:
            return f"cannot reach the server: {exc}"
        return None

    failures: dict[str, str] = {}
    with (
        ThreadPoolExecutor(max_workers=limit) as pool,
        typer.progressbar(length=len(ids), label="deleting", file=sys.stderr) as bar,
    ):
        futures = {pool.submit(one, sid): sid for sid in ids}
        for future in as_completed(futures):
            if (why := future.result()) is not None:
                failures[futures[future]] = why
            bar.update(1)
    return failures
