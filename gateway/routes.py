"""HTTP and WebSocket routes: ``/start``, ``/ws-client/{token}`` (and ``/ws?token=``), the data-subject
API ``/v1/memories``, health and metrics.

Every refusal has a documented status or close code (docs/architecture.md §2), a
``gateway_rejections_total{tenant,reason}`` increment and a log event — never a secret, token, ID or
message text, and never internals in the body. A tenant is only ever told about itself: errors name
no other tenant, and a valid key of tenant B sees only B's data whatever IDs it asks about.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

from gateway import closecodes
from gateway.cluster import ClusterUnavailable, Lease
from gateway.keys import (
    backends_key,
    deps_key,
    keyless_start_key,
    metrics_key,
    registry_key,
    settings_key,
    tenants_key,
    tokens_key,
)
from gateway.logging import get_logger
from gateway.pipeline import greeting as greetings
from gateway.pipeline.serializers import SERIALIZERS
from gateway.pipeline.session import Session
from gateway.pipeline.transport import SocketHandle
from gateway.tenants import TenantConfig
from gateway.tokens import SessionClaims, TokenError, TokenExpired
from gateway.workers import worker_port
from memory.scope import ID_KEYS, ID_PATTERN, MemoryScope

log = get_logger(__name__)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def _route(request: web.Request) -> str:
    """The route's pattern (``/ws-client/{token}``), never the path: a path can carry a token."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def reject(
    request: web.Request,
    tenant: str | None,
    reason: str,
    status: int,
    message: str,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """Count, log and answer one refused HTTP request."""
    request.app[metrics_key].reject(tenant, reason)
    log.info("http.rejected", route=_route(request), reason=reason, status=status)
    return _error(status, message, headers)


def memory_unavailable(request: web.Request, tenant: str) -> web.Response:
    return reject(
        request, tenant, "memory_unavailable", 503, "memory backend unavailable", {"Retry-After": "5"}
    )


async def _refuse(
    request: web.Request, ws: web.WebSocketResponse, tenant: str | None, reason: str, code: int, text: str
) -> web.WebSocketResponse:
    """Count, log and close one refused WebSocket (after the upgrade, so browsers see the code)."""
    request.app[metrics_key].reject(tenant, reason)
    log.info("ws.rejected", reason=reason, close_code=code)
    await ws.close(code=code, message=text.encode())
    return ws


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _ids(body: Any) -> dict[str, str | None]:
    ids: dict[str, str | None] = {}
    for key in ID_KEYS:
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


def ws_base(request: web.Request) -> str:
    """Where the client's WebSocket should go: the public URL, else the host it reached us at — on this
    worker's own port under ``serve --workers``, so the socket finds the session started here."""
    settings = request.app[settings_key]
    if settings.public_url:
        return re.sub(r"^http", "ws", settings.public_url.rstrip("/"))
    scheme = "wss" if request.secure else "ws"
    if settings.worker_index is not None:
        origin = request.url.origin().with_port(worker_port(settings, settings.worker_index))
        return f"{scheme}://{origin.raw_authority}"
    return f"{scheme}://{request.host}"


def authenticate(request: web.Request) -> TenantConfig | web.Response:
    """The active tenant whose API key the request bears, or the refusal to send."""
    tenant = request.app[tenants_key].authenticate(_bearer(request))
    if tenant is None:
        return reject(request, None, "unauthorized", 401, "missing or unknown API key")
    structlog.contextvars.bind_contextvars(tenant=tenant.name)
    if not tenant.active:
        return reject(request, tenant.name, "tenant_disabled", 403, "tenant is disabled")
    return tenant


def _cluster_unavailable(request: web.Request, tenant: str) -> web.Response:
    return reject(
        request, tenant, "cluster_unavailable", 503, "session state unavailable", {"Retry-After": "5"}
    )


def _at_limit(request: web.Request, tenant: str) -> web.Response:
    return reject(
        request,
        tenant,
        "session_limit",
        429,
        "tenant is at its concurrent-session limit",
        {"Retry-After": "1"},
    )


