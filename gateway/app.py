"""The aiohttp application: one factory, typed shared state, one cleanup context per resource."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway import memory_import, routes
from gateway.cluster import InProcessRegistry, SessionRegistry
from gateway.keys import (
    backends_key,
    deps_key,
    metrics_key,
    metrics_runner_key,
    registry_key,
    reloader_key,
    settings_key,
    tenants_key,
    tokens_key,
)
from gateway.logging import get_logger
from gateway.looplag import LoopLagMonitor
from gateway.metrics import GatewayMetrics
from gateway.pipeline.builder import SessionDeps
from gateway.pipeline.builds import GreetingBoard, PipelineBuilds
from gateway.pipeline.llm import OpenAIClients, create_http_client
from gateway.pipeline.pipecatcompat import cache_worker_handlers
from gateway.pipeline.voice import VoiceModels
from gateway.settings import Settings
from gateway.telephony import setup_telephony
from gateway.tenants import TenantFileError, TenantRegistry
from gateway.tokens import SessionTokens, load_or_create_secret
from gateway.web import setup_web
from memory.backends import MemoryBackends
from memory.retention import RetentionJob

log = get_logger(__name__)


def server_options(settings: Settings) -> dict[str, Any]:
    """``AppRunner``/``run_app`` options that are part of the gateway's behaviour, not deployment taste.

    aiohttp closes a connection that has not delivered a complete request within its keep-alive
    timeout, counted from the TCP accept; that is our handshake timeout (slowloris, half-open
    sockets), and it also bounds idle keep-alive between ``/start`` calls.
    """
    return {"keepalive_timeout": settings.handshake_timeout_secs}


def create_app(
    settings: Settings,
    *,
    tenants: TenantRegistry | None = None,
    metrics: GatewayMetrics | None = None,
    backends: MemoryBackends | None = None,
) -> web.Application:
    """Build the gateway. Nothing starts until the app does (``cleanup_ctx``)."""
    app = web.Application(client_max_size=64 * 1024)
    app[settings_key] = settings
    app[metrics_key] = metrics or GatewayMetrics()
    app[tenants_key] = tenants or TenantRegistry.load(settings.resolved_tenants_file)
    secret = (
        settings.token_secret.get_secret_value()
        if settings.token_secret
        else load_or_create_secret(settings.data_dir)
    )
    app[tokens_key] = SessionTokens(secret, settings.token_ttl_secs)
    app[registry_key] = create_registry(settings, app[metrics_key])
    app[backends_key] = backends or MemoryBackends(
        data_dir=settings.data_dir,
        database_url=settings.database_url,
        max_workers=settings.memory_workers,
        call_timeout=settings.memory_call_timeout_secs,
        pool_size=settings.memory_pool_size,
        observer=app[metrics_key],
        outbox_max_bytes=settings.outbox_max_bytes,
        # Workers of one ``serve --workers`` share the data dir; each replays its own file (a
        # restarted worker gets its index, and with it its predecessor's outbox, back).
        outbox_name="outbox.db" if settings.worker_index is None else f"outbox-{settings.worker_index}.db",
    )
    # Closed last (cleanup runs in reverse): sessions give their leases back before it disconnects.
    app.cleanup_ctx.append(_registry_ctx)
    app.cleanup_ctx.append(_memory_ctx)
    app.cleanup_ctx.append(_deps_ctx)
    app.cleanup_ctx.append(_tenants_reload_ctx)
    app.cleanup_ctx.append(_retention_ctx)
    if settings.metrics_port is not None:
        app.cleanup_ctx.append(_metrics_site_ctx)
    app[metrics_key].publish_tenants(_limits(app[tenants_key]))
    app.on_shutdown.append(_drain)
    routes.setup(app)
    memory_import.setup(app)
    setup_web(app)
    setup_telephony(app)
    return app


async def _memory_ctx(app: web.Application) -> AsyncIterator[None]:
    backends = app[backends_key]
    await backends.start()
    # Build every active tenant's backend now, so no first caller pays for it.
    for tenant in app[tenants_key]:
        if tenant.active:
            try:
                await backends.for_tenant(tenant.name, tenant.memory)
            except Exception:
                log.exception("memory.backend_failed", tenant=tenant.name)
    log.info("memory.ready", database="embedded" if backends.embedded else "external")
    yield
    await backends.close(app[settings_key].shutdown_grace_secs)


async def _retention_ctx(app: web.Application) -> AsyncIterator[None]:
    """The purge of memories past their tenant's retention (``memory.retention``), in the background."""
    every = app[settings_key].retention_interval_secs
    tenants, backends = app[tenants_key], app[backends_key]
    job = RetentionJob(
        tenants=lambda: [(t.name, t.memory) for t in tenants if t.active],
        backend_for=backends.for_tenant,
        interval=every,
    )
    task = asyncio.create_task(job.run(), name="memory-retention") if every > 0 else None
    yield
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _deps_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[settings_key]
    # Per-class instead of per-session work inside Pipecat's worker construction
    # (gateway.pipeline.pipecatcompat).
    cache_worker_handlers()
    http_client = create_http_client(settings.llm_timeout_secs)
    metrics = app[metrics_key]
    voice_models = VoiceModels(
        shared=settings.voice_analyzers == "shared",
        vad_gather_secs=settings.vad_batch_secs,
        vad_min_streams=settings.vad_batch_min_streams,
    )
    deps = app[deps_key] = SessionDeps(
        settings=settings,
        metrics=metrics,
        http_client=http_client,
        openai_clients=OpenAIClients(http_client),
        voice_models=voice_models,
        builds=PipelineBuilds(
            concurrency=settings.start_concurrency,
            max_defer=settings.build_defer_secs,
            board=_greeting_board(settings),
        ),
    )
    if any(tenant.stt is not None for tenant in app[tenants_key]):
        # Load the VAD model now, off the loop, rather than in the first voice caller's connect.
        await asyncio.get_running_loop().run_in_executor(None, voice_models.load)
    lag = LoopLagMonitor()
    lag.start()
    metrics.event_loop_lag_seconds.set_function(lag.worst.value)
    metrics.vad_wait_seconds.set_function(
        lambda: voice_models.batcher.wait.value() if voice_models.batcher is not None else 0.0
    )
    yield
    await lag.stop()
    await deps.builds.close()
    await http_client.aclose()


