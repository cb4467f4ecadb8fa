"""``dormant``: serve, keys, sessions, reconcile, migrate, version."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Coroutine
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import httpx
import typer

import dormant
from dormant.clock import SystemClock
from dormant.config import Settings, load_settings
from dormant.errors import DormantError
from dormant.simulate.cli import simulate_app

if TYPE_CHECKING:
    from dormant.serving import HttpLimits

T = TypeVar("T")

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Runs per-user containers only while people use them.",
)
keys_app = typer.Typer(no_args_is_help=True, help="Manage API keys (works on the database).")
sessions_app = typer.Typer(no_args_is_help=True, help="Manage sessions (talks to the server).")
volumes_app = typer.Typer(
    no_args_is_help=True,
    help="Volumes and process homes kept for sessions (works on the database and runtimes).",
)
app.add_typer(keys_app, name="keys")
app.add_typer(sessions_app, name="sessions")
app.add_typer(volumes_app, name="volumes")
app.add_typer(simulate_app, name="simulate")  # dormant simulate TRACE | generate

ConfigOpt = Annotated[str | None, typer.Option("--config", "-c", help="dormant.toml path")]


def _settings(config: str | None) -> Settings:
    try:
        return load_settings(config)
    except DormantError as exc:
        _die(str(exc))


def _die(message: str, code: int = 1) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _existing_database(settings: Settings) -> None:
    """Commands that open the database themselves must not create an empty one by accident
    (``keys list`` in the wrong folder): a SQLite file that does not exist is an error. Only
    ``serve`` and ``migrate`` create it."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(settings.database_url)
    except ArgumentError as exc:
        _die(f"database_url: {exc}")
    path = url.database
    if url.get_backend_name() != "sqlite" or not path or path == ":memory:":
        return
    if path.startswith("file:") or url.query.get("mode") == "memory":
        return
    if not os.path.exists(path):
        _die(
            f"no database at {os.path.abspath(path)}: run this next to dormant.db, pass --config "
            "or DORMANT_DATABASE_URL, or create one with `dormant migrate`"
        )


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coro)
    except DormantError as exc:
        _die(str(exc))


@app.command()
def version() -> None:
    """Print dormant's version."""
    typer.echo(dormant.__version__)


@app.command()
def serve(
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="Listen address")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port")] = None,
) -> None:
    """Run the API, the scheduler and the reconciler (migrates the database first)."""
    from dormant.logs import setup_logging
    from dormant.server import create_app, live_sqlite_peer
    from dormant.serving import bind_listener, serve_http

    settings = _settings(config)
    if host:
        settings = settings.model_copy(update={"host": host})
    if port:
        settings = settings.model_copy(update={"port": port})
    setup_logging(settings.log_level, settings.log_format)
    limits = _http_limits(settings)
    proxy_sock = None
    try:  # the ports first: nothing (database, containers) is touched if one is taken
        sock = bind_listener(settings.host, settings.port)
        if settings.proxy_port:
            proxy_sock = bind_listener(settings.proxy_host or settings.host, settings.proxy_port)
    except DormantError as exc:
        _die(str(exc))
    peer = _run(live_sqlite_peer(settings))
    if peer is not None:
        sock.close()
        if proxy_sock is not None:
            proxy_sock.close()
        _die(
            f"another dormant serve is live on this SQLite database: instance {peer.id} "
            f"(pid {peer.pid} on {peer.host.split('#')[0]}); stop it first, or run several "
            "replicas on PostgreSQL (DORMANT_DATABASE_URL)"
        )
    application = create_app(settings, proxy_socket=proxy_sock)
    serve_http(application, settings.host, settings.port, limits, sock)


def _http_limits(settings: Settings) -> HttpLimits:
    """The HTTP server's bounds: ``DORMANT_HTTP_HEADER_TIMEOUT``, ``…_BODY_TIMEOUT`` and
    ``DORMANT_HTTP_MAX_CONNECTIONS``."""
    from dormant.serving import HttpLimits

    try:
        return HttpLimits(
            header_timeout=settings.http_header_timeout,
            body_timeout=settings.http_body_timeout,
            max_connections=settings.http_max_connections,
        )
    except ValueError as exc:
        _die(f"invalid HTTP limits: {exc}")