def draining(request: web.Request) -> web.Response | None:
    """The refusal of a new session while this replica drains, if it does."""
    if not request.app[registry_key].draining:
        return None
    return reject(
        request, None, "draining", 503, "server is draining; retry on another replica", {"Retry-After": "1"}
    )


async def start(request: web.Request) -> web.StreamResponse:
    """``POST /start`` with the tenant's API key. In demo mode, one without an ``Authorization`` header is
    the demo's start (``gateway.web.demo``): Pipecat's prebuilt UI posts ``/start`` with no key."""
    refusal = draining(request)
    if refusal is not None:
        return refusal
    keyless = request.app.get(keyless_start_key)
    if keyless is not None and "Authorization" not in request.headers:
        return await keyless(request)
    tenant = authenticate(request)
    if isinstance(tenant, web.Response):
        return tenant
    return await start_session(request, tenant, request.json)


async def start_session(
    request: web.Request, tenant: TenantConfig, read_payload: Callable[[], Awaitable[Any]]
) -> web.Response:
    """What ``/start`` does for a tenant once it is known: the rate, the body (``read_payload``, in the
    ``/start`` shape), the token, the slot and the prestart. The demo's start takes this path too."""
    app = request.app
    registry = app[registry_key]
    retry_after = await registry.allow_start(tenant)
    if retry_after:
        return reject(
            request,
            tenant.name,
            "rate_limited",
            429,
            "too many /start requests",
            {"Retry-After": str(retry_after)},
        )
    try:
        try:
            payload = await read_payload()
        except (ValueError, RecursionError) as e:  # not JSON, or JSON Python cannot take in (4,300+ digits)
            raise ValueError("body is not valid JSON") from e
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
        return reject(request, tenant.name, "bad_request", 400, str(e))
    try:
        backend = await app[backends_key].for_tenant(tenant.name, tenant.memory)
    except Exception:
        log.exception("start.memory_unavailable")
        return memory_unavailable(request, tenant.name)

    token, claims = app[tokens_key].issue(tenant=tenant.name, serializer=serializer, **ids)
    structlog.contextvars.bind_contextvars(session_id=claims.session_id)
    settings = app[settings_key]
    # The session starts now (as Pipecat's runner starts the bot at /start) and takes its slot now:
    # a tenant at its limit anywhere in the cluster is told so here, before any work is done for it.
    lease: Lease | None = None
    if settings.prestart_secs:
        try:
            lease = await registry.reserve(tenant, claims.session_id)
        except ClusterUnavailable:
            return _cluster_unavailable(request, tenant.name)
        if lease is None:
            return _at_limit(request, tenant.name)
    elif registry.active(tenant.name) >= tenant.max_sessions:
        return _at_limit(request, tenant.name)  # this replica is full; the connect re-checks everywhere
    scope = MemoryScope(tenant.name, ids["user_id"], ids["agent_id"], ids["run_id"])
    prefetch = greetings.start_prefetch(backend, scope, tenant)
    if lease is None or not await _prestart(app, tenant, backend, claims, prefetch, lease):
        registry.hold_prefetch(claims.session_id, prefetch)
    query = f"?serializer={serializer}" if serializer else ""
    log.info("start.accepted")
    return web.json_response(
        {
            "wsUrl": f"{ws_base(request)}/ws-client/{token}{query}",
            "token": token,
            "sessionId": claims.session_id,
        }
    )


