"""HTTP and WebSocket routes: ``/start``, ``/ws-client/{token}`` (and ``/ws?token=``), the data-subject
API ``/v1/memories``, health and metrics.

Every refusal has a documented status or close code (ARCHITECTURE.md §2), a
``gateway_rejections_total{tenant,reason}`` increment and a log event — never a secret, token, ID or
message text, and never internals in the body. A tenant is only ever told about itself: errors name
no other tenant, and a valid key of tenant B sees only B's data whatever IDs it asks about.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
from typing import Any

import structlog
from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

from gateway import closecodes
from gateway import greeting as greetings
from gateway.app import (
    GatewayState,
    PendingSession,
    Prefetch,
    backends_key,
    deps_key,
    limiter_key,
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
from gateway.tokens import SessionClaims, TokenError
from memory.backends import TenantMemory
from memory.scope import MemoryScope

log = get_logger(__name__)

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+=-]{0,127}$")
ID_KEYS = ("user_id", "agent_id", "run_id")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def _route(request: web.Request) -> str:
    """The route's pattern (``/ws-client/{token}``), never the path: a path can carry a token."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def _reject(
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


def _memory_unavailable(request: web.Request, tenant: str) -> web.Response:
    return _reject(
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


def _ws_base(request: web.Request) -> str:
    public = request.app[settings_key].public_url
    if public:
        return re.sub(r"^http", "ws", public.rstrip("/"))
    scheme = "wss" if request.secure else "ws"
    return f"{scheme}://{request.host}"


def _authenticate(request: web.Request) -> TenantConfig | web.Response:
    """The active tenant whose API key the request bears, or the refusal to send."""
    tenant = request.app[tenants_key].authenticate(_bearer(request))
    if tenant is None:
        return _reject(request, None, "unauthorized", 401, "missing or unknown API key")
    structlog.contextvars.bind_contextvars(tenant=tenant.name)
    if not tenant.active:
        return _reject(request, tenant.name, "tenant_disabled", 403, "tenant is disabled")
    return tenant


async def start(request: web.Request) -> web.Response:
    app = request.app
    state = app[state_key]
    if state.draining:
        return _reject(
            request,
            None,
            "draining",
            503,
            "server is draining; retry on another replica",
            {"Retry-After": "1"},
        )
    tenant = _authenticate(request)
    if isinstance(tenant, web.Response):
        return tenant
    retry_after = app[limiter_key].acquire(tenant.name, tenant.start_rate)
    if retry_after:
        return _reject(
            request,
            tenant.name,
            "rate_limited",
            429,
            "too many /start requests",
            {"Retry-After": str(retry_after)},
        )
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
        message = "body is not valid JSON" if isinstance(e, json.JSONDecodeError) else str(e)
        return _reject(request, tenant.name, "bad_request", 400, message)
    if state.active_by_tenant.get(tenant.name, 0) >= tenant.max_sessions:
        return _reject(
            request,
            tenant.name,
            "session_limit",
            429,
            "tenant is at its concurrent-session limit",
            {"Retry-After": "1"},
        )
    try:
        backend = await app[backends_key].for_tenant(tenant.name, tenant.memory)
    except Exception:
        log.exception("start.memory_unavailable")
        return _memory_unavailable(request, tenant.name)

    token, claims = app[tokens_key].issue(tenant=tenant.name, serializer=serializer, **ids)
    structlog.contextvars.bind_contextvars(session_id=claims.session_id)
    loop = asyncio.get_running_loop()
    state.prune_prefetches(loop.time())
    scope = MemoryScope(tenant.name, ids["user_id"], ids["agent_id"], ids["run_id"])
    prefetch = greetings.start_prefetch(backend, scope, tenant.greeting)
    settings = app[settings_key]
    if not (settings.prestart_secs and _prestart(app, tenant, backend, claims, prefetch)):
        state.prefetches[claims.session_id] = Prefetch(
            task=prefetch, expires_at=loop.time() + settings.prefetch_ttl_secs
        )
    query = f"?serializer={serializer}" if serializer else ""
    log.info("start.accepted")
    return web.json_response(
        {
            "wsUrl": f"{_ws_base(request)}/ws-client/{token}{query}",
            "token": token,
            "sessionId": claims.session_id,
        }
    )


def _prestart(
    app: web.Application,
    tenant: TenantConfig,
    backend: TenantMemory,
    claims: SessionClaims,
    prefetch: asyncio.Task[Any],
) -> bool:
    """Assemble and start the session now, so that its pipeline is up when the client connects.

    As Pipecat's development runner starts the bot at ``/start``: the pipeline's start-up overlaps the
    client's connect instead of following it. The session takes its tenant slot now; if no client
    attaches within ``prestart_secs`` it ends (``unclaimed``) and frees it, and a later connect with
    the still-valid token gets a session built at connect, as on a replica that never saw the /start.
    """
    state = app[state_key]
    serializer = claims.serializer or "protobuf"
    active = state.active_by_tenant.get(tenant.name, 0)
    if active >= tenant.max_sessions:
        return False  # taken since the check; the connect will find room or refuse with 4029
    state.active_by_tenant[tenant.name] = active + 1
    try:
        session = Session(
            ws=None,
            claims=claims,
            tenant=tenant,
            backend=backend,
            deps=app[deps_key],
            serializer=serializer,
            prefetch=prefetch,
            accepted_at=None,
        )
    except Exception:
        state.active_by_tenant[tenant.name] -= 1
        log.exception("start.prestart_failed")
        return False
    state.sessions.add(session)  # from now on, draining closes it too
    wait = tenant.greeting.deadline_secs or app[settings_key].greeting_deadline_secs
    task = asyncio.create_task(
        _run_session(state, tenant.name, session, after=prefetch, wait=wait), name="session"
    )
    entry = PendingSession(session=session, task=task)
    state.pending[claims.session_id] = entry
    state.session_tasks.add(task)
    task.add_done_callback(state.session_tasks.discard)
    task.add_done_callback(lambda _: _drop_pending(state, claims.session_id, entry))
    return True


def _drop_pending(state: GatewayState, session_id: str, entry: PendingSession) -> None:
    if state.pending.get(session_id) is entry:
        del state.pending[session_id]


async def _run_session(
    state: GatewayState,
    tenant: str,
    session: Session,
    after: asyncio.Task[Any] | None = None,
    wait: float = 0.0,
) -> str:
    """Run one session to its end; the caller has already taken the tenant slot this releases.

    ``after``: when pipelines are already starting at the ``start_concurrency`` limit, let this task
    (the greeting's memory listing, one indexed query on this loop) finish first, for at most ``wait``
    seconds. In a reconnect storm that keeps hundreds of pipelines starting at once from starving the
    listings, which would otherwise miss the greeting deadline and greet everyone generically. With a
    free start slot the pipeline starts at once: the query is in flight in PostgreSQL meanwhile, and
    waiting for it would put its round trip on the way to the greeting (about 1 ms of the 5 ms from
    WebSocket connect to greeting on loopback).
    """
    state.sessions.add(session)
    try:
        if after is not None and state.starting.locked():
            await asyncio.wait({after}, timeout=wait)
        run: asyncio.Future[str] | None = None
        try:
            async with state.starting:
                # A start slot is held only until the pipeline is up: a burst of connects starts a
                # few pipelines at a time, in arrival order, instead of all of them at once, each
                # slowed by all the others (and the loop stays responsive to live sessions).
                if session.closed:
                    return "shutdown"
                run = asyncio.ensure_future(session.run())
                started = asyncio.ensure_future(session.started())
                try:
                    await asyncio.wait({run, started}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    started.cancel()
            return await run
        except asyncio.CancelledError:
            if run is not None:
                run.cancel()
            raise
    finally:
        state.sessions.discard(session)
        state.active_by_tenant[tenant] -= 1


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


def _admission(
    request: web.Request, tenant: TenantConfig, claims: SessionClaims, active: int
) -> tuple[str, int, str] | None:
    """Why a validly-signed token may still not open a session now: (reason, close code, text)."""
    if not _claims_match(request, claims):
        return "bad_token", closecodes.BAD_TOKEN, "invalid, expired or reused token"
    if not tenant.active:
        return "tenant_disabled", closecodes.FORBIDDEN, "tenant is disabled"
    if not tenant.allows_origin(request.headers.get("Origin")):
        return "origin_not_allowed", closecodes.FORBIDDEN, "origin not allowed"
    if active >= tenant.max_sessions:
        return "session_limit", closecodes.TOO_MANY_SESSIONS, "tenant is at its concurrent-session limit"
    return None


async def websocket(request: web.Request) -> web.StreamResponse:
    app = request.app
    settings = app[settings_key]
    state = app[state_key]
    token = request.match_info.get("token") or request.query.get("token", "")
    requested = request.query.get("serializer")
    if requested is not None and requested not in SERIALIZERS:
        return _reject(
            request, None, "bad_request", 400, f"serializer must be one of {', '.join(SERIALIZERS)}"
        )

    ws = web.WebSocketResponse(max_msg_size=settings.max_message_bytes, heartbeat=settings.heartbeat_secs)
    await ws.prepare(request)
    accepted_at = asyncio.get_running_loop().time()

    if state.draining:
        return await _refuse(request, ws, None, "draining", closecodes.GOING_AWAY, "server is draining")
    bad_token = "invalid, expired or reused token"
    try:
        claims = app[tokens_key].verify(token)
    except TokenError as e:
        log.info("ws.bad_token", detail=str(e))
        return await _refuse(request, ws, None, "bad_token", closecodes.BAD_TOKEN, bad_token)
    tenant: TenantConfig | None = app[tenants_key].get(claims.tenant)
    if tenant is None:
        return await _refuse(request, ws, None, "bad_token", closecodes.BAD_TOKEN, bad_token)
    structlog.contextvars.bind_contextvars(tenant=tenant.name, session_id=claims.session_id)
    # The token is spent either way; its started session or greeting prefetch is used now or never.
    serializer = requested or claims.serializer or "protobuf"
    pending = state.pending.pop(claims.session_id, None)
    active = state.active_by_tenant.get(tenant.name, 0)
    if pending is not None and (pending.task.done() or pending.session.serializer != serializer):
        # Ended meanwhile, or the client asked for another wire format than /start: start afresh,
        # in the slot the started session is about to give back.
        if not pending.task.done():
            active -= 1
        await pending.session.close(closecodes.NORMAL, "replaced")
        pending = None
    prefetch = state.prefetches.pop(claims.session_id, None)
    # A started session holds its slot already; only a session built now needs a free one.
    refusal = _admission(request, tenant, claims, 0 if pending is not None else active)
    if refusal is not None:
        if pending is not None:
            await pending.session.close(closecodes.NORMAL, "refused")
        if prefetch is not None:
            prefetch.task.cancel()
        return await _refuse(request, ws, tenant.name, *refusal)
    abort = functools.partial(_abort, request)
    write_room = functools.partial(_write_room, request)
    if pending is not None:
        pending.session.attach(ws, accepted_at, abort, write_room)
        # The session runs in its own task (started at /start); this handler keeps the socket open.
        await asyncio.shield(pending.task)
        return ws

    # Take the slot before the first await, so concurrent connects cannot overshoot the limit.
    state.active_by_tenant[tenant.name] = state.active_by_tenant.get(tenant.name, 0) + 1
    try:
        backend = await app[backends_key].for_tenant(tenant.name, tenant.memory)
        session = Session(
            ws=ws,
            claims=claims,
            tenant=tenant,
            backend=backend,
            deps=app[deps_key],
            serializer=serializer,
            prefetch=prefetch.task if prefetch else None,
            accepted_at=accepted_at,
            abort=abort,
            write_room=write_room,
        )
    except Exception:
        state.active_by_tenant[tenant.name] -= 1
        log.exception("ws.session_setup_failed")
        return await _refuse(
            request, ws, tenant.name, "internal_error", closecodes.INTERNAL_ERROR, "internal error"
        )
    await _run_session(state, tenant.name, session)
    return ws


async def memories(request: web.Request) -> web.Response:
    """``GET``/``DELETE /v1/memories?user_id=…[&agent_id=…]``: a data subject's memories in this tenant.

    The tenant comes from the API key alone and every ID is namespaced under it, so asking about a
    user of another tenant finds nothing — it cannot even tell whether that user exists there.
    """
    app = request.app
    tenant = _authenticate(request)
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
        return _reject(request, tenant.name, "bad_request", 400, message)
    scope = MemoryScope(tenant.name, ids["user_id"], ids["agent_id"])
    try:
        backend = await app[backends_key].for_tenant(tenant.name, tenant.memory)
        if request.method == "DELETE":
            deleted = await backend.forget(scope)
            log.info("memories.forgotten", count=deleted)
            return web.json_response(
                {"user_id": ids["user_id"], "agent_id": ids["agent_id"], "deleted": deleted}
            )
        found = await backend.recent(scope, limit)
    except Exception:
        log.exception("memories.failed", method=request.method)
        return _memory_unavailable(request, tenant.name)
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
    return web.json_response(
        {"user_id": ids["user_id"], "agent_id": ids["agent_id"], "count": len(results), "results": results}
    )


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
        return _reject(request, tenant, "internal_error", 500, "internal error")
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
