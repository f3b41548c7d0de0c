"""The recipe in Pipecat's docs, behind a WebSocket endpoint, as the baseline the gateway is measured against.

Per connection, exactly what the ``Mem0MemoryService`` page shows for a personalised greeting:
``Mem0MemoryService(user_id=…, local_config=…)`` — whose ``__init__`` runs ``Memory.from_config`` — then
``await service.get_memories()`` and a greeting from the first three memories. The service is built on
the event loop, as a bot function does. Nothing else of a bot is built (no pipeline, LLM or transport),
so the naive span is a lower bound for a real naive bot; the greeting goes out as the same RTVI
messages the gateway sends (``bot-llm-started``, ``bot-llm-text``, ``bot-llm-stopped``), so one client
times both.

``local_config`` comes in two flavours, both with the gateway's WordLlama embedder (the already-loaded
model object, so the naive side does not pay for loading weights) and mem0's extraction LLM off:

* ``qdrant_config``: mem0's default store, local Qdrant on disk — what the docs' users get;
* ``pgvector_config``: the gateway's own store type (``memory.pgvector.IndexedPGVector`` is what
  mem0's ``pgvector`` provider builds in this process) in the same PostgreSQL, via a connection string.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from bench.harness import serve_on_loopback
from memory import embedder, extraction
from memory.embedder import DIMENSIONS

DOCS_KNOWN = "Hello! Based on our previous conversations, I remember: "
DOCS_NEW = "Hello! It's nice to meet you."


def qdrant_config(path: Path, history: Path, model: Any) -> dict[str, Any]:
    """mem0's default vector store (local Qdrant, files under ``path``), WordLlama, extraction off."""
    return {
        "vector_store": {
            "provider": "qdrant",
            "config": {"path": str(path), "collection_name": "mem0", "embedding_model_dims": DIMENSIONS},
        },
        "embedder": embedder.embedder_config(model),
        "llm": extraction.disabled_llm_config(),
        "history_db_path": str(history),
    }


def pgvector_config(
    database_url: str, collection: str, history: Path, model: Any, pool: Any = None
) -> dict[str, Any]:
    """The gateway's store type through mem0's ``pgvector`` provider, WordLlama, extraction off.

    Without ``pool`` mem0 opens its own connection pool from the connection string, per instance, as
    a docs user's config does. ``memory.pgvector.register()`` must have run (the gateway does it).
    """
    store: dict[str, Any] = {"collection_name": collection, "embedding_model_dims": DIMENSIONS, "hnsw": True}
    if pool is not None:
        store["connection_pool"] = pool
    else:
        store["connection_string"] = database_url
    return {
        "vector_store": {"provider": "pgvector", "config": store},
        "embedder": embedder.embedder_config(model),
        "llm": extraction.disabled_llm_config(),
        "history_db_path": str(history),
    }


def close_memory(memory: Any, *, pool: bool = True) -> None:
    """Release what one mem0 ``Memory`` holds: the Qdrant client (and its folder lock), the PostgreSQL
    pool (unless ``pool=False``: one handed in and shared), and the SQLite history connection. The docs
    never do this; see ``start_naive_server``."""
    store = memory.vector_store
    client = getattr(store, "client", None)
    if client is not None and hasattr(client, "close"):
        client.close()
    connections = getattr(store, "connection_pool", None)
    if pool and connections is not None and hasattr(connections, "close"):
        connections.close()
    db = getattr(memory, "db", None)
    if db is not None and hasattr(db, "close"):
        db.close()


def docs_greeting(memories: list[dict[str, Any]]) -> str:
    """The greeting exactly as the docs page composes it."""
    if memories:
        greeting = DOCS_KNOWN
        for mem in memories[:3]:
            greeting += f"{mem['memory']} "
        return greeting
    return DOCS_NEW


def _rtvi(type_: str, data: dict[str, Any] | None = None) -> str:
    return json.dumps({"label": "rtvi-ai", "type": type_, "data": data or {}})


@dataclass
class NaiveServer:
    """A running naive endpoint: ``ws_url(user_id)``, how many services it built and why builds failed."""

    base: str
    built: int = 0
    active: int = 0  # connections whose handler (teardown included) has not returned yet
    failures: Counter[str] = field(default_factory=Counter)
    # Services of connections that ended, when ``close`` is off: kept by the docs' code paths only as
    # long as garbage collection lets them live. Held here only when ``keep`` asks (overlap probes).
    kept: list[Any] = field(default_factory=list)

    def ws_url(self, user_id: str) -> str:
        return f"{self.base}?user_id={user_id}"

    async def settle(self, timeout: float = 30.0) -> None:
        """Wait until every connection's handler, teardown included, has returned."""
        async with asyncio.timeout(timeout):
            while self.active:
                await asyncio.sleep(0.005)


@asynccontextmanager
async def start_naive_server(
    local_config: Callable[[], dict[str, Any]], *, close: bool, keep: bool = False
) -> AsyncIterator[NaiveServer]:
    """Serve the docs' recipe on a loopback port.

    ``close``: after the connection ends, close the service's mem0 client (Qdrant lock, pool, SQLite) —
    what a careful user would add; off, the service is just dropped, as in the docs, and whatever it
    holds is released when (if) garbage collection gets to it. ``keep`` holds dropped services
    (simulating connections that are still live, or not yet collected).
    """
    from pipecat.services.mem0.memory import Mem0MemoryService

    server: NaiveServer | None = None

    async def handler(request: web.Request) -> web.WebSocketResponse:
        assert server is not None
        server.active += 1
        try:
            return await serve(server, request)
        finally:
            server.active -= 1

    async def serve(server: NaiveServer, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        user_id = request.query["user_id"]
        try:
            # On the event loop, as in a bot function: __init__ runs Memory.from_config(local_config).
            service = Mem0MemoryService(user_id=user_id, local_config=local_config())
        except Exception as e:
            server.failures[f"{type(e).__name__}: {str(e)[:90]}"] += 1
            await ws.send_str(_rtvi("error", {"message": "memory unavailable", "fatal": True}))
            await ws.close(code=1011)
            return ws
        server.built += 1
        try:
            memories = await service.get_memories()
            greeting = docs_greeting(memories)
            await ws.send_str(_rtvi("bot-llm-started"))
            await ws.send_str(_rtvi("bot-llm-text", {"text": greeting}))
            await ws.send_str(_rtvi("bot-llm-stopped"))
            async for _ in ws:
                pass
        finally:
            if close:
                close_memory(service.memory_client)
            elif keep:
                server.kept.append(service)
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    try:
        async with serve_on_loopback(app) as base:
            server = NaiveServer(base=base.replace("http://", "ws://") + "/ws")
            yield server
    finally:
        for service in server.kept if server is not None else []:
            close_memory(service.memory_client)