async def _prestart(
    app: web.Application,
    tenant: TenantConfig,
    backend: Any,
    claims: SessionClaims,
    prefetch: asyncio.Task[Any],
    lease: Lease,
) -> bool:
    """Assemble the session now, so that it is ready when the client connects.

    As Pipecat's development runner starts the bot at ``/start``: the session's set-up overlaps the
    client's connect instead of following it (a voice session starts its pipeline now; a text one
    greets first, ``gateway.pipeline.session``). The session holds ``lease``; if no client attaches
    within ``prestart_secs`` it ends (``unclaimed``) and frees it, and a later connect with the
    still-valid token gets a session built at connect, as on a replica that never saw the /start.
    """
    registry = app[registry_key]
    try:
        session = Session(
            claims=claims,
            tenant=tenant,
            backend=backend,
            deps=app[deps_key],
            serializer=claims.serializer or "protobuf",
            prefetch=prefetch,
            prestarted=True,
        )
    except Exception:
        await registry.release(lease)
        log.exception("start.prestart_failed")
        return False
    registry.prestart(session, lease)
    return True


def _claims_match(request: web.Request, claims: SessionClaims) -> bool:
    """IDs named in the URL (some clients repeat them) must be the token's own; never a substitute."""
    bound = {"user_id": claims.user_id, "agent_id": claims.agent_id, "run_id": claims.run_id}
    for key, value in request.query.items():
        if key in bound and value != (bound[key] or ""):
            return False
        if key in ("tenant", "tenant_id") and value != claims.tenant:
            return False
    return True


def _abort(request: web.Request) -> None:
    """Drop the TCP connection under a WebSocket that can no longer be closed politely."""
    if request.transport is not None:
        request.transport.abort()


def _write_room(request: web.Request) -> int:
    """Bytes the connection takes now without pausing its writer: 0 while its buffer is above the
    low-water mark (the writer may still be paused), else what is left below the high-water mark."""
    transport = request.transport
    if transport is None or transport.is_closing():
        return 0
    low, high = transport.get_write_buffer_limits()
    buffered = transport.get_write_buffer_size()
    return high - buffered if buffered <= low else 0


def socket_handle(request: web.Request, ws: web.WebSocketResponse) -> SocketHandle:
    """An accepted WebSocket with what only its request can do (drop the connection, tell its room)."""
    return SocketHandle(ws, functools.partial(_abort, request), functools.partial(_write_room, request))


def _admission(
    request: web.Request, tenant: TenantConfig, claims: SessionClaims
) -> tuple[str, int, str] | None:
    """Why a validly-signed token may still not open a session now: (reason, close code, text)."""
    if not _claims_match(request, claims):
        return "bad_token", closecodes.BAD_TOKEN, "invalid, expired or reused token"
    if not tenant.active:
        return "tenant_disabled", closecodes.FORBIDDEN, "tenant is disabled"
    if not tenant.allows_origin(request.headers.get("Origin")):
        return "origin_not_allowed", closecodes.FORBIDDEN, "origin not allowed"
    return None


_AT_LIMIT = ("session_limit", closecodes.TOO_MANY_SESSIONS, "tenant is at its concurrent-session limit")
_UNAVAILABLE = ("cluster_unavailable", closecodes.TRY_AGAIN_LATER, "session state unavailable, retry")


