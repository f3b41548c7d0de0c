"""HTTP and WebSocket routes: ``/start``, ``/ws-client/{token}`` (and ``/ws?token=``), health, metrics.

Every refusal has a documented status or close code (ARCHITECTURE.md §2), a
``gateway_rejections_total{tenant,reason}`` increment and a log event — never a secret, token, ID or
message text, and never internals in the body.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import structlog
from aiohttp import WSCloseCode, web
from prometheus_client.aiohttp import make_aiohttp_handler

from gateway import greeting as greetings
from gateway.app import (
    Prefetch,
    backends_key,
    deps_key,
    metrics_key,
    settings_key,
    state_key,
    tenants_key,
    tokens_key,
)
from gateway.logging import get_logger
from gateway.serializers import SERIALIZERS
from gateway.session import Session
from gateway.tenants import TenantConfig
from gateway.tokens import TokenError
from memory.scope import MemoryScope

log = get_logger(__name__)

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+=-]{0,127}$")
CLOSE_BAD_TOKEN = 4001
CLOSE_TENANT_DISABLED = 4003
CLOSE_TOO_MANY_SESSIONS = 4029


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _ids(body: dict[str, Any]) -> dict[str, str | None]:
    ids: dict[str, str | None] = {}
    for key in ("user_id", "agent_id", "run_id"):
        value = body.get(key)
        if value is None or value == "":
            ids[key] = None
        elif not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
            raise ValueError(f"{key} must be 1-128 characters of letters, digits and ._:@+=-")
        else:
            ids[key] = value
    if not any(ids.values()):
        raise ValueError("at least one of user_id, agent_id or run_id is required in body")
    return ids


def _ws_base(request: web.Request) -> str:
    public = request.app[settings_key].public_url
    if public:
        return re.sub(r"^http", "ws", public.rstrip("/"))
    scheme = "wss" if request.secure else "ws"
    return f"{scheme}://{request.host}"


async def start(request: web.Request) -> web.Response:
    app = request.app
    metrics = app[metrics_key]
    state = app[state_key]
    if state.draining:
        metrics.reject(None, "draining")
        return _error(503, "server is draining; retry on another replica", {"Retry-After": "1"})
    tenant = app[tenants_key].authenticate(_bearer(request))
    if tenant is None:
        metrics.reject(None, "unauthorized")
        log.info("start.rejected", reason="unauthorized")
        return _error(401, "missing or unknown API key")
    structlog.contextvars.bind_contextvars(tenant=tenant.name)
    if not tenant.active:
        metrics.reject(tenant.name, "tenant_disabled")
        log.info("start.rejected", reason="tenant_disabled")
        return _error(403, "tenant is disabled")
    try:
        payload = await request.json()
        if not isinstance(payload, dict):
            raise ValueError("body must be a JSON object")
        transport = payload.get("transport", "websocket")
        if transport != "websocket":
            raise ValueError("transport must be 'websocket'")
        body = payload.get("body", {})
        if not isinstance(body, dict):
            raise ValueError("'body' must be a JSON object")
        ids = _ids(body)
        serializer = body.get("serializer")
        if serializer is not None and serializer not in SERIALIZERS:
            raise ValueError(f"serializer must be one of {', '.join(SERIALIZERS)}")
    except ValueError as e:
        metrics.reject(tenant.name, "bad_request")
        log.info("start.rejected", reason="bad_request")
        return _error(400, "body is not valid JSON" if isinstance(e, json.JSONDecodeError) else str(e))
    if state.active_by_tenant.get(tenant.name, 0) >= tenant.max_sessions:
        metrics.reject(tenant.name, "session_limit")
        log.info("start.rejected", reason="session_limit")
        return _error(429, "tenant is at its concurrent-session limit", {"Retry-After": "1"})
    try:
        backend = await app[backends_key].for_tenant(tenant.name, tenant.memory)
    except Exception:
        metrics.reject(tenant.name, "memory_unavailable")
        log.exception("start.memory_unavailable")
        return _error(503, "memory backend unavailable", {"Retry-After": "5"})

    token, claims = app[tokens_key].issue(tenant=tenant.name, serializer=serializer, **ids)
    loop = asyncio.get_running_loop()
    state.prune_prefetches(loop.time())
    scope = MemoryScope(tenant.name, ids["user_id"], ids["agent_id"], ids["run_id"])
    state.prefetches[claims.session_id] = Prefetch(
        task=greetings.start_prefetch(backend, scope, tenant.greeting),
        expires_at=loop.time() + app[settings_key].prefetch_ttl_secs,
    )
    query = f"?serializer={serializer}" if serializer else ""
    log.info("start.accepted", session_id=claims.session_id)
    return web.json_response(
        {
            "wsUrl": f"{_ws_base(request)}/ws-client/{token}{query}",
            "token": token,
            "sessionId": claims.session_id,
        }
    )


async def _refuse(ws: web.WebSocketResponse, code: int, reason: str) -> web.WebSocketResponse:
    await ws.close(code=code, message=reason.encode())
    return ws


async def websocket(request: web.Request) -> web.StreamResponse:
    app = request.app
    settings = app[settings_key]
    metrics = app[metrics_key]
    state = app[state_key]
    token = request.match_info.get("token") or request.query.get("token", "")
    requested = request.query.get("serializer")
    if requested is not None and requested not in SERIALIZERS:
        metrics.reject(None, "bad_request")
        return _error(400, f"serializer must be one of {', '.join(SERIALIZERS)}")

    ws = web.WebSocketResponse(max_msg_size=settings.max_message_bytes, heartbeat=settings.heartbeat_secs)
    await ws.prepare(request)
    accepted_at = asyncio.get_running_loop().time()

    if state.draining:
        metrics.reject(None, "draining")
        return await _refuse(ws, WSCloseCode.GOING_AWAY, "server is draining")
    try:
        claims = app[tokens_key].verify(token)
    except TokenError as e:
        metrics.reject(None, "bad_token")
        log.info("ws.rejected", reason="bad_token", detail=str(e))
        return await _refuse(ws, CLOSE_BAD_TOKEN, "invalid, expired or reused token")
    tenant: TenantConfig | None = app[tenants_key].get(claims.tenant)
    if tenant is None:
        metrics.reject(None, "bad_token")
        return await _refuse(ws, CLOSE_BAD_TOKEN, "invalid, expired or reused token")
    structlog.contextvars.bind_contextvars(tenant=tenant.name, session_id=claims.session_id)
    prefetch = state.prefetches.pop(claims.session_id, None)
    if not tenant.active:
        metrics.reject(tenant.name, "tenant_disabled")
        return await _refuse(ws, CLOSE_TENANT_DISABLED, "tenant is disabled")
    if state.active_by_tenant.get(tenant.name, 0) >= tenant.max_sessions:
        metrics.reject(tenant.name, "session_limit")
        return await _refuse(ws, CLOSE_TOO_MANY_SESSIONS, "tenant is at its concurrent-session limit")

    # Take the slot before the first await, so concurrent connects cannot overshoot the limit.
    state.active_by_tenant[tenant.name] = state.active_by_tenant.get(tenant.name, 0) + 1
    try:
        try:
            backend = await app[backends_key].for_tenant(tenant.name, tenant.memory)
            session = Session(
                ws=ws,
                claims=claims,
                tenant=tenant,
                backend=backend,
                deps=app[deps_key],
                serializer=requested or claims.serializer or "protobuf",
                prefetch=prefetch.task if prefetch else None,
                accepted_at=accepted_at,
            )
        except Exception:
            metrics.reject(tenant.name, "internal_error")
            log.exception("ws.session_setup_failed")
            return await _refuse(ws, WSCloseCode.INTERNAL_ERROR, "internal error")
        state.sessions.add(session)
        try:
            await session.run()
        finally:
            state.sessions.discard(session)
    finally:
        state.active_by_tenant[tenant.name] -= 1
    return ws


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    app = request.app
    if app[state_key].draining:
        return web.json_response({"ready": False, "reason": "draining"}, status=503)
    if not await app[backends_key].ready():
        return web.json_response({"ready": False, "reason": "memory backend unreachable"}, status=503)
    return web.json_response({"ready": True})


@web.middleware
async def fresh_log_context(request: web.Request, handler: Any) -> web.StreamResponse:
    """Requests on one keep-alive connection share a task; never let one's tenant tag the next."""
    structlog.contextvars.clear_contextvars()
    try:
        response: web.StreamResponse = await handler(request)
        return response
    finally:
        structlog.contextvars.clear_contextvars()


def setup(app: web.Application) -> None:
    app.middlewares.append(fresh_log_context)
    app.router.add_post("/start", start)
    app.router.add_get("/ws-client/{token}", websocket)
    app.router.add_get("/ws", websocket)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", make_aiohttp_handler(app[metrics_key].registry))
