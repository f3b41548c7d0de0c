"""One mem0 backend per tenant per process, shared by all that tenant's sessions.

``Memory.from_config`` costs 50-200 ms warm and opens a connection pool; building it per connection
(as Pipecat's ``Mem0MemoryService`` does in ``__init__``) puts that on every call set-up. Here each
tenant's ``Memory`` (or ``MemoryClient``) is built once, on first use, in a worker thread, and every
blocking mem0 call afterwards runs on one bounded thread pool with a timeout.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from typing import Any, Protocol, TypeVar

import httpx
import psycopg
from mem0 import Memory, MemoryClient
from mem0.configs.base import MemoryConfig, MemoryItem
from mem0.llms.configs import LlmConfig
from mem0.memory.main import _escape_scope_value, _payload_is_expired
from mem0.vector_stores.configs import VectorStoreConfig
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from memory import embedder, extraction, pgvector
from memory.config import MemorySettings
from memory.postgres import EmbeddedPostgres, ping, prepare_database
from memory.scope import MemoryScope
from memory.writes import WriteQueue

log = logging.getLogger(__name__)
T = TypeVar("T")


class MemoryObserver(Protocol):
    """What the gateway's metrics need to hear from memory (memory never imports gateway)."""

    def memory_call(self, tenant: str, operation: str, backend: str, seconds: float, ok: bool) -> None: ...

    def pending_writes(self, tenant: str, delta: int) -> None: ...


class NullObserver:
    def memory_call(self, tenant: str, operation: str, backend: str, seconds: float, ok: bool) -> None:
        pass

    def pending_writes(self, tenant: str, delta: int) -> None:
        pass


def permanent_error(error: BaseException) -> bool:
    """A write the store refused for its content: retrying cannot help (the backend being down can)."""
    return isinstance(
        error, (psycopg.DataError, psycopg.IntegrityError, psycopg.ProgrammingError, ValueError, UnicodeError)
    )


def table_name(tenant: str) -> str:
    """A PostgreSQL identifier per tenant; tenant names are validated, this is belt and braces."""
    return "mem0_" + re.sub(r"[^a-z0-9_]", "_", tenant.lower())


# How mem0's ``Memory.get_all`` shapes a listed row (``_get_all_from_vector_store``), so that what the
# event-loop listing returns is indistinguishable from mem0's own answer (tests compare the two).
_PROMOTED = ("user_id", "agent_id", "run_id", "actor_id", "role", "attributed_to", "expiration_date")
_CORE = {"data", "hash", "created_at", "updated_at", "id", "text_lemmatized", *_PROMOTED}


def as_memory(row: Any) -> dict[str, Any]:
    """One listed store row (``OutputData``) as mem0's ``get_all`` returns it."""
    payload: dict[str, Any] = row.payload or {}
    item = MemoryItem(
        id=row.id,
        memory=payload.get("data", ""),
        hash=payload.get("hash"),
        created_at=payload.get("created_at"),
        updated_at=payload.get("updated_at"),
    ).model_dump(exclude={"score"})
    item.update({k: payload[k] for k in _PROMOTED if k in payload})
    extra = {k: v for k, v in payload.items() if k not in _CORE}
    if extra:
        item["metadata"] = extra
    return item


# Up to this many rows are listed on the event loop (≈5 µs each to decode); longer listings — the
# data-subject API, erasure — stay on the worker threads.
LOOP_LIST_MAX = 100


def _forget(task: asyncio.Future[Any]) -> None:
    """Retrieve an abandoned call's outcome, so asyncio does not log it as never retrieved."""
    if not task.cancelled():
        task.exception()


def _results(payload: Any) -> list[dict[str, Any]]:
    if isinstance(payload, dict):
        return list(payload.get("results", []))
    return list(payload or [])