async def websocket(request: web.Request) -> web.StreamResponse:
    app = request.app
    settings = app[settings_key]
    registry = app[registry_key]
    token = request.match_info.get("token") or request.query.get("token", "")
    requested = request.query.get("serializer")
    if requested is not None and requested not in SERIALIZERS:
        return reject(
            request, None, "bad_request", 400, f"serializer must be one of {', '.join(SERIALIZERS)}"
        )

    ws = web.WebSocketResponse(max_msg_size=settings.max_message_bytes, heartbeat=settings.heartbeat_secs)
    await ws.prepare(request)
    accepted_at = asyncio.get_running_loop().time()

    if registry.draining:
        return await _refuse(request, ws, None, "draining", closecodes.GOING_AWAY, "server is draining")
    bad_token = "invalid, expired or reused token"
    expired = False
    try:
        try:
            claims = app[tokens_key].verify(token)
        except TokenExpired:
            # Opens nothing new; it may still resume the session it opened (checked below).
            claims, expired = app[tokens_key].verify(token, expired_ok=True), True
    except TokenError as e:
        log.info("ws.bad_token", detail=str(e))
        return await _refuse(request, ws, None, "bad_token", closecodes.BAD_TOKEN, bad_token)
    tenant: TenantConfig | None = app[tenants_key].get(claims.tenant)
    if tenant is None:
        return await _refuse(request, ws, None, "bad_token", closecodes.BAD_TOKEN, bad_token)
    if claims.serializer not in (None, *SERIALIZERS):
        # A phone call's token (its wire format is Twilio's, gateway.telephony): refused before it is
        # spent or its session claimed, so the call it belongs to goes on.
        return await _refuse(request, ws, tenant.name, "bad_token", closecodes.BAD_TOKEN, bad_token)
    structlog.contextvars.bind_contextvars(tenant=tenant.name, session_id=claims.session_id)
    socket = socket_handle(request, ws)
    # A token already spent (or expired) comes back: its session here may be waiting for its client,
    # whose network dropped (resumption; never two sockets at once: only a detached session resumes).
    detached = registry.detached(claims.session_id)
    if detached is not None and _admission(request, tenant, claims) is None:
        session, task = detached
        if await session.resume(socket, accepted_at):
            await until_done(socket, task)
            return ws
    if expired:
        log.info("ws.bad_token", detail="ExpiredSignatureError")
        return await _refuse(request, ws, tenant.name, "bad_token", closecodes.BAD_TOKEN, bad_token)
    # The token is spent either way (on every replica); its started session or greeting prefetch is
    # used now or never.
    try:
        fresh = await registry.spend_token(claims)
    except ClusterUnavailable:
        fresh = None
    serializer = requested or claims.serializer or "protobuf"
    pending, lease = await registry.claim(claims.session_id, serializer) if fresh else (None, None)
    prefetch = registry.take_prefetch(claims.session_id)
    refusal = (
        _UNAVAILABLE
        if fresh is None
        else ("bad_token", closecodes.BAD_TOKEN, bad_token)
        if not fresh
        else _admission(request, tenant, claims)
    )
    if refusal is None and pending is None and lease is None:
        registry.count_missed(tenant.name)
        # Built here: a slot of its own, or the one a session started for this token holds on
        # another replica (taken over, so it is counted once).
        try:
            lease = await registry.reserve(tenant, claims.session_id)
            refusal = _AT_LIMIT if lease is None else None
        except ClusterUnavailable:
            refusal = _UNAVAILABLE
    if refusal is not None:
        if pending is not None:
            await pending.session.close(closecodes.NORMAL, "refused")
        if lease is not None:
            await registry.release(lease)
        if prefetch is not None:
            prefetch.cancel()
        return await _refuse(request, ws, tenant.name, *refusal)
    if pending is not None:
        pending.session.attach(socket, accepted_at)
        await until_done(socket, pending.task)
        return ws

    assert lease is not None
    try:
        backend = await app[backends_key].for_tenant(tenant.name, tenant.memory)
        session = Session(
            claims=claims,
            tenant=tenant,
            backend=backend,
            deps=app[deps_key],
            serializer=serializer,
            prefetch=prefetch,
        )
        session.attach(socket, accepted_at)
    except Exception:
        await registry.release(lease)
        log.exception("ws.session_setup_failed")
        return await _refuse(
            request, ws, tenant.name, "internal_error", closecodes.INTERNAL_ERROR, "internal error"
        )
    await until_done(socket, registry.launch(session, lease))
    return ws


