"""Commands that work on this host's database and runtimes: serve, migrate, reconcile,
volumes and keys."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from dataclasses import asdict, is_dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from dormant.cli.common import (
    ConfigOpt,
    Format,
    JsonOpt,
    OutputOpt,
    die,
    emit,
    json_mode,
    settings,
    table,
)
from dormant.clock import SystemClock
from dormant.config import Settings
from dormant.errors import DormantError

if TYPE_CHECKING:
    from dormant.serving import HttpLimits

T = TypeVar("T")

keys_app = typer.Typer(no_args_is_help=True, help="Manage API keys (works on the database).")
volumes_app = typer.Typer(
    no_args_is_help=True,
    help="Volumes and process homes kept for sessions.\n\nWorks on the database and runtimes.",
)


def plain(value: Any) -> Any:
    """A record as JSON data: dataclasses as objects, times in ISO 8601, tuples as lists."""
    if is_dataclass(value) and not isinstance(value, type):
        return {k: plain(v) for k, v in asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def existing_database(current: Settings) -> None:
    """Commands that open the database themselves must not create an empty one by accident
    (``keys list`` in the wrong folder): a SQLite file that does not exist is an error. Only
    ``serve`` and ``migrate`` create it."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(current.database_url)
    except ArgumentError as exc:
        die(f"database_url: {exc}", "invalid")
    path = url.database
    if url.get_backend_name() != "sqlite" or not path or path == ":memory:":
        return
    if path.startswith("file:") or url.query.get("mode") == "memory":
        return
    if not os.path.exists(path):
        die(
            f"no database at {os.path.abspath(path)}: run this next to dormant.db, pass --config "
            "or DORMANT_DATABASE_URL, or create one with `dormant migrate`",
            "no_database",
        )


def run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coro)
    except DormantError as exc:
        die(str(exc), exc.code)


def serve(
    config: ConfigOpt = None,
    host: Annotated[
        str | None,
        typer.Option(metavar="ADDRESS", help="Listen address (default: DORMANT_HOST, 127.0.0.1)."),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(metavar="PORT", help="Listen port (default: DORMANT_PORT, 8080)."),
    ] = None,
) -> None:
    """Run the server.

    The API, the session proxy, the scheduler and the reconciler (the database is migrated
    first)."""
    from dormant.logs import setup_logging
    from dormant.server import create_app, live_sqlite_peer
    from dormant.serving import bind_listener, serve_http

    current = settings(config)
    if host:
        current = current.model_copy(update={"host": host})
    if port:
        current = current.model_copy(update={"port": port})
    setup_logging(current.log_level, current.log_format)
    limits = _http_limits(current)
    proxy_sock = None
    try:  # the ports first: nothing (database, containers) is touched if one is taken
        sock = bind_listener(current.host, current.port)
        if current.proxy_port:
            proxy_sock = bind_listener(current.proxy_host or current.host, current.proxy_port)
    except DormantError as exc:
        die(str(exc), exc.code)
    peer = run(live_sqlite_peer(current))
    if peer is not None:
        sock.close()
        if proxy_sock is not None:
            proxy_sock.close()
        die(
            f"another dormant serve is live on this SQLite database: instance {peer.id} "
            f"(pid {peer.pid} on {peer.host.split('#')[0]}); stop it first, or run several "
            "replicas on PostgreSQL (DORMANT_DATABASE_URL)",
            "conflict",
        )
    application = create_app(current, proxy_socket=proxy_sock)
    serve_http(application, current.host, current.port, limits, sock)


def _http_limits(current: Settings) -> HttpLimits:
    """The HTTP server's bounds: ``DORMANT_HTTP_HEADER_TIMEOUT``, ``…_BODY_TIMEOUT`` and
    ``DORMANT_HTTP_MAX_CONNECTIONS``."""
    from dormant.serving import HttpLimits

    try:
        return HttpLimits(
            header_timeout=current.http_header_timeout,
            body_timeout=current.http_body_timeout,
            max_connections=current.http_max_connections,
        )
    except ValueError as exc:
        die(f"invalid HTTP limits: {exc}", "invalid")