class TenantMemory:
    """A tenant's mem0 client plus the executor, timeouts, metrics and write queue around it."""

    def __init__(
        self,
        *,
        tenant: str,
        kind: str,
        client: Memory | MemoryClient,
        settings: MemorySettings,
        executor: ThreadPoolExecutor,
        observer: MemoryObserver,
        call_timeout: float,
        pool: ConnectionPool | None = None,
        lister: pgvector.AsyncLister | None = None,
    ) -> None:
        self.tenant = tenant
        self.kind = kind
        self.client = client
        self.settings = settings
        self._executor = executor
        self._observer = observer
        self._call_timeout = call_timeout
        self._pool = pool
        self._lister = lister
        self._abandoned: set[asyncio.Future[Any]] = set()
        self.writes = WriteQueue(
            name=tenant, on_depth=lambda d: observer.pending_writes(tenant, d), permanent=permanent_error
        )

    async def _call(self, operation: str, fn: Callable[[], T], timeout: float | None = None) -> T:
        """Run a blocking mem0 call on the bounded pool, timed, counted and bounded like ``_acall``."""
        loop = asyncio.get_running_loop()
        return await self._acall(operation, loop.run_in_executor(self._executor, fn), timeout)

    async def _acall(self, operation: str, call: Awaitable[T], timeout: float | None = None) -> T:
        """Await one memory call (a coroutine on the loop, or a worker thread's future) with the
        call timeout, timing it and counting failures in the backend's metrics.

        A timed-out or abandoned call is counted and given up at once; its cancellation (psycopg
        cancels the query on the server, which takes a round trip to a backend that may be the slow
        part; a thread just finishes) happens in the background instead of holding up the caller.
        """
        start = perf_counter()
        ok = False
        task = asyncio.ensure_future(call)
        try:
            result = await asyncio.wait_for(asyncio.shield(task), timeout or self._call_timeout)
            ok = True
            return result
        except BaseException:
            if not task.done():
                task.cancel()
                self._abandoned.add(task)
                task.add_done_callback(_forget)
                task.add_done_callback(self._abandoned.discard)
            raise
        finally:
            self._observer.memory_call(self.tenant, operation, self.kind, perf_counter() - start, ok)

    async def _list_on_loop(
        self, lister: pgvector.AsyncLister, filters: dict[str, Any], limit: int, timeout: float | None
    ) -> list[dict[str, Any]]:
        rows = await self._acall("get_all", lister.list(filters, limit), timeout)
        return [as_memory(r) for r in rows if not _payload_is_expired(r.payload)]

    def _platform_filters(self, filters: dict[str, str]) -> dict[str, Any]:
        # The platform ORs bare top-level IDs in Pipecat's usage; an explicit AND keeps a shared
        # agent_id from pulling in other users' memories.
        return {"AND": [{k: v} for k, v in filters.items()]}

    async def recent(
        self, scope: MemoryScope, limit: int, timeout: float | None = None, role: str | None = None
    ) -> list[dict[str, Any]]:
        """The scope's newest ``limit`` memories (bounded and ordered, unlike mem0's default 20).

        ``role`` narrows raw (``infer=False``) memories to what one side said; the platform ignores it.
        """
        filters = scope.retrieval_filters()
        if isinstance(self.client, Memory):
            local = self.client
            local_filters: dict[str, Any] = {**filters, "role": role} if role else filters
            if self._lister is not None and limit <= LOOP_LIST_MAX:
                return await self._list_on_loop(self._lister, local_filters, limit, timeout)
            return _results(
                await self._call(
                    "get_all", lambda: local.get_all(filters=local_filters, top_k=limit), timeout
                )
            )
        remote = self.client
        pf = self._platform_filters(filters)
        return _results(
            await self._call("get_all", lambda: remote.get_all(filters=pf, page=1, page_size=limit), timeout)
        )[:limit]

    async def recall(
        self, scope: MemoryScope, limit: int, timeout: float | None = None
    ) -> list[dict[str, Any]]:
        """What we know about the scope, newest first — for greetings and ``get_memories()``.

        Raw memories (``infer=False``) keep each side's words; what the *user* said is what we know
        about them. Extracted memories (``infer=True``) are facts already and carry no role.
        """
        if self.settings.infer:
            return await self.recent(scope, limit, timeout)
        if isinstance(self.client, Memory):
            return await self.recent(scope, limit, timeout, role="user")
        # The platform's filters don't cover a memory's role; over-fetch a little and filter here.
        found = await self.recent(scope, limit * 3, timeout)
        return [m for m in found if m.get("role", "user") == "user"][:limit]

    async def search(
        self, scope: MemoryScope, query: str, *, limit: int, threshold: float, timeout: float | None = None
    ) -> list[dict[str, Any]]:
        filters = scope.retrieval_filters()
        if isinstance(self.client, Memory):
            local = self.client
            return _results(
                await self._call(
                    "search",
                    lambda: local.search(query, filters=filters, top_k=limit, threshold=threshold),
                    timeout,
                )
            )
        remote = self.client
        pf = self._platform_filters(filters)
        return _results(
            await self._call(
                "search", lambda: remote.search(query, filters=pf, top_k=limit, threshold=threshold), timeout
            )
        )

    async def add(self, scope: MemoryScope, messages: list[dict[str, Any]], *, infer: bool) -> None:
        ids = scope.storage_ids()
        metadata = {"platform": "pipecat", "source": "memory-gateway"}
        client = self.client
        await self._call("add", lambda: client.add(messages, metadata=metadata, infer=infer, **ids))

    async def all_memories(self, scope: MemoryScope, limit: int = 10_000) -> list[dict[str, Any]]:
        return await self.recent(scope, limit)

    async def forget(self, scope: MemoryScope, timeout: float = 120.0) -> int:
        """Erase everything stored for the scope's user (or agent/run); return how many memories.

        A data-subject erasure: queued writes land first (so a just-said sentence is not left
        behind), then every memory row goes, then mem0's SQLite history and message log, which
        otherwise keep the erased text as ``old_memory`` of the DELETE event.
        """
        await self.writes.settle(timeout)
        filters = scope.retrieval_filters()
        client = self.client
        if isinstance(client, MemoryClient):
            # The platform's delete_all takes bare IDs whose combination rules are its own; deleting
            # exactly what our ANDed listing returns can't touch another user's memories.
            remote = client
            deleted = 0
            seen: set[str] = set()
            while found := [m for m in await self.recent(scope, 100, timeout) if m.get("id") not in seen]:
                for memory in found:
                    memory_id = str(memory["id"])
                    seen.add(memory_id)
                    await self._call("delete", functools.partial(remote.delete, memory_id), timeout)
                deleted += len(found)
            return deleted
        local = client
        return await self._call("delete_all", lambda: _erase_local(local, filters), timeout)

    async def close(self, drain_timeout: float) -> bool:
        drained = await self.writes.drain(drain_timeout)
        if self._pool is not None:
            pool = self._pool
            await asyncio.get_running_loop().run_in_executor(self._executor, pool.close)
        return drained