async def until_done(socket: SocketHandle, session: asyncio.Task[str]) -> None:
    """Keep the handler (and so the socket) open until the session is done with this socket: it
    ended, or the socket dropped and the session waits for its client on another (resumption). The
    session runs in its own task: a handler cancelled with its connection does not cut it short."""
    done = asyncio.ensure_future(socket.done.wait())
    try:
        await asyncio.wait({done, session}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        done.cancel()


async def memories(request: web.Request) -> web.Response:
    """``GET``/``DELETE /v1/memories?user_id=…[&agent_id=…]``: a data subject's memories in this tenant.

    The tenant comes from the API key alone and every ID is namespaced under it, so asking about a
    user of another tenant finds nothing — it cannot even tell whether that user exists there.
    """
    tenant = authenticate(request)
    if isinstance(tenant, web.Response):
        return tenant
    try:
        user_id = request.query.get("user_id")
        if not user_id:
            raise ValueError("user_id is required")
        ids = _ids({"user_id": user_id, "agent_id": request.query.get("agent_id")})
        limit = int(request.query.get("limit", "100"))
        if not 1 <= limit <= 1000:
            raise ValueError("limit must be 1-1000")
    except ValueError as e:
        message = "limit must be 1-1000" if "invalid literal" in str(e) else str(e)
        return reject(request, tenant.name, "bad_request", 400, message)
    scope = MemoryScope(tenant.name, ids["user_id"], ids["agent_id"])
    answer = await data_subject(request, tenant, scope, limit)
    if isinstance(answer, web.Response):
        return answer
    return web.json_response({"user_id": ids["user_id"], "agent_id": ids["agent_id"], **answer})


async def data_subject(
    request: web.Request, tenant: TenantConfig, scope: MemoryScope, limit: int
) -> dict[str, Any] | web.Response:
    """``GET``: the newest ``limit`` memories of ``scope`` (``count``, ``results``); ``DELETE``: erase them
    everywhere (``deleted``). Or the refusal. ``/v1/memories`` and the demo's memory routes both go here."""
    try:
        backend = await request.app[backends_key].for_tenant(tenant.name, tenant.memory)
        if request.method == "DELETE":
            deleted = await backend.forget(scope)
            log.info("memories.forgotten", count=deleted)
            return {"deleted": deleted}
        found = await backend.recent(scope, limit)
    except Exception:
        log.exception("memories.failed", method=request.method)
        return memory_unavailable(request, tenant.name)
    results = [
        {
            "id": m.get("id"),
            "memory": m.get("memory"),
            "role": m.get("role"),
            "agent_id": scope.strip(m.get("agent_id")),
            "run_id": scope.strip(m.get("run_id")),
            "created_at": m.get("created_at"),
            "updated_at": m.get("updated_at"),
        }
        for m in found
    ]
    return {"count": len(results), "results": results}


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready unless draining or the memory backend is unreachable.

    Redis being unreachable does not make a replica unready: every replica shares that fate, and taking
    them all out of the load balancer would turn a clear 503 at ``/start`` into refused connections
    while live sessions carry on. It is reported here and alerted on (``gateway_session_state_up``).
    """
    app = request.app
    registry = app[registry_key]
    if registry.draining:
        return web.json_response({"ready": False, "reason": "draining"}, status=503)
    if not await app[backends_key].ready():
        return web.json_response({"ready": False, "reason": "memory backend unreachable"}, status=503)
    return web.json_response({"ready": True, "sessions": registry.status()})


@web.middleware
async def request_context(request: web.Request, handler: Any) -> web.StreamResponse:
    """Fresh log context per request, and a bare 500 for anything unexpected.

    Requests on one keep-alive connection share a task: never let one's tenant tag the next. An
    unexpected exception is logged with its traceback here and answered without one.
    """
    structlog.contextvars.clear_contextvars()
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except web.HTTPException:
        raise
    except Exception:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            raise  # the socket may be open already; the WebSocket handler closes with 1011 itself
        log.exception("http.internal_error", route=_route(request))
        tenant = structlog.contextvars.get_contextvars().get("tenant")
        return reject(request, tenant, "internal_error", 500, "internal error")
    finally:
        structlog.contextvars.clear_contextvars()


def setup(app: web.Application) -> None:
    app.middlewares.append(request_context)
    app.router.add_post("/start", start)
    app.router.add_get("/ws-client/{token}", websocket)
    app.router.add_get("/ws", websocket)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/v1/memories", memories)
    app.router.add_delete("/v1/memories", memories)
    if app[settings_key].metrics_port is None:
        app.router.add_get("/metrics", make_aiohttp_handler(app[metrics_key].registry))