@app.command()
def migrate(config: ConfigOpt = None) -> None:
    """Bring the database schema up to date."""
    from dormant.store.migrate import upgrade

    settings = _settings(config)
    upgrade(settings.database_url)
    typer.echo(f"database at {settings.database_url} is up to date")


@app.command()
def reconcile(
    config: ConfigOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only print the plan")] = False,
) -> None:
    """Converge containers and sessions once (orphans, vanished containers, interrupted ops)."""
    from dormant.server import build_services
    from dormant.store.migrate import upgrade_async

    settings = _settings(config)
    _existing_database(settings)
    if settings.instance_id:  # never the running server's id: its operations are not ours
        settings = settings.model_copy(
            update={"instance_id": f"{settings.instance_id}-cli-{os.getpid()}"}
        )

    async def main() -> tuple[list[str], str]:
        await upgrade_async(settings.database_url)
        services = build_services(settings)
        try:
            steps = await services.reconciler.run(dry_run=dry_run)
            await services.engine.drain()
            await services.engine.flush()
            return [s.describe() for s in steps], services.reconciler.last_plan.summary()
        finally:
            await services.close()

    lines, summary = _run(main())
    verb = "would do" if dry_run else "did"
    typer.echo(f"reconcile {verb} {len(lines)} step(s)")
    for line in lines:
        typer.echo(f"  {line}")
    typer.echo(summary)


# volumes ------------------------------------------------------------------------------------


def _volume_statuses(config: str | None, *, prune: bool, dry_run: bool = False) -> list[Any]:
    from dormant.server import build_services, volume_keeper
    from dormant.store.migrate import upgrade_async

    settings = _settings(config)
    _existing_database(settings)

    async def main() -> list[Any]:
        await upgrade_async(settings.database_url)
        services = build_services(settings)
        try:
            keeper = volume_keeper(services)
            if prune:
                return await keeper.prune(dry_run=dry_run)
            return await keeper.survey()
        finally:
            await services.close()

    return _run(main())


def _when(value: Any) -> str:
    return "-" if value is None else str(value.isoformat(timespec="seconds"))


@volumes_app.command("ls")
def volumes_ls(config: ConfigOpt = None) -> None:
    """Every volume (and process home) of this deployment: owner, retain rule, the live
    sessions that keep it, and when it expires."""
    rows = _volume_statuses(config, prune=False)
    typer.echo(f"{'NAME':40} {'RUNTIME':8} {'OWNER':24} {'RETAIN':8} {'IN USE BY':28} EXPIRES AT")
    for row in rows:
        in_use = ",".join(row.in_use_by) or "-"
        expires = _when(row.expires_at) + (" (expired)" if row.expired else "")
        typer.echo(
            f"{row.name:40} {row.runtime:8} {row.owner:24} {row.retain:8} {in_use:28} {expires}"
        )
    typer.echo(f"{len(rows)} volume(s)")


@volumes_app.command("prune")
def volumes_prune(
    config: ConfigOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would go")] = False,
) -> None:
    """Remove the volumes whose retain rule has run out: user volumes whose owner's last
    session ended longer than DORMANT_VOLUME_RETENTION ago (and session volumes a crash left
    after their session was deleted); nothing else."""
    rows = _volume_statuses(config, prune=True, dry_run=dry_run)
    for row in rows:
        typer.echo(f"{row.outcome}: {row.name} ({row.runtime}, {row.owner}, {row.reason})")
    removed = sum(1 for row in rows if row.outcome == "removed")
    if dry_run:
        typer.echo(f"would remove {len(rows)} volume(s)")
    else:
        typer.echo(f"removed {removed} volume(s)")