def _greeting_board(settings: Settings) -> GreetingBoard | None:
    """This worker's slot on its supervisor's board (``serve --workers``); None for one process."""
    if settings.greeting_board is None or settings.worker_index is None:
        return None
    try:
        return GreetingBoard(settings.greeting_board, settings.worker_index)
    except (OSError, ValueError):
        log.warning("builds.no_greeting_board")  # builds then wait for this process's greetings only
        return None


async def _drain(app: web.Application) -> None:
    """Stop accepting, ask every live session to close with 1001, wait up to the grace period."""
    await app[registry_key].drain(app[settings_key].shutdown_grace_secs)


def create_registry(settings: Settings, metrics: GatewayMetrics) -> SessionRegistry:
    """Where the limits every process must share live (``GATEWAY_SESSION_STATE``): Redis when
    ``GATEWAY_REDIS_URL`` is set, PostgreSQL for ``serve --workers`` without Redis, else this process."""
    common: dict[str, Any] = {
        "metrics": metrics,
        "prefetch_ttl_secs": settings.prefetch_ttl_secs,
    }
    kind = settings.session_state
    if kind == "auto":
        kind = "redis" if settings.redis_url is not None else "process"
    if kind == "redis":
        from gateway.cluster.redis import RedisRegistry

        if settings.redis_url is None:
            raise ValueError("GATEWAY_SESSION_STATE=redis needs GATEWAY_REDIS_URL")
        return RedisRegistry(
            url=settings.redis_url.get_secret_value(),
            prefix=settings.redis_prefix,
            lease_ttl_secs=settings.lease_ttl_secs,
            timeout_secs=settings.redis_timeout_secs,
            **common,
        )
    if kind == "postgres":
        from gateway.cluster.postgres import PostgresRegistry

        if settings.database_url is None:
            raise ValueError("GATEWAY_SESSION_STATE=postgres needs GATEWAY_DATABASE_URL")
        return PostgresRegistry(
            database_url=settings.database_url, lease_ttl_secs=settings.lease_ttl_secs, **common
        )
    return InProcessRegistry(**common)


