"""The application's typed keys: every shared object the routes reach, owned by the app (no globals).

A module of its own so that routes and the app factory both import it, not each other.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from gateway.cluster import SessionRegistry
from gateway.metrics import GatewayMetrics
from gateway.pipeline.builder import SessionDeps
from gateway.settings import Settings
from gateway.tenants import TenantRegistry
from gateway.tokens import SessionTokens
from memory.backends import MemoryBackends

if TYPE_CHECKING:
    from gateway.app import TenantReloader

settings_key = web.AppKey("settings", Settings)
metrics_key = web.AppKey("metrics", GatewayMetrics)
tenants_key = web.AppKey("tenants", TenantRegistry)
tokens_key = web.AppKey("tokens", SessionTokens)
backends_key = web.AppKey("backends", MemoryBackends)
registry_key = web.AppKey("registry", SessionRegistry)
deps_key = web.AppKey("deps", SessionDeps)
metrics_runner_key = web.AppKey("metrics_runner", web.AppRunner)
reloader_key: web.AppKey[TenantReloader] = web.AppKey("reloader")
# Demo mode's answer to a POST /start without a key (gateway.web.demo); absent otherwise.
keyless_start_key: web.AppKey[Callable[[web.Request], Awaitable[web.StreamResponse]]] = web.AppKey(
    "keyless_start"
)