def _erase_local(client: Memory, filters: dict[str, str], batch: int = 500) -> int:
    """Delete through mem0's public ``delete`` (it also cleans its entity store), then purge history."""
    deleted = 0
    previous: set[str] = set()
    while True:
        ids = {str(row.id) for row in client.vector_store.list(filters=filters, top_k=batch)[0]}
        if not ids:
            break
        if ids == previous:
            raise RuntimeError("memories did not go away when deleted")
        for memory_id in ids:
            client.delete(memory_id)
        deleted += len(ids)
        previous = ids
    # mem0's message log is keyed "agent_id=…&run_id=…&user_id=…"; a row is this scope's when it
    # carries every one of the scope's IDs.
    tokens = [f"&{key}={_escape_scope_value(value)}&" for key, value in sorted(filters.items())]
    match = " AND ".join(["instr('&' || session_scope || '&', ?) > 0"] * len(tokens))
    db = client.db
    with db._lock:
        db.connection.execute(
            "DELETE FROM history WHERE memory_id IN (SELECT memory_id FROM history WHERE event = 'DELETE')"
        )
        db.connection.execute(f"DELETE FROM messages WHERE {match}", tokens)
        db.connection.commit()
    return deleted


@dataclass
class _Shared:
    database_url: str
    embed_model: Any


