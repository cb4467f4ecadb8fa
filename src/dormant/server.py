"""Wiring: settings -> store, runtimes, engine, reconciler, API, metrics; startup and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Response

from dormant import web
from dormant.api import create_api
from dormant.api.auth import create_key
from dormant.api.console import build_console, install_console
from dormant.clock import Clock, SystemClock
from dormant.config import Settings
from dormant.engine import Engine, EngineSettings, PortAllocator, parse_port_range
from dormant.engine.connections import dead_instances
from dormant.engine.health import HealthMonitor
from dormant.engine.volumes import VolumeKeeper
from dormant.errors import DormantError
from dormant.gateway import (
    Gateway,
    GatewaySettings,
    RedisReplicas,
    SocketIORoute,
    TokenIssuer,
    new_secret,
)
from dormant.metrics import Metrics
from dormant.proxy import CookieSigner, Links, ProxySettings, SessionProxy, forward_auth_route
from dormant.reconciler import Reconciler
from dormant.runtimes import Runtime
from dormant.runtimes.process import ProcessRuntime
from dormant.store import SqlStore
from dormant.store.migrate import upgrade_async
from dormant.store.records import InstanceRecord

log = logging.getLogger("dormant.server")


@dataclass
class Services:
    settings: Settings
    store: SqlStore
    engine: Engine
    reconciler: Reconciler
    runtimes: dict[str, Runtime]
    health: HealthMonitor
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def close(self) -> None:
        for runtime in self.runtimes.values():
            await runtime.close()
        await self.store.close()


async def live_sqlite_peer(settings: Settings) -> InstanceRecord | None:
    """Another ``dormant serve`` live on this SQLite database (SQLite has one writer: several
    replicas need PostgreSQL), or None. A predecessor that was killed does not count."""
    prefix = "sqlite+aiosqlite:///"
    url = settings.database_url
    if not url.startswith(prefix) or not os.path.exists(url[len(prefix) :]):  # noqa: ASYNC240
        return None
    store = SqlStore(url)
    try:
        now = SystemClock().now()
        ttl = timedelta(seconds=EngineSettings().instance_heartbeat * 3)
        live = await store.live_instances(since=now - ttl)
    except DormantError:
        return None  # no instances table yet: nobody served on it
    finally:
        await store.close()
    dead = dead_instances(live, now=now, ttl=ttl)
    return next((i for i in live if i.id not in dead), None)


def build_runtimes(settings: Settings) -> dict[str, Runtime]:
    wanted = {t.runtime for t in settings.catalog().templates.values()}
    runtimes: dict[str, Runtime] = {}
    if "process" in wanted:
        data = settings.resolved_data_dir()
        runtimes["process"] = ProcessRuntime(data / "processes", users_root=data / "users")
    if "docker" in wanted:
        from dormant.runtimes.docker import DockerRuntime

        runtimes["docker"] = DockerRuntime(
            settings.docker_host, scope=settings.docker_scope_labels()
        )
    if "swarm" in wanted:
        from dormant.runtimes.swarm import SwarmRuntime

        runtimes["swarm"] = SwarmRuntime(
            settings.swarm_host,
            scope=settings.docker_scope_labels(),
            volume_driver=settings.swarm_volume_driver,
        )
    if "kubernetes" in wanted:
        from dormant.runtimes.kubernetes import KubernetesRuntime

        runtimes["kubernetes"] = KubernetesRuntime(
            namespace=settings.kubernetes_namespace,
            kubeconfig=settings.kubernetes_kubeconfig,
            context=settings.kubernetes_context,
        )
    # Other backends plug in through the dormant.runtimes entry points.
    for name in wanted - {"process", "docker", "swarm", "kubernetes"}:
        from dormant.runtimes import runtime_class

        runtimes[name] = runtime_class(name)()
    return runtimes


def build_services(settings: Settings, clock: Clock | None = None) -> Services:
    store = SqlStore(settings.database_url)
    runtimes = build_runtimes(settings)
    ports = PortAllocator(parse_port_range(settings.port_range), store.used_ports)
    engine_settings = EngineSettings(
        flush_interval=settings.flush_interval,
        runtime_concurrency=settings.runtime_concurrency,
        outage_patience=settings.runtime_outage_patience,
        store_outage_patience=settings.store_outage_patience,
        retention=settings.retention,
        limits=settings.limits.to_limits(),
    )
    if settings.instance_id:
        engine_settings = dataclasses.replace(engine_settings, instance_id=settings.instance_id)
    engine = Engine(
        store, runtimes, settings.catalog(), clock or SystemClock(), ports, engine_settings
    )
    reconciler = Reconciler(engine, settle=timedelta(seconds=settings.reconcile_settle))
    return Services(settings, store, engine, reconciler, runtimes, HealthMonitor(engine))


def volume_keeper(services: Services) -> VolumeKeeper:
    """The retention job of volumes (and process homes): see dormant.engine.volumes."""
    engine, settings = services.engine, services.settings
    return VolumeKeeper(
        engine.store,
        engine.runtimes,
        engine.clock,
        retention=settings.volume_retention,
        settle=settings.reconcile_settle,
        deployment=engine.ensure_deployment,
    )


async def ensure_admin_key(services: Services) -> str | None:
    """On the first start with no keys: make an admin key, keep it in a 0600 file, return it."""
    if await services.store.list_keys():
        return None
    key = await create_key(
        services.store, "default", True, "bootstrap admin", services.engine.clock.now()
    )
    path = services.settings.admin_key_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    os.chmod(path, 0o600)
    return key


def gateway_secret(settings: Settings) -> str:
    """The JWT secret: configured, or kept in a 0600 file next to the database (made once)."""
    if settings.gateway_secret:
        return settings.gateway_secret
    path = settings.gateway_secret_file()
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = new_secret()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
    return secret


def build_gateway(settings: Settings, engine: Engine) -> Gateway:
    origins = settings.gateway_cors_origins.strip()
    tokens = TokenIssuer(gateway_secret(settings), engine.clock, ttl=settings.gateway_token_ttl)
    return Gateway(
        engine,
        tokens,
        GatewaySettings(
            max_connections=settings.gateway_max_connections,
            max_connections_per_session=settings.gateway_max_connections_per_session,
            activity_rate=settings.gateway_activity_rate,
            activity_burst=settings.gateway_activity_burst,
            max_payload_bytes=settings.max_body_bytes,
            cors_origins="*" if origins == "*" else [o.strip() for o in origins.split(",")],
            handshake_timeout=settings.gateway_handshake_timeout,
            key_check_interval=settings.gateway_key_check_interval,
        ),
        replicas=(
            RedisReplicas(settings.redis_url, settings.redis_channel, engine.settings.instance_id)
            if settings.redis_url
            else None
        ),
    )


async def startup(services: Services) -> None:
    await upgrade_async(services.settings.database_url)
    key = await ensure_admin_key(services)
    if key is not None:
        print(
            f"\nCreated the first admin API key (shown once; also saved to "
            f"{services.settings.admin_key_file()}):\n\n    {key}\n",
            flush=True,
        )
    engine = services.engine
    await engine.heartbeat()
    loaded = await engine.load()
    steps = await services.reconciler.run()
    log.info("started: %d live sessions, %d reconcile steps", loaded, len(steps))
    await engine.start()
    services.health.start()
    # What start-up made (modules, app, caches) lives as long as the process: keep it out of
    # full collections, which otherwise stalled a busy proxy ~100 ms each (bench_proxy).
    gc.freeze()
    services.tasks.append(
        asyncio.create_task(services.reconciler.loop(services.settings.reconcile_interval))
    )
    keeper = volume_keeper(services)
    services.tasks.append(asyncio.create_task(keeper.loop(services.settings.volume_prune_interval)))


async def shutdown(services: Services) -> None:
    await services.health.stop()
    for task in services.tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await services.engine.stop()
    await services.close()


def proxy_settings(settings: Settings) -> ProxySettings:
    return ProxySettings(
        host=settings.proxy_host or settings.host,
        port=settings.proxy_port,
        domain=settings.proxy_domain,
        public_url=settings.proxy_public_url,
        connect_timeout=settings.proxy_connect_timeout,
        read_timeout=settings.proxy_read_timeout,
        cookie_ttl=settings.proxy_cookie_ttl,
        idle_timeout=settings.proxy_idle_timeout,
        max_connections=settings.proxy_max_connections,
        trusted_peers=frozenset(
            p.strip() for p in settings.proxy_trusted_peers.split(",") if p.strip()
        ),
    )


def build_proxy(settings: Settings, engine: Engine) -> SessionProxy | None:
    """The session proxy (``DORMANT_PROXY_PORT``; 0: none)."""
    if not settings.proxy_port:
        return None
    signer = CookieSigner.from_secret(gateway_secret(settings))
    return SessionProxy(engine, signer, proxy_settings(settings))


def preview_origin(proxy: SessionProxy | None) -> str:
    """Where the console's session preview (an iframe) may load from: the proxy's origin (any
    session's host with a proxy domain), else the sessions' own ports on this host."""
    if proxy is None:
        return "http://127.0.0.1:*"
    parts = urlsplit(proxy.settings.base_url)
    if proxy.settings.domain:
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://*.{proxy.settings.domain}{port}"
    return f"{parts.scheme}://{parts.netloc}"


def create_app(settings: Settings, clock: Clock | None = None, proxy_socket: Any = None) -> FastAPI:
    """The API app; with a proxy port, the session proxy starts and stops with it (on
    ``proxy_socket`` when the caller bound it already)."""
    services = build_services(settings, clock)
    metrics = Metrics(services.engine, services.reconciler)
    gateway = build_gateway(settings, services.engine)
    metrics.add_gateway(gateway.stats.as_dict)
    proxy = build_proxy(settings, services.engine)
    if proxy is not None:
        metrics.add_proxy(proxy.stats)
    links = None
    if proxy is not None:
        links = Links(
            services.store,
            services.engine.clock,
            proxy.settings.base_url,
            settings.proxy_domain,
        )

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await startup(services)
        await gateway.start()
        console.start()
        if proxy is not None:
            await proxy.start(proxy_socket)
        try:
            yield
        finally:
            if proxy is not None:
                await proxy.stop()
            await console.close()
            await gateway.stop()
            await shutdown(services)

    async def ready() -> dict[str, Any]:
        checks: dict[str, Any] = {}
        try:
            await services.store.ping()
            checks["store"] = "ok"
        except Exception as exc:
            checks["store"] = f"unavailable: {type(exc).__name__}"
        for name, runtime in services.runtimes.items():
            try:
                await runtime.ping()
                checks[f"runtime.{name}"] = "ok"
            except Exception as exc:
                checks[f"runtime.{name}"] = f"unavailable: {exc}"
        return checks

    app = create_api(
        services.engine,
        services.reconciler,
        rate_limit=settings.rate_limit,
        rate_burst=settings.rate_burst,
        max_body_bytes=settings.max_body_bytes,
        auth_failure_limit=settings.auth_failure_limit,
        auth_failure_window=settings.auth_failure_window,
        ready=ready,
        lifespan=lifespan,
        session_url=links.session_url if links is not None else None,
    )
    if proxy is not None:
        app.add_api_route(
            "/v1/forward-auth", forward_auth_route(proxy), methods=["GET"], include_in_schema=False
        )

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/static/dormant.js", include_in_schema=False)
    async def dormant_js() -> Response:
        return Response(
            web.dormant_js(),
            media_type="application/javascript; charset=utf-8",
            headers={"Cache-Control": "public, max-age=300", "ETag": web.dormant_js_etag()},
        )

    console = build_console(
        services.engine,
        gateway_secret(settings),
        session_ttl=settings.console_session_ttl,
        session_url=links.session_url if links is not None else None,
        frame_src=preview_origin(proxy),
    )
    install_console(app, console)

    app.add_middleware(SocketIORoute, gateway_app=gateway.asgi_app)
    app.state.services = services
    app.state.realtime = gateway
    app.state.links = links
    app.state.proxy = proxy
    return app


def data_dir_of(settings: Settings) -> Path:
    return settings.resolved_data_dir()