async def _registry_ctx(app: web.Application) -> AsyncIterator[None]:
    registry = app[registry_key]
    await registry.start()
    log.info("registry.ready", backend=registry.backend, replica=registry.replica_id)
    yield
    await registry.close()


def _limits(registry: TenantRegistry) -> dict[str, int]:
    return {tenant.name: tenant.max_sessions for tenant in registry if tenant.active}


async def _metrics_site_ctx(app: web.Application) -> AsyncIterator[None]:
    """``/metrics`` on its own port, so the public port needn't expose it (scrapers reach it in-cluster)."""
    from prometheus_client.aiohttp import make_aiohttp_handler

    settings = app[settings_key]
    metrics_app = web.Application()
    metrics_app.router.add_get("/metrics", make_aiohttp_handler(app[metrics_key].registry))
    runner = web.AppRunner(metrics_app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.metrics_port)
    await site.start()
    app[metrics_runner_key] = runner  # runner.addresses: the bound port, when asked for port 0
    log.info("metrics.listening", port=runner.addresses[0][1])
    yield
    await runner.cleanup()


class TenantReloader:
    """Re-read the tenants file on SIGHUP or when it changes; a bad file keeps the old tenants.

    Reloading swaps the registry's contents in place: new requests see the new keys, limits and
    statuses at once, live sessions keep the settings they started with. A tenant's memory backend
    is built once per process, so a changed ``memory`` section applies after a restart (logged).
    """

    def __init__(self, app: web.Application, path: Path) -> None:
        self._app = app
        self._path = path
        self._stamp = self._stat()
        self._lock = asyncio.Lock()
        self._pending: set[asyncio.Task[bool]] = set()

    def trigger(self, reason: str) -> None:
        """Schedule a reload from a signal handler (which cannot await)."""
        task = asyncio.get_running_loop().create_task(self.reload(reason))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = self._path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    async def poll(self, every: float) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(every)
            stamp = await loop.run_in_executor(None, self._stat)
            if stamp is not None and stamp != self._stamp:
                await self.reload("file_changed")

    async def reload(self, trigger: str) -> bool:
        async with self._lock:
            loop = asyncio.get_running_loop()
            self._stamp = await loop.run_in_executor(None, self._stat)
            metrics = self._app[metrics_key]
            try:
                fresh = await loop.run_in_executor(None, TenantRegistry.load, self._path)
            except (OSError, TenantFileError) as e:
                metrics.tenant_reloads_total.labels("invalid").inc()
                log.error("tenants.reload_failed", trigger=trigger, error=str(e))
                return False
            registry = self._app[tenants_key]
            for tenant in fresh:
                old = registry.get(tenant.name)
                if old is not None and old.memory != tenant.memory:
                    log.warning("tenants.memory_change_needs_restart", changed_tenant=tenant.name)
            registry.replace(fresh)
            metrics.publish_tenants(_limits(registry))
            metrics.tenant_reloads_total.labels("ok").inc()
            log.info("tenants.reloaded", trigger=trigger, tenants=len(fresh))
            return True


async def _tenants_reload_ctx(app: web.Application) -> AsyncIterator[None]:
    path = app[tenants_key].path
    if path is None:  # tenants handed in by code (tests, embedding): nothing to watch
        yield
        return
    reloader = TenantReloader(app, path)
    app[reloader_key] = reloader
    loop = asyncio.get_running_loop()
    sighup = False
    try:
        loop.add_signal_handler(signal.SIGHUP, reloader.trigger, "sighup")
        sighup = True
    except (RuntimeError, ValueError, NotImplementedError):  # not the main thread, or no signals
        log.info("tenants.no_sighup")
    every = app[settings_key].tenants_reload_secs
    poller = asyncio.create_task(reloader.poll(every), name="tenants-reload") if every > 0 else None
    yield
    if poller is not None:
        poller.cancel()
    if sighup:
        loop.remove_signal_handler(signal.SIGHUP)