# keys ---------------------------------------------------------------------------------------


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="Tenant the key belongs to")] = "default",
    admin: Annotated[bool, typer.Option("--admin", help="See every tenant's sessions")] = False,
    name: Annotated[str, typer.Option(help="A note for humans")] = "",
    config: ConfigOpt = None,
) -> None:
    """Create an API key and print it (it is stored hashed; this is the only time it shows)."""
    from dormant.api.auth import create_key
    from dormant.store import SqlStore
    from dormant.store.migrate import upgrade_async

    settings = _settings(config)
    _existing_database(settings)

    async def main() -> str:
        await upgrade_async(settings.database_url)
        store = SqlStore(settings.database_url)
        try:
            return await create_key(store, tenant, admin, name, SystemClock().now())
        finally:
            await store.close()

    typer.echo(_run(main()))


@keys_app.command("list")
def keys_list(config: ConfigOpt = None) -> None:
    """List API keys (ids, tenants, never the keys themselves)."""
    from dormant.store import SqlStore
    from dormant.store.migrate import upgrade_async

    settings = _settings(config)
    _existing_database(settings)

    async def main() -> list[Any]:
        await upgrade_async(settings.database_url)
        store = SqlStore(settings.database_url)
        try:
            return await store.list_keys()
        finally:
            await store.close()

    rows = _run(main())
    typer.echo(f"{'ID':14} {'TENANT':16} {'ADMIN':6} {'CREATED':20} {'REVOKED':20} NAME")
    for k in rows:
        revoked = k.revoked_at.strftime("%Y-%m-%d %H:%M:%S") if k.revoked_at else "-"
        typer.echo(
            f"{k.id:14} {k.tenant:16} {'yes' if k.admin else 'no':6} "
            f"{k.created_at:%Y-%m-%d %H:%M:%S}  {revoked:20} {k.name}"
        )


@keys_app.command("revoke")
def keys_revoke(key_id: str, config: ConfigOpt = None) -> None:
    """Revoke an API key by id."""
    from dormant.store import SqlStore

    settings = _settings(config)
    _existing_database(settings)

    async def main() -> bool:
        store = SqlStore(settings.database_url)
        try:
            return await store.revoke_key(key_id, SystemClock().now())
        finally:
            await store.close()

    if not _run(main()):
        _die(f"no active key {key_id}")
    typer.echo(f"revoked {key_id}")


# sessions -----------------------------------------------------------------------------------

UrlOpt = Annotated[str | None, typer.Option("--url", help="Server URL (DORMANT_URL)")]
KeyOpt = Annotated[str | None, typer.Option("--api-key", help="API key (DORMANT_API_KEY)")]
WaitOpt = Annotated[
    float | None,
    typer.Option(
        "--wait", min=0, max=120, help="Seconds to wait for the outcome (exit 1 if not ok)"
    ),
]


def _client(
    url: str | None, api_key: str | None, config: str | None, wait: float | None = None
) -> httpx.Client:
    settings = _settings(config)
    base = url or os.environ.get("DORMANT_URL") or f"http://{settings.host}:{settings.port}"
    key = api_key or os.environ.get("DORMANT_API_KEY")
    if not key:
        path = settings.admin_key_file()
        if path.exists():
            key = path.read_text().strip()
    if not key:
        _die("no API key: pass --api-key, set DORMANT_API_KEY, or run next to the database")
    return httpx.Client(base_url=base, headers={"X-API-Key": key or ""}, timeout=30 + (wait or 0))


def _call(client: httpx.Client, method: str, path: str, **kw: Any) -> Any:
    try:
        response = client.request(method, path, **kw)
    except httpx.HTTPError as exc:
        _die(f"cannot reach the server at {client.base_url}: {exc}")
    if response.status_code >= 400:
        try:
            err = response.json()["error"]
            _die(f"{err['message']} ({err['code']}, HTTP {response.status_code})")
        except (ValueError, KeyError, TypeError):
            _die(f"HTTP {response.status_code}: {response.text[:200]}")
    return response.json() if response.content else None


def _ago(value: str | None) -> str:
    if not value:
        return "-"
    at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    seconds = int((SystemClock().now() - at).total_seconds())
    if seconds < 0:
        return f"in {_human(-seconds)}"
    return f"{_human(seconds)} ago"