class MemoryBackends:
    """Process-wide registry: database, embedder, thread pool, and one ``TenantMemory`` per tenant."""

    def __init__(
        self,
        *,
        data_dir: Path,
        database_url: str | None = None,
        max_workers: int = 8,
        call_timeout: float = 10.0,
        pool_size: int = 4,
        observer: MemoryObserver | None = None,
        embed_model: Any = None,
    ) -> None:
        self._data_dir = data_dir
        self._database_url = database_url
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="mem0")
        self._call_timeout = call_timeout
        self._pool_size = pool_size
        self._observer: MemoryObserver = observer or NullObserver()
        self._embedded: EmbeddedPostgres | None = None
        self._shared: _Shared | None = None
        self._async_pool: AsyncConnectionPool | None = None
        self._async_pool_lock = asyncio.Lock()
        self._tenants: dict[str, TenantMemory] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._embed_model = embed_model

    @property
    def database_url(self) -> str:
        if self._shared is None:
            raise RuntimeError("memory backends not started")
        return self._shared.database_url

    @property
    def embedded(self) -> bool:
        return self._embedded is not None

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def start(self) -> None:
        self._data_dir.mkdir(parents=True, exist_ok=True)
        url = self._database_url
        if url is None:
            self._embedded = EmbeddedPostgres(self._data_dir)
            url = await self._run(self._embedded.start)
        await self._run(lambda: prepare_database(url))
        model = (
            self._embed_model if self._embed_model is not None else await self._run(embedder.load_wordllama)
        )
        pgvector.register()
        self._shared = _Shared(database_url=url, embed_model=model)

    async def for_tenant(self, tenant: str, settings: MemorySettings) -> TenantMemory:
        backend = self._tenants.get(tenant)
        if backend is not None:
            return backend
        lock = self._locks.setdefault(tenant, asyncio.Lock())
        async with lock:
            backend = self._tenants.get(tenant)
            if backend is None:
                backend = await self._build(tenant, settings)
                self._tenants[tenant] = backend
        return backend

    async def _build(self, tenant: str, settings: MemorySettings) -> TenantMemory:
        start = perf_counter()
        pool: ConnectionPool | None = None
        lister: pgvector.AsyncLister | None = None
        client: Memory | MemoryClient
        if settings.backend == "platform":
            import os

            api_key = os.environ.get(settings.api_key_env or "MEM0_API_KEY")
            if not api_key:
                raise RuntimeError(
                    f"tenant {tenant!r}: Mem0 platform key env var {settings.api_key_env!r} is unset"
                )
            # mem0's own httpx client waits up to 300 s per request; ours is bounded like every call.
            http = httpx.Client(timeout=httpx.Timeout(self._call_timeout, connect=5.0))
            client = await self._run(lambda: MemoryClient(api_key=api_key, host=settings.host, client=http))
            kind = "platform"
        else:
            shared = self._shared
            if shared is None:
                raise RuntimeError("memory backends not started")
            pool = await self._run(
                lambda: pgvector.create_pool(
                    shared.database_url, max_size=self._pool_size, name=f"mem0-{tenant}"
                )
            )
            config = self._local_config(tenant, settings, pool, shared.embed_model)
            kind = str(config.vector_store.provider)
            client = await self._run(lambda: Memory(config))
            store = client.vector_store
            await self._run(store._ensure_collection)
            if isinstance(store, pgvector.IndexedPGVector) and store.connection_pool is pool:
                # Our table in our database (a tenant's local_config may point elsewhere): the
                # greeting's listing can run on the loop.
                loop_pool = await self._loop_pool(shared.database_url)
                lister = pgvector.AsyncLister(loop_pool, store.collection_name)
        log.info("memory backend ready tenant=%s kind=%s seconds=%.3f", tenant, kind, perf_counter() - start)
        return TenantMemory(
            tenant=tenant,
            kind=kind,
            client=client,
            settings=settings,
            executor=self._executor,
            observer=self._observer,
            call_timeout=self._call_timeout,
            pool=pool,
            lister=lister,
        )

    async def _loop_pool(self, database_url: str) -> AsyncConnectionPool:
        """One async pool per process, shared by every tenant's listing (tables differ, not databases)."""
        async with self._async_pool_lock:  # two tenants built at once must not open two pools
            if self._async_pool is None:
                self._async_pool = await pgvector.create_async_pool(
                    database_url, max_size=self._pool_size, name="mem0-loop"
                )
            return self._async_pool

    def _local_config(
        self, tenant: str, settings: MemorySettings, pool: ConnectionPool, model: Any
    ) -> MemoryConfig:
        history = self._data_dir / "history"
        history.mkdir(parents=True, exist_ok=True)
        llm: LlmConfig
        if settings.extraction_llm is not None:
            import os

            x = settings.extraction_llm
            llm = LlmConfig(
                provider="openai",
                config={
                    "model": x.model,
                    "openai_base_url": x.base_url,
                    "api_key": os.environ.get(x.api_key_env),
                },
            )
        else:
            llm = extraction.disabled_llm_config()
        sections: dict[str, Any] = {
            "vector_store": VectorStoreConfig(
                provider=pgvector.PROVIDER,
                config={
                    "collection_name": table_name(tenant),
                    "embedding_model_dims": embedder.DIMENSIONS,
                    "connection_pool": pool,
                    "hnsw": True,
                },
            ),
            "embedder": embedder.embedder_config(model),
            "llm": llm,
            "history_db_path": str(history / f"{table_name(tenant)}.db"),
        }
        # A tenant's ``local_config`` replaces whole sections, as Pipecat's ``local_config`` would.
        sections.update(settings.local_config)
        return MemoryConfig(**sections)

    async def ready(self, timeout: float = 2.0) -> bool:
        if self._shared is None:
            return False
        url = self._shared.database_url
        try:
            return await asyncio.wait_for(self._run(lambda: ping(url, timeout)), timeout + 0.5)
        except TimeoutError:
            return False

    def pending_writes(self) -> int:
        return sum(t.writes.pending for t in self._tenants.values())

    async def close(self, drain_timeout: float = 10.0) -> None:
        for backend in list(self._tenants.values()):
            try:
                await backend.close(drain_timeout)
            except Exception:
                log.exception("closing memory backend failed tenant=%s", backend.tenant)
        self._tenants.clear()
        if self._async_pool is not None:
            await self._async_pool.close()
            self._async_pool = None
        if self._embedded is not None:
            await self._run(self._embedded.stop)
            self._embedded = None
        self._executor.shutdown(wait=False, cancel_futures=True)
