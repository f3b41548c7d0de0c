"""``POST /v1/memories``: a tenant's bulk import, for migrating from mem0 or the Mem0 platform and for
data portability requests.

The tenant comes from the API key alone, and every item's IDs are stored under that tenant's prefix
(``memory.portability`` refuses an ID in another tenant's ``acme/…`` form): an import can only ever
write into the importing tenant. The request is bounded before anything is parsed
(``GATEWAY_IMPORT_MAX_BYTES``, read with a deadline) and after (``GATEWAY_IMPORT_MAX_ITEMS``), and it is
all or nothing: one invalid item refuses the request, naming the item, and nothing is written.

Accepted items take the durable write path of a session's turns — the outbox first, then the
tenant's write queue — so nothing acknowledged is lost, and a replay or a repeated request stores
each memory once (idempotency keys). An import may fill at most half of the outbox
(``IMPORT_OUTBOX_SHARE``): the other half stays for live sessions' turns, and a request that does not
fit is refused with 503 and ``Retry-After`` (``memory_busy``) before anything is written. The answer
waits (at most ``IMPORT_WAIT_SECS``) for the writes to land, which paces a migration script to what the
store sustains: 200 when they all landed, 202 when some are still on their way (durably).
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from gateway import routes
from gateway.keys import backends_key, settings_key
from gateway.logging import get_logger
from memory import portability
from memory.retention import Retention

log = get_logger(__name__)

IMPORT_OUTBOX_SHARE = 0.5
IMPORT_WAIT_SECS = 30.0
_CHUNK = 64 * 1024


async def _body(request: web.Request, limit: int, timeout: float) -> bytes | None:
    """The request body, or None once it is longer than ``limit`` (read no further)."""
    chunks: list[bytes] = []
    size = 0
    async with asyncio.timeout(timeout):
        while chunk := await request.content.read(_CHUNK):
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
    return b"".join(chunks)


async def post_memories(request: web.Request) -> web.Response:
    """``POST /v1/memories`` with ``{"memories": [item, …]}`` (items: ``memory.portability``)."""
    refused = routes.draining(request)
    if refused is not None:
        return refused
    tenant = routes.authenticate(request)
    if isinstance(tenant, web.Response):
        return tenant
    settings = request.app[settings_key]
    too_large = (
        f"at most {settings.import_max_bytes} bytes and {settings.import_max_items} memories per request"
    )
    if (request.content_length or 0) > settings.import_max_bytes:
        return routes.reject(request, tenant.name, "payload_too_large", 413, too_large)
    try:
        body = await _body(request, settings.import_max_bytes, settings.handshake_timeout_secs)
    except TimeoutError:
        return routes.reject(
            request, tenant.name, "request_timeout", 408, "request body not received in time"
        )
    if body is None:
        return routes.reject(request, tenant.name, "payload_too_large", 413, too_large)
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # JSONDecodeError, over-long integers, bad UTF-8, deep nesting
        return routes.reject(request, tenant.name, "bad_request", 400, "body must be JSON")
    items = data.get("memories") if isinstance(data, dict) else None
    if not isinstance(items, list) or not items:
        return routes.reject(
            request, tenant.name, "bad_request", 400, 'body must be {"memories": [ … ]}, not empty'
        )
    if len(items) > settings.import_max_items:
        return routes.reject(request, tenant.name, "payload_too_large", 413, too_large)
    now = datetime.now(UTC)
    parsed: list[portability.ImportedMemory] = []
    for i, item in enumerate(items):
        try:
            parsed.append(portability.parse_item(item, now))
        except portability.InvalidMemory as e:
            return routes.reject(request, tenant.name, "bad_request", 400, f"memories[{i}]: {e}")
    try:
        backend = await request.app[backends_key].for_tenant(tenant.name, tenant.memory)
    except Exception:
        log.exception("memories.import_failed")
        return routes.memory_unavailable(request, tenant.name)
    if not backend.portable:
        return routes.reject(
            request, tenant.name, "bad_request", 400, "bulk import needs memory.backend pgvector"
        )
    retention = Retention.of(tenant.memory.retention)
    kept = [m for m in parsed if retention.keeps(m.role, m.created_at, now)]
    entries = list({m.key: m.entry(tenant.name, now.isoformat()) for m in kept}.values())
    try:
        landing = await backend.enqueue_import(entries, share=IMPORT_OUTBOX_SHARE)
    except Exception:
        log.exception("memories.import_failed")
        return routes.memory_unavailable(request, tenant.name)
    if landing is None:
        return routes.reject(
            request,
            tenant.name,
            "memory_busy",
            503,
            "memory writes are backed up; retry later",
            {"Retry-After": "5"},
        )
    done, pending = await asyncio.wait(landing, timeout=IMPORT_WAIT_SECS) if landing else (set(), set())
    landed = not pending and all(f.result() for f in done)
    answer: dict[str, Any] = {
        "accepted": len(entries),
        "duplicates": len(kept) - len(entries),
        "expired": len(parsed) - len(kept),
        "landed": landed,
    }
    log.info("memories.imported", **answer)
    return web.json_response(answer, status=200 if landed else 202)


def setup(app: web.Application) -> None:
    app.router.add_post("/v1/memories", post_memories)
