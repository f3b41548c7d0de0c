"""Twilio phone calls: the voice webhook answers with TwiML that connects a Media Stream, and the
stream is a voice session of the number's tenant.

``POST /telephony/twilio/{tenant}`` (the number's "A call comes in" webhook):

1. ``X-Twilio-Signature`` must be Twilio's, under the tenant's Auth Token (``telephony.twilio.
   auth_token_env``), else 403 ``bad_signature``: the webhook is public, and it opens sessions.
2. The caller's number becomes the session's ``user_id`` (``gateway.telephony.caller``), the call's SID
   its ``run_id``; the call takes one of the tenant's sessions (a tenant at its limit, or over its
   start rate, answers ``<Reject reason="busy"/>``: the caller hears busy, Twilio logs nothing as
   failed). The session is assembled now, like a ``/start``'s, and starts recalling and synthesising
   its greeting (``gateway.pipeline.pregreeting``) while Twilio reads the answer and connects.
3. The answer is ``<Connect><Stream url="wss://…/telephony/twilio/ws/{token}">``: the session token in
   the path, because a ``<Stream>`` URL cannot carry a query string (Twilio error 31920).

``GET /telephony/twilio/ws/{token}`` (the stream's WebSocket upgrade), refused before the upgrade with
an HTTP status, as Twilio reads it: the signature over the ``wss://`` URL (403 ``bad_signature``), the
token and its single use (403 ``bad_token``). Then the socket goes to the session assembled at the
webhook (built here if the stream reached another replica), which greets as the stream starts.

What a log line may say of a call: the tenant, the session, ``caller`` (a keyed hash of the number,
``gateway.telephony.caller``), never the number. Metrics never name a caller.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from typing import Any
from xml.sax.saxutils import quoteattr

import structlog
from aiohttp import web

from gateway.cluster import ClusterUnavailable
from gateway.keys import (
    backends_key,
    deps_key,
    metrics_key,
    registry_key,
    settings_key,
    tenants_key,
    tokens_key,
)
from gateway.logging import get_logger
from gateway.pipeline import greeting as greetings
from gateway.pipeline.session import Session
from gateway.routes import reject, socket_handle, until_done, ws_base
from gateway.telephony.caller import identify
from gateway.telephony.media import TwilioMedia
from gateway.telephony.signature import HEADER, candidate_urls, valid
from gateway.tenants import TenantConfig, TwilioSettings
from gateway.tokens import SessionClaims, TokenError
from memory.scope import MemoryScope

log = get_logger(__name__)

SERIALIZER = "twilio"
TWIML = "application/xml"
RETRY_LATER = {"Retry-After": "5"}
BUSY = '<?xml version="1.0" encoding="UTF-8"?><Response><Reject reason="busy"/></Response>'


def _twiml(stream_url: str) -> str:
    return (
        '<?xml version="1.0" encoding="UTF-8"?><Response><Connect>'
        f"<Stream url={quoteattr(stream_url)}/>"
        "</Connect></Response>"
    )


def _busy(request: web.Request, tenant: str, reason: str) -> web.Response:
    """The caller hears busy: counted and logged as a refusal, answered as Twilio expects (200)."""
    request.app[metrics_key].reject(tenant, reason)
    log.info("http.rejected", route="/telephony/twilio/{tenant}", reason=reason, status=200)
    return web.Response(text=BUSY, content_type=TWIML)


def _auth_token(tenant: TenantConfig | None) -> tuple[TwilioSettings, str] | None:
    """The tenant's Twilio settings and Auth Token, if it takes calls and the token is set."""
    if tenant is None or tenant.telephony.twilio is None:
        return None
    settings = tenant.telephony.twilio
    token = os.environ.get(settings.auth_token_env)
    if not token:
        log.warning("telephony.not_configured", env=settings.auth_token_env)
        return None
    return settings, token


def _signed(request: web.Request, auth_token: str, params: Mapping[str, Any] | None, *, ws: bool) -> bool:
    urls = candidate_urls(request, request.app[settings_key].public_url, websocket=ws)
    return valid(auth_token, request.headers.get(HEADER), urls, params)


def _cluster_unavailable(request: web.Request, tenant: str) -> web.Response:
    return reject(request, tenant, "cluster_unavailable", 503, "session state unavailable", RETRY_LATER)


def _bad_signature(request: web.Request, tenant: str | None) -> web.Response:
    return reject(request, tenant, "bad_signature", 403, "missing or invalid X-Twilio-Signature")