def _human(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@sessions_app.command("ls")
def sessions_ls(
    user: Annotated[str | None, typer.Option("--user")] = None,
    state: Annotated[str | None, typer.Option("--state")] = None,
    level: Annotated[str | None, typer.Option("--level")] = None,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Table of sessions: state, level, last activity, next action and why."""
    params = {k: v for k, v in {"user_id": user, "state": state, "level": level}.items() if v}
    rows: list[dict[str, Any]] = []
    with _client(url, api_key, config) as client:
        cursor = None
        while True:
            page = _call(
                client,
                "GET",
                "/v1/sessions",
                params={**params, **({"cursor": cursor} if cursor else {})},
            )
            rows += page["items"]
            cursor = page["next_cursor"]
            if not cursor:
                break
    header = f"{'ID':24} {'USER':14} {'STATE':9} {'LEVEL':12} {'LAST ACTIVITY':22} {'NEXT':18} WHY"
    typer.echo(header)
    for s in rows:
        last = s["last_activity"]
        act = f"{last['kind'] or '-'} {_ago(last['at'])}" if last["at"] else "-"
        nxt = s["next_action"]
        when = f"{nxt['action']} {_ago(nxt['at'])}" if nxt["at"] else nxt["action"]
        typer.echo(
            f"{s['id']:24} {s['user_id'][:14]:14} {s['state']:9} {s['level']:12} "
            f"{act[:22]:22} {when[:18]:18} {nxt['reason']}"
        )


@sessions_app.command("show")
def sessions_show(
    session_id: str, url: UrlOpt = None, api_key: KeyOpt = None, config: ConfigOpt = None
) -> None:
    """A session and its timeline."""
    import json

    with _client(url, api_key, config) as client:
        session = _call(client, "GET", f"/v1/sessions/{session_id}")
        events = _call(client, "GET", f"/v1/sessions/{session_id}/events")
    typer.echo(json.dumps(session, indent=2))
    typer.echo("\ntimeline:")
    for e in events["items"]:
        move = f"{e['from_state'] or '-'} -> {e['to_state']}" if e["to_state"] else e["type"]
        typer.echo(f"  {e['at']}  {move:24} [{e['code']}] {e['reason']}")


@sessions_app.command("create")
def sessions_create(
    user: Annotated[str, typer.Option("--user", help="User id")],
    template: Annotated[str | None, typer.Option("--template")] = None,
    wait: WaitOpt = None,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Create a session for a user (with --wait: until it runs, or fails)."""
    body: dict[str, Any] = {"user_id": user}
    if template:
        body["template"] = template
    params = {"wait": str(wait)} if wait else None
    with _client(url, api_key, config, wait) as client:
        session = _call(client, "POST", "/v1/sessions", json=body, params=params)
    typer.echo(f"{session['id']} {session['state']} port={session['port']}")
    if wait and session["state"] != "running":
        why = session.get("error") or "not running yet"
        _die(f"session {session['id']} is {session['state']}: {why}")


def _simple(action: str, method: str, suffix: str) -> Any:
    def command(
        session_id: str,
        wait: WaitOpt = None,
        url: UrlOpt = None,
        api_key: KeyOpt = None,
        config: ConfigOpt = None,
    ) -> None:
        params = {"wait": str(wait)} if wait else None
        with _client(url, api_key, config, wait) as client:
            answer = _call(client, method, f"/v1/sessions/{session_id}{suffix}", params=params)
        if not wait:
            typer.echo(f"{action} requested for {session_id}")
            return
        outcome = answer.get("outcome") if isinstance(answer, dict) else None
        if outcome is None:
            _die(f"{action} of {session_id} did not finish within {wait:g}s")
        typer.echo(f"{session_id} {outcome['state']}")
        if not outcome["ok"]:
            _die(f"{action} of {session_id} ended {outcome['state']}: {outcome.get('error')}")

    command.__doc__ = f"Ask the server to {action} a session (with --wait: until it has)."
    return command


sessions_app.command("sleep")(_simple("sleep", "POST", "/sleep"))
sessions_app.command("wake")(_simple("wake", "POST", "/wake"))


@sessions_app.command("rm")
def sessions_rm(
    session_id: Annotated[str | None, typer.Argument(help="The session to delete")] = None,
    all_sleeping: Annotated[
        bool, typer.Option("--all-sleeping", help="Delete every sleeping session")
    ] = False,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Do not ask for confirmation (--all-sleeping)")
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="List what --all-sleeping would delete; delete nothing"),
    ] = False,
    concurrency: Annotated[
        int | None,
        typer.Option(
            min=1, max=256, help="Deletes in flight at once (default DORMANT_RUNTIME_CONCURRENCY)"
        ),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Wait until each is gone (--all-sleeping)")
    ] = True,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Delete a session, or every sleeping one (after a confirmation, --yes to skip it) with
    bounded concurrency and a progress bar."""
    if (session_id is None) == (not all_sleeping):
        _die("give either a session id or --all-sleeping")
    if session_id is not None:
        if dry_run:
            _die("--dry-run goes with --all-sleeping")
        with _client(url, api_key, config) as client:
            _call(client, "DELETE", f"/v1/sessions/{session_id}")
        typer.echo(f"delete requested for {session_id}")
        return
    limit = concurrency or _settings(config).runtime_concurrency
    with _client(url, api_key, config) as client:
        sessions: list[dict[str, Any]] = []
        cursor = None
        while True:
            params = {"state": "sleeping", **({"cursor": cursor} if cursor else {})}
            page = _call(client, "GET", "/v1/sessions", params=params)
            sessions += page["items"]
            cursor = page["next_cursor"]
            if not cursor:
                break
        if not sessions:
            typer.echo("no sleeping sessions")
            return
        typer.echo(_sleeping_summary(sessions))
        if dry_run:
            for s in sessions:
                typer.echo(
                    f"  {s['id']:24} {s['tenant'][:16]:16} {s['user_id'][:24]:24} "
                    f"asleep since {_ago(s['state_since'])}"
                )
            typer.echo("dry run: nothing deleted")
            return
        if not yes and not typer.confirm("Delete them?", default=False, err=True):
            typer.echo("nothing deleted")
            raise typer.Exit(1)
        ids = [s["id"] for s in sessions]
        failures = _bulk_delete(client, ids, limit, wait)
    done = len(ids) - len(failures)
    typer.echo(f"deleted {done} of {len(ids)} sleeping session(s) ({limit} at a time)")
    for sid, why in sorted(failures.items()):
        typer.secho(f"  {sid}: {why}", fg=typer.colors.RED, err=True)
    if failures:
        raise typer.Exit(1)


def _sleeping_summary(sessions: list[dict[str, Any]]) -> str:
    """``5 sleeping session(s) across 2 tenant(s): acme (3), default (2)``."""
    from collections import Counter

    tenants = Counter(str(s["tenant"]) for s in sessions)
    listed = ", ".join(f"{t} ({n})" for t, n in sorted(tenants.items()))
    return f"{len(sessions)} sleeping session(s) across {len(tenants)} tenant(s): {listed}"


def _bulk_delete(
    client: httpx.Client, ids: list[str], limit: int, wait: bool, wait_timeout: float = 300.0
) -> dict[str, str]:
    """DELETE each (and, with ``wait``, poll until it answers 404), ``limit`` at a time, with a
    progress bar. Returns the failures by session id."""
    import time
    from concurrent.futures import ThreadPoolExecutor, as_completed

    def one(sid: str) -> str | None:
        try:
            response = client.delete(f"/v1/sessions/{sid}")
            if response.status_code not in (202, 204, 404):
                return f"HTTP {response.status_code}: {response.text[:200]}"
            deadline = time.monotonic() + wait_timeout
            while wait and response.status_code != 404:
                if time.monotonic() > deadline:
                    return f"still there after {wait_timeout:g}s"
                time.sleep(0.2)
                response = client.get(f"/v1/sessions/{sid}")
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


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