def migrate(
    config: ConfigOpt = None, output: OutputOpt = Format.table, as_json: JsonOpt = False
) -> None:
    """Bring the database schema up to date.

    Creates a SQLite database if there is none."""
    from dormant.store.migrate import upgrade

    wanted = json_mode(output, as_json)
    current = settings(config)
    upgrade(current.database_url)
    where = _masked_url(current.database_url)
    if wanted:
        emit({"database_url": where, "up_to_date": True})
    else:
        typer.echo(f"database at {where} is up to date")


def _masked_url(url: str) -> str:
    """A database URL without its password."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def reconcile(
    config: ConfigOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only print the plan.")] = False,
    output: OutputOpt = Format.table,
    as_json: JsonOpt = False,
) -> None:
    """Converge containers and sessions once.

    Removes orphan containers, marks vanished ones, finishes interrupted operations."""
    from dormant.server import build_services
    from dormant.store.migrate import upgrade_async

    wanted = json_mode(output, as_json)
    current = settings(config)
    existing_database(current)
    if current.instance_id:  # never the running server's id: its operations are not ours
        current = current.model_copy(
            update={"instance_id": f"{current.instance_id}-cli-{os.getpid()}"}
        )

    async def main() -> tuple[list[Any], str]:
        await upgrade_async(current.database_url)
        services = build_services(current)
        try:
            steps = await services.reconciler.run(dry_run=dry_run)
            await services.engine.drain()
            await services.engine.flush()
            return list(steps), services.reconciler.last_plan.summary()
        finally:
            await services.close()

    steps, summary = run(main())
    if wanted:
        rows = [
            {"kind": s.kind, "target": s.target, "reason": s.reason, "runtime": s.runtime}
            for s in steps
        ]
        emit({"dry_run": dry_run, "steps": rows, "summary": summary})
        return
    verb = "would do" if dry_run else "did"
    typer.echo(f"reconcile {verb} {len(steps)} step(s)")
    for step in steps:
        typer.echo(f"  {step.describe()}")
    typer.echo(summary)


# volumes ----------------------------------------------------------------------------------------


def _volume_statuses(config: str | None, *, prune: bool, dry_run: bool = False) -> list[Any]:
    from dormant.server import build_services, volume_keeper
    from dormant.store.migrate import upgrade_async

    current = settings(config)
    existing_database(current)

    async def main() -> list[Any]:
        await upgrade_async(current.database_url)
        services = build_services(current)
        try:
            keeper = volume_keeper(services)
            if prune:
                return await keeper.prune(dry_run=dry_run)
            return await keeper.survey()
        finally:
            await services.close()

    return run(main())


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.isoformat(timespec="seconds")


@volumes_app.command("ls")
def volumes_ls(
    config: ConfigOpt = None, output: OutputOpt = Format.table, as_json: JsonOpt = False
) -> None:
    """List volumes and process homes.

    Every volume (and process home) of this deployment: owner, retain rule, the live
    sessions that keep it, and when it expires."""
    wanted = json_mode(output, as_json)
    rows = _volume_statuses(config, prune=False)
    if wanted:
        emit({"items": [{**plain(r), "owner": r.owner} for r in rows]})
        return
    table(
        ["NAME", "RUNTIME", "OWNER", "RETAIN", "IN USE BY", "EXPIRES AT"],
        [
            [
                r.name,
                r.runtime,
                r.owner,
                r.retain,
                ",".join(r.in_use_by) or "-",
                _when(r.expires_at) + (" (expired)" if r.expired else ""),
            ]
            for r in rows
        ],
    )
    typer.echo(f"{len(rows)} volume(s)")


@volumes_app.command("prune")
def volumes_prune(
    config: ConfigOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would go.")] = False,
    output: OutputOpt = Format.table,
    as_json: JsonOpt = False,
) -> None:
    """Remove expired volumes.

    Removes the volumes whose retain rule has run out: user volumes whose owner's last
    session ended longer than DORMANT_VOLUME_RETENTION ago (and session volumes a crash left
    after their session was deleted); nothing else."""
    wanted = json_mode(output, as_json)
    rows = _volume_statuses(config, prune=True, dry_run=dry_run)
    if wanted:
        emit({"dry_run": dry_run, "items": [{**plain(r), "owner": r.owner} for r in rows]})
        return
    for row in rows:
        typer.echo(f"{row.outcome}: {row.name} ({row.runtime}, {row.owner}, {row.reason})")
    removed = sum(1 for row in rows if row.outcome == "removed")
    if dry_run:
        typer.echo(f"would remove {len(rows)} volume(s)")
    else:
        typer.echo(f"removed {removed} volume(s)")


# keys -------------------------------------------------------------------------------------------


@keys_app.command("create")
def keys_create(
    tenant: Annotated[
        str, typer.Option(metavar="TENANT", help="Tenant the key belongs to.")
    ] = "default",
    admin: Annotated[
        bool, typer.Option("--admin", help="An admin key: sees every tenant's sessions.")
    ] = False,
    name: Annotated[str, typer.Option(metavar="TEXT", help="A note for humans.")] = "",
    config: ConfigOpt = None,
    output: OutputOpt = Format.table,
    as_json: JsonOpt = False,
) -> None:
    """Create an API key and print it.

    It is stored hashed: this is the only time it shows."""
    from dormant.api.auth import create_key
    from dormant.store import SqlStore
    from dormant.store.migrate import upgrade_async

    wanted = json_mode(output, as_json)
    current = settings(config)
    existing_database(current)

    async def main() -> str:
        await upgrade_async(current.database_url)
        store = SqlStore(current.database_url)
        try:
            return await create_key(store, tenant, admin, name, SystemClock().now())
        finally:
            await store.close()

    key = run(main())
    if wanted:
        key_id = key.split("_")[1] if key.count("_") >= 2 else None
        emit({"key": key, "id": key_id, "tenant": tenant, "admin": admin, "name": name})
    else:
        typer.echo(key)


@keys_app.command("list")
def keys_list(
    config: ConfigOpt = None, output: OutputOpt = Format.table, as_json: JsonOpt = False
) -> None:
    """List API keys (ids, tenants, never the keys themselves)."""
    from dormant.store import SqlStore
    from dormant.store.migrate import upgrade_async

    wanted = json_mode(output, as_json)
    current = settings(config)
    existing_database(current)

    async def main() -> list[Any]:
        await upgrade_async(current.database_url)
        store = SqlStore(current.database_url)
        try:
            return await store.list_keys()
        finally:
            await store.close()

    rows = run(main())
    if wanted:
        fields = ("id", "tenant", "admin", "name", "created_at", "revoked_at")
        emit({"items": [{f: plain(getattr(k, f)) for f in fields} for k in rows]})
        return
    stamp = "%Y-%m-%d %H:%M:%S"
    table(
        ["ID", "TENANT", "ADMIN", "CREATED", "REVOKED", "NAME"],
        [
            [
                k.id,
                k.tenant,
                "yes" if k.admin else "no",
                k.created_at.strftime(stamp),
                k.revoked_at.strftime(stamp) if k.revoked_at else "-",
                k.name or "-",
            ]
            for k in rows
        ],
    )


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(metavar="KEY_ID", help="The key's id (keys list).")],
    config: ConfigOpt = None,
    output: OutputOpt = Format.table,
    as_json: JsonOpt = False,
) -> None:
    """Revoke an API key by id.

    It is refused from then on (live real-time connections too)."""
    from dormant.store import SqlStore

    wanted = json_mode(output, as_json)
    current = settings(config)
    existing_database(current)

    async def main() -> bool:
        store = SqlStore(current.database_url)
        try:
            return await store.revoke_key(key_id, SystemClock().now())
        finally:
            await store.close()

    if not run(main()):
        die(f"no active key {key_id}", "not_found")
    if wanted:
        emit({"id": key_id, "revoked": True})
    else:
        typer.echo(f"revoked {key_id}")