async def webhook(request: web.Request) -> web.StreamResponse:
    app = request.app
    registry = app[registry_key]
    if registry.draining:
        # Twilio tries the number's fallback URL (the load balancer: another replica) on a 5xx.
        return reject(request, None, "draining", 503, "server is draining", {"Retry-After": "1"})
    tenant = app[tenants_key].get(request.match_info["tenant"])
    configured = _auth_token(tenant)
    try:
        form = await request.post()
    except ValueError:
        form = None
    if tenant is None or configured is None or form is None:
        return _bad_signature(request, None)
    twilio, auth_token = configured
    if not _signed(request, auth_token, form, ws=False):
        return _bad_signature(request, tenant.name)
    structlog.contextvars.bind_contextvars(tenant=tenant.name)
    if not tenant.active:
        return reject(request, tenant.name, "tenant_disabled", 403, "tenant is disabled")
    number, call_sid = form.get("From"), form.get("CallSid")
    try:
        caller = identify(
            number=number if isinstance(number, str) else None,
            call_sid=call_sid if isinstance(call_sid, str) else "",
            settings=twilio,
        )
    except ValueError as e:
        return reject(request, tenant.name, "bad_request", 400, str(e))
    if await registry.allow_start(tenant):
        return _busy(request, tenant.name, "rate_limited")
    try:
        backend = await app[backends_key].for_tenant(tenant.name, tenant.memory)
    except Exception:
        log.exception("telephony.memory_unavailable")
        return reject(
            request, tenant.name, "memory_unavailable", 503, "memory backend unavailable", RETRY_LATER
        )
    token, claims = app[tokens_key].issue(
        tenant=tenant.name,
        user_id=caller.user_id,
        agent_id=caller.agent_id,
        run_id=caller.run_id,
        serializer=SERIALIZER,
    )
    structlog.contextvars.bind_contextvars(session_id=claims.session_id)
    try:
        lease = await registry.reserve(tenant, claims.session_id)
    except ClusterUnavailable:
        return _cluster_unavailable(request, tenant.name)
    if lease is None:
        return _busy(request, tenant.name, "session_limit")
    scope = MemoryScope(tenant.name, caller.user_id, caller.agent_id, caller.run_id)
    prefetch = greetings.start_prefetch(backend, scope, tenant)
    try:
        session = _session(app, tenant, claims, backend, prefetch, prestarted=True)
    except Exception:
        await registry.release(lease)
        prefetch.cancel()
        log.exception("telephony.session_failed")
        return reject(request, tenant.name, "internal_error", 500, "internal error")
    registry.prestart(session, lease)
    # Never the number: a keyed hash, the same for every call of this caller (gateway.telephony.caller).
    tag = app[tokens_key].tag(tenant.name, caller.number) if caller.number else "withheld"
    log.info("telephony.call", caller=tag)
    stream = f"{ws_base(request)}/telephony/twilio/ws/{token}"
    return web.Response(text=_twiml(stream), content_type=TWIML)


def _session(
    app: web.Application,
    tenant: TenantConfig,
    claims: SessionClaims,
    backend: object,
    prefetch: asyncio.Task[object] | None,
    *,
    prestarted: bool,
) -> Session:
    twilio = tenant.telephony.twilio
    assert twilio is not None and claims.run_id is not None
    call = TwilioMedia(
        call_sid=claims.run_id,
        auth_token=os.environ.get(twilio.auth_token_env),
        http_client=app[deps_key].http_client,
        api_base_url=twilio.api_base_url,
        hang_up=twilio.hang_up,
    )
    return Session(
        claims=claims,
        tenant=tenant,
        backend=backend,  # type: ignore[arg-type]
        deps=app[deps_key],
        serializer=SERIALIZER,
        prefetch=prefetch,
        prestarted=prestarted,
        call=call,
    )


async def media_stream(request: web.Request) -> web.StreamResponse:
    app = request.app
    settings = app[settings_key]
    registry = app[registry_key]
    if registry.draining:
        return reject(request, None, "draining", 503, "server is draining", {"Retry-After": "1"})
    try:
        claims = app[tokens_key].verify(request.match_info["token"])
    except TokenError as e:
        log.info("ws.bad_token", detail=str(e))
        return reject(request, None, "bad_token", 403, "invalid, expired or reused token")
    tenant = app[tenants_key].get(claims.tenant)
    configured = _auth_token(tenant)
    if tenant is None or configured is None or claims.serializer != SERIALIZER or claims.run_id is None:
        return _bad_signature(request, None)
    if not _signed(request, configured[1], None, ws=True):
        return _bad_signature(request, tenant.name)
    structlog.contextvars.bind_contextvars(tenant=tenant.name, session_id=claims.session_id)
    if not tenant.active:
        return reject(request, tenant.name, "tenant_disabled", 403, "tenant is disabled")
    try:
        fresh = await registry.spend_token(claims)
    except ClusterUnavailable:
        return _cluster_unavailable(request, tenant.name)
    if not fresh:
        return reject(request, tenant.name, "bad_token", 403, "invalid, expired or reused token")
    pending, lease = await registry.claim(claims.session_id, SERIALIZER)
    session = pending.session if pending is not None else None
    if session is None:
        # The stream reached a replica that did not answer the webhook (or the session gave up
        # waiting): build it here, in the slot the webhook's took, if any.
        registry.count_missed(tenant.name)
        try:
            if lease is None:
                lease = await registry.reserve(tenant, claims.session_id)
        except ClusterUnavailable:
            return _cluster_unavailable(request, tenant.name)
        if lease is None:
            return reject(request, tenant.name, "session_limit", 429, "tenant is at its session limit")
        try:
            backend = await app[backends_key].for_tenant(tenant.name, tenant.memory)
            session = _session(app, tenant, claims, backend, None, prestarted=False)
        except Exception:
            await registry.release(lease)
            log.exception("telephony.session_failed")
            return reject(request, tenant.name, "internal_error", 500, "internal error")
    ws = web.WebSocketResponse(max_msg_size=settings.max_message_bytes, heartbeat=settings.heartbeat_secs)
    await ws.prepare(request)
    accepted_at = asyncio.get_running_loop().time()
    socket = socket_handle(request, ws)
    session.attach(socket, accepted_at)
    if pending is not None:
        task = pending.task
    else:
        assert lease is not None
        task = registry.launch(session, lease)
    await until_done(socket, task)
    return ws


def setup(app: web.Application) -> None:
    app.router.add_post("/telephony/twilio/{tenant}", webhook)
    app.router.add_get("/telephony/twilio/ws/{token}", media_stream)
