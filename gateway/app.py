"""The aiohttp application: one factory, typed shared state, one cleanup context per resource."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import WSCloseCode, web

from gateway.llm import create_http_client
from gateway.logging import get_logger
from gateway.metrics import GatewayMetrics
from gateway.session import Session, SessionDeps
from gateway.settings import Settings
from gateway.tenants import TenantRegistry
from gateway.tokens import SessionTokens, load_or_create_secret
from memory.backends import MemoryBackends

log = get_logger(__name__)


@dataclass
class Prefetch:
    task: asyncio.Task[object]
    expires_at: float


@dataclass
class GatewayState:
    """Mutable per-app state, owned by the app (no module globals)."""

    draining: bool = False
    sessions: weakref.WeakSet[Session] = field(default_factory=weakref.WeakSet)
    active_by_tenant: dict[str, int] = field(default_factory=dict)
    prefetches: dict[str, Prefetch] = field(default_factory=dict)

    def prune_prefetches(self, now: float) -> None:
        """Drop prefetches whose token expired unused.

        Every entry gets the same TTL and dicts keep insertion order, so expired entries are all at
        the front: stop at the first live one instead of scanning every pending session per /start.
        """
        while self.prefetches:
            sid, entry = next(iter(self.prefetches.items()))
            if entry.expires_at > now:
                return
            entry.task.cancel()
            del self.prefetches[sid]


settings_key = web.AppKey("settings", Settings)
metrics_key = web.AppKey("metrics", GatewayMetrics)
tenants_key = web.AppKey("tenants", TenantRegistry)
tokens_key = web.AppKey("tokens", SessionTokens)
backends_key = web.AppKey("backends", MemoryBackends)
state_key = web.AppKey("state", GatewayState)
deps_key = web.AppKey("deps", SessionDeps)


def create_app(
    settings: Settings,
    *,
    tenants: TenantRegistry | None = None,
    metrics: GatewayMetrics | None = None,
    backends: MemoryBackends | None = None,
) -> web.Application:
    """Build the gateway. Nothing starts until the app does (``cleanup_ctx``)."""
    from gateway import routes

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
    app[state_key] = GatewayState()
    app[backends_key] = backends or MemoryBackends(
        data_dir=settings.data_dir,
        database_url=settings.database_url,
        max_workers=settings.memory_workers,
        call_timeout=settings.memory_call_timeout_secs,
        pool_size=settings.memory_pool_size,
        observer=app[metrics_key],
    )
    app.cleanup_ctx.append(_memory_ctx)
    app.cleanup_ctx.append(_deps_ctx)
    app.on_shutdown.append(_drain)
    routes.setup(app)
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


async def _deps_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[settings_key]
    http_client = create_http_client(settings.llm_timeout_secs)
    app[deps_key] = SessionDeps(settings=settings, metrics=app[metrics_key], http_client=http_client)
    yield
    await http_client.aclose()


async def _drain(app: web.Application) -> None:
    """Stop accepting, ask every live session to close with 1001, wait up to the grace period."""
    state = app[state_key]
    state.draining = True
    sessions = list(state.sessions)
    log.info("gateway.draining", sessions=len(sessions))
    # Concurrently: each close may wait up to its close timeout for a slow client.
    await asyncio.gather(
        *(session.close(WSCloseCode.GOING_AWAY, "server shutting down") for session in sessions),
        return_exceptions=True,
    )
    for entry in state.prefetches.values():
        entry.task.cancel()
    state.prefetches.clear()
