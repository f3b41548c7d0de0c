"""Demo mode: talk to the gateway from a browser with no backend of your own (``GATEWAY_DEMO``).

Every browser is one user of the demo tenant (``GATEWAY_DEMO_TENANT``, ``default``), named by a random
ID in an HttpOnly, SameSite=Lax cookie. The gateway stands in for the tenant's backend: it starts
sessions for that user without the tenant's key ever reaching the browser, and answers the user's
data-subject requests for that user only. Anyone who can reach the port can do the same, which is why
demo mode is for trying the gateway, not for production.

Routes (docs/architecture.md §2):

* ``GET /demo/``: the demo page (``gateway/web/demo/``, built from ``web/demo/``; its script and styles
  under ``/demo/assets/``); gives the browser its user cookie.
* ``POST /demo/start``, and ``POST /start`` without an ``Authorization`` header (what Pipecat's prebuilt
  UI posts, ``gateway.web.prebuilt``): ``{wsUrl, token, sessionId}`` for the cookie's user, through
  ``routes.start_session``, the code path of ``/start``. Only ``transport`` is read from the body.
* ``GET``/``DELETE /demo/memories``: what the bot remembers about the cookie's user, and forgetting it,
  through ``routes.data_subject``, the code path of ``/v1/memories``.
* ``GET /``: to ``/demo/``.

The cookie is the user's only credential: it is never logged, never returned in a body, and never a
metric label. Requests whose ``Origin`` is another site are refused, so another page cannot start
sessions on, or erase, a visitor's demo user.
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from yarl import URL

from gateway import routes
from gateway.keys import keyless_start_key, settings_key, tenants_key
from gateway.logging import get_logger
from gateway.tenants import TenantConfig
from memory.scope import MemoryScope

log = get_logger(__name__)

PAGE_DIR = Path(__file__).with_name("demo")
COOKIE = "mgw_demo_user"
USER_PATTERN = re.compile(r"^demo-[0-9a-f]{32}$")
COOKIE_MAX_AGE = 365 * 24 * 3600
MEMORY_LIMIT = 100
# The page's own script and styles, its WebSocket (wsUrl may name another host behind a proxy), and the
# blob: URL the SDK's audio player loads its worklet from.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self' blob:; connect-src 'self' ws: wss:; "
    "media-src 'self' blob:; img-src 'self' data:; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
API_HEADERS = {"Cache-Control": "no-store"}


def new_user() -> str:
    return "demo-" + secrets.token_hex(16)


def cookie_user(request: web.Request) -> str | None:
    """The user the browser's cookie names, if it holds one this gateway could have issued."""
    value = request.cookies.get(COOKIE)
    return value if value is not None and USER_PATTERN.fullmatch(value) else None


def give_user(request: web.Request, response: web.StreamResponse, user: str) -> None:
    response.set_cookie(
        COOKIE,
        user,
        max_age=COOKIE_MAX_AGE,
        path="/",
        httponly=True,
        samesite="Lax",
        secure=request.secure,
    )


def same_origin(request: web.Request) -> bool:
    """No ``Origin`` (not a cross-site browser request) or this gateway's own host.

    Browsers send ``Origin`` on every POST and DELETE and on cross-origin reads; SameSite=Lax already
    keeps the cookie off other sites' requests, so this refuses them outright instead of serving them
    for a fresh user.
    """
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    try:
        authority = URL(origin).authority
    except ValueError:
        return False
    return bool(authority) and authority.lower() == request.host.lower()


def _demo_tenant(request: web.Request) -> TenantConfig | web.Response:
    """The active demo tenant, or the refusal; bound to the request's log context like a key's tenant."""
    name = request.app[settings_key].demo_tenant
    tenant = request.app[tenants_key].get(name)
    if tenant is None or not tenant.active:
        return routes.reject(
            request,
            tenant.name if tenant else None,
            "tenant_disabled",
            403,
            "the demo tenant is not available",
        )
    structlog.contextvars.bind_contextvars(tenant=tenant.name)
    if not same_origin(request):
        return routes.reject(request, tenant.name, "origin_not_allowed", 403, "cross-site request")
    return tenant


async def page(request: web.Request) -> web.FileResponse:
    response = web.FileResponse(PAGE_DIR / "index.html", headers=PAGE_HEADERS)
    if cookie_user(request) is None:
        give_user(request, response, new_user())
    return response


async def to_page(request: web.Request) -> web.Response:
    raise web.HTTPFound("/demo/")


async def start(request: web.Request) -> web.StreamResponse:
    """``/start`` for the cookie's user of the demo tenant (a new user, and cookie, if it has none)."""
    refusal = routes.draining(request)
    if refusal is not None:
        return refusal
    tenant = _demo_tenant(request)
    if isinstance(tenant, web.Response):
        return tenant
    user = cookie_user(request)
    fresh = user is None
    if user is None:
        user = new_user()

    async def payload() -> dict[str, Any]:
        """The /start body: this user, and the transport the client asked for (Pipecat's prebuilt UI
        sends its choice; only ``websocket`` is served). Nothing else the browser sends is used."""
        asked: Any = await request.json() if request.body_exists else {}
        if not isinstance(asked, dict):
            raise ValueError("body must be a JSON object")
        return {"transport": asked.get("transport", "websocket"), "body": {"user_id": user}}

    response = await routes.start_session(request, tenant, payload)
    response.headers.update(API_HEADERS)
    if fresh:
        give_user(request, response, user)
    return response


async def memories(request: web.Request) -> web.Response:
    """``GET``: what the bot remembers about the cookie's user; ``DELETE``: forget all of it."""
    tenant = _demo_tenant(request)
    if isinstance(tenant, web.Response):
        return tenant
    user = cookie_user(request)
    if user is None:
        return routes.reject(request, tenant.name, "unauthorized", 401, "no demo user: open /demo/ first")
    answer = await routes.data_subject(request, tenant, MemoryScope(tenant.name, user), MEMORY_LIMIT)
    if isinstance(answer, web.Response):
        return answer
    return web.json_response(answer, headers=API_HEADERS)


def setup(app: web.Application) -> None:
    settings = app[settings_key]
    tenant = app[tenants_key].get(settings.demo_tenant)
    if tenant is None or not tenant.active:
        log.warning("demo.tenant_unavailable", demo_tenant=settings.demo_tenant)
    log.info("demo.enabled", demo_tenant=settings.demo_tenant)
    app[keyless_start_key] = start
    app.router.add_get("/", to_page)
    app.router.add_get("/demo", to_page)
    app.router.add_get("/demo/", page)
    app.router.add_post("/demo/start", start)
    app.router.add_get("/demo/memories", memories)
    app.router.add_delete("/demo/memories", memories)
    app.router.add_static("/demo/assets/", PAGE_DIR / "assets")
