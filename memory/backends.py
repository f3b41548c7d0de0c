"""One mem0 backend per tenant per process, shared by all that tenant's sessions.

``Memory.from_config`` costs 50-200 ms warm and opens a connection pool; building it per connection
(as Pipecat's ``Mem0MemoryService`` does in ``__init__``) puts that on every call set-up. Here each
tenant's ``Memory`` (or ``MemoryClient``) is built once, on first use, in a worker thread, and every
blocking mem0 call afterwards runs on one bounded thread pool with a timeout.

Writes are durable (``memory.outbox``): each message is on local disk before the turn goes on, lands
at most once (its idempotency key, enforced by a unique index where the row is written), and is
replayed at the next start if the process died first. mem0's history and message log live in
PostgreSQL (``memory.mem0compat``), not in per-process SQLite.

Erasure (``forget``) is cluster-wide: one transaction deletes the scope's rows, history and messages,
writes a tombstone (``gateway_erasures``) and ``NOTIFY gateway_erasure``. Every process LISTENs and
drops the scope's queued writes and outbox rows; and every insert checks the tombstones, so a write
from a session that started before the erasure is dropped on every replica — also one that missed
the notice. A session started after the erasure writes normally. Times compare the gateway's wall
clock (session start) with the database's (``erased_at``): replicas' clocks must be synchronised
(NTP) to well under a session's length.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from time import perf_counter
from typing import Any, Protocol, TypeVar

import httpx
import psycopg
from mem0 import Memory, MemoryClient
from mem0.configs.base import MemoryConfig, MemoryItem
from mem0.llms.configs import LlmConfig
from mem0.vector_stores.configs import VectorStoreConfig
from psycopg import sql
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from memory import embedder, extraction, mem0compat, pgvector
from memory.config import MemorySettings
from memory.outbox import DEFAULT_MAX_BYTES, Outbox, OutboxEntry
from memory.postgres import EmbeddedPostgres, ping, prepare_database
from memory.scope import MemoryScope
from memory.writes import WriteQueue

log = logging.getLogger(__name__)
T = TypeVar("T")


class MemoryObserver(Protocol):
    """What the gateway's metrics need to hear from memory (memory never imports gateway)."""

    def memory_call(self, tenant: str, operation: str, backend: str, seconds: float, ok: bool) -> None: ...

    def pending_writes(self, tenant: str, delta: int) -> None: ...

    def outbox_full(self, tenant: str) -> None: ...


class NullObserver:
    def memory_call(self, tenant: str, operation: str, backend: str, seconds: float, ok: bool) -> None:
        pass

    def pending_writes(self, tenant: str, delta: int) -> None:
        pass

    def outbox_full(self, tenant: str) -> None:
        pass


ERASURE_CHANNEL = "gateway_erasure"


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
        outbox: Outbox | None = None,
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
        self._outbox = outbox
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
        return [as_memory(r) for r in rows if not mem0compat.payload_is_expired(r.payload)]

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

    async def add_entry(self, entry: OutboxEntry) -> None:
        """Store one message under its idempotency key (one message per call: mem0 shares a call's
        metadata between its messages, and each row needs a key of its own)."""
        metadata: dict[str, Any] = {
            "platform": "pipecat",
            "source": "memory-gateway",
            pgvector.IDEMPOTENCY_KEY: entry.key,
            "session_started_at": entry.session_start,
        }
        if entry.infer:
            metadata[pgvector.FAN_OUT] = True
        messages = [{"role": entry.role, "content": entry.content}]
        client, ids, infer, start = self.client, dict(entry.ids), entry.infer, entry.session_start

        def add() -> Any:
            return client.add(messages, metadata=metadata, infer=infer, **ids)

        await self._call("add", lambda: mem0compat.run_writing(start, ids, add))

    async def enqueue(self, entries: list[OutboxEntry]) -> list[asyncio.Future[bool]]:
        """Make the messages durable, then queue them; returns when they are on disk (not stored).

        A full outbox refuses the rows (counted: ``outbox_full``, logged ``memory.outbox_full``);
        they are queued in memory anyway, so they still land unless this process dies first.
        Refusing the turn, or making it wait, would hold the conversation hostage to a database
        outage, and dropping the write would make its loss certain rather than merely possible.
        """
        durable = [False] * len(entries)
        if self._outbox is not None and entries:
            durable = await self._outbox.append_many(entries)
            refused = durable.count(False)
            if refused:
                for _ in range(refused):
                    self._observer.outbox_full(self.tenant)
                log.warning(
                    "memory.outbox_full tenant=%s refused=%d outbox_bytes=%d max_bytes=%d",
                    self.tenant,
                    refused,
                    self._outbox.bytes,
                    self._outbox.max_bytes,
                )
        return [await self.submit_entry(e, durable=d) for e, d in zip(entries, durable, strict=True)]

    async def submit_entry(self, entry: OutboxEntry, *, durable: bool) -> asyncio.Future[bool]:
        return await self.writes.submit(lambda: self._land(entry, durable), tag=entry, durable=durable)

    async def _land(self, entry: OutboxEntry, durable: bool) -> None:
        try:
            await self.add_entry(entry)
        except Exception as e:
            if durable and self._outbox is not None and permanent_error(e):
                # Refused for its content: it would be refused again at every start.
                await self._outbox.delete(entry.key)
            raise
        if durable and self._outbox is not None:
            await self._outbox.delete(entry.key)

    async def purge_local(self, scope: dict[str, str]) -> tuple[int, int]:
        """Drop this process's queued writes and outbox rows under ``scope``: (jobs, rows)."""
        jobs = self.writes.purge(lambda e: isinstance(e, OutboxEntry) and e.matches(scope))
        rows = await self._outbox.purge(self.tenant, scope) if self._outbox is not None else 0
        return jobs, rows

    async def all_memories(self, scope: MemoryScope, limit: int = 10_000) -> list[dict[str, Any]]:
        return await self.recent(scope, limit)

    async def forget(self, scope: MemoryScope, timeout: float = 120.0) -> int:
        """Erase everything stored for the scope's user (or agent/run); return how many memories.

        A data-subject erasure: this process's queued writes and outbox rows for the scope are
        dropped first, then every memory row goes, then mem0's history and message log (which
        otherwise keep the erased text as ``old_memory`` of the DELETE event); with our store, the
        last step also writes a tombstone and notifies every replica (module docstring).
        """
        filters = scope.retrieval_filters()
        jobs, rows = await self.purge_local(filters)
        if jobs or rows:
            log.info("memory.erasure_purged tenant=%s queued=%d outbox=%d", self.tenant, jobs, rows)
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
        local, tenant = client, self.tenant
        return await self._call("delete_all", lambda: _erase_local(local, filters, tenant), timeout)

    async def close(self, drain_timeout: float) -> bool:
        drained = await self.writes.drain(drain_timeout)
        if self._pool is not None:
            pool = self._pool
            await asyncio.get_running_loop().run_in_executor(self._executor, pool.close)
        return drained


def _erase_local(client: Memory, filters: dict[str, str], tenant: str, batch: int = 500) -> int:
    """Delete through mem0's public ``delete`` (it also cleans its entity store), then finish the
    erasure in one transaction (``_erase_final``), or purge a tenant's own SQLite history."""
    deleted: list[str] = []
    previous: set[str] = set()
    while True:
        ids = {str(row.id) for row in client.vector_store.list(filters=filters, top_k=batch)[0]}
        if not ids:
            break
        if ids == previous:
            raise RuntimeError("memories did not go away when deleted")
        for memory_id in ids:
            client.delete(memory_id)
        deleted.extend(ids)
        previous = ids
    store, db = client.vector_store, client.db
    if isinstance(store, pgvector.IndexedPGVector):
        deleted.extend(_erase_final(store, db, filters, tenant, deleted))
    elif isinstance(db, mem0compat.PgHistory):
        with db.pool.connection() as conn:
            for statement, params in db.erase_statements(deleted, filters):
                conn.execute(statement, params)
    if not isinstance(db, mem0compat.PgHistory) and db is not None:
        mem0compat.purge_sqlite_history(db, filters)
    return len(deleted)


def _erase_final(
    store: pgvector.IndexedPGVector, db: Any, filters: dict[str, str], tenant: str, deleted: list[str]
) -> list[str]:
    """One transaction: tombstone, rows that arrived meanwhile, history, messages, NOTIFY.

    ``SHARE ROW EXCLUSIVE`` on the tenant's table makes concurrent inserts wait for the commit (a few
    ms) and then see the tombstone, so no write slips in between the DELETE and the tombstone.
    Returns the IDs of the rows deleted here.
    """
    table = sql.Identifier(store.collection_name)
    conditions, params = mem0compat.build_filter_conditions(filters)
    with store.connection_pool.connection() as conn, conn.transaction():
        conn.execute("SET LOCAL lock_timeout = '10s'")
        conn.execute(sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(table))
        row = conn.execute(
            "INSERT INTO gateway_erasures (tenant, collection, scope) VALUES (%s, %s, %s) RETURNING id",
            (tenant, store.collection_name, Jsonb(filters)),
        ).fetchone()
        assert row is not None
        where = sql.SQL(" AND ".join(f"({c})" for c in conditions))
        late = [
            str(r[0])
            for r in conn.execute(
                sql.SQL("DELETE FROM {} WHERE {} RETURNING id").format(table, where), params
            ).fetchall()
        ]
        if isinstance(db, mem0compat.PgHistory):
            for statement, values in db.erase_statements([*deleted, *late], filters):
                conn.execute(statement, values)
        # The payload names the tenant and the tombstone's id: nothing about the person.
        conn.execute("SELECT pg_notify(%s, %s)", (ERASURE_CHANNEL, f"{tenant}\t{row[0]}"))
    return late


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
        outbox_max_bytes: int = DEFAULT_MAX_BYTES,
        outbox_name: str = "outbox.db",
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
        self.outbox = Outbox(data_dir / outbox_name, max_bytes=outbox_max_bytes)
        self._background: set[asyncio.Task[None]] = set()
        self._erasures_seen = 0

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
        await self.outbox.open()
        left = await self.outbox.pending()
        if left:
            log.warning("memory.outbox_found rows=%d (replayed as each tenant's backend is built)", left)
        self._spawn(self._listen(url), "erasure-listener")

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

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
                self._spawn(self._replay(backend), f"outbox-replay-{tenant}")
        return backend

    async def _replay(self, backend: TenantMemory) -> None:
        """Queue what an earlier process of this data dir accepted and did not land (once per tenant).

        In the background: with the database down the tenant's queue fills and waits, and the
        backend must serve sessions meanwhile. A tenant whose backend cannot be built keeps its rows.
        """
        entries = await self.outbox.replay(backend.tenant)
        for entry in entries:
            await backend.submit_entry(entry, durable=True)
        if entries:
            log.info("memory.outbox_replayed tenant=%s rows=%d", backend.tenant, len(entries))

    async def _listen(self, url: str) -> None:
        """One LISTEN connection per process, reconnected with bounded backoff (0.5 s … 30 s).

        Every (re)connect first catches up from ``gateway_erasures`` (a notice sent while the
        connection was down is not queued for us); the table is the truth, the notice a nudge.
        """
        failures = 0
        first = True
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(url, autocommit=True, connect_timeout=10)
                async with conn:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(ERASURE_CHANNEL)))
                    await asyncio.wait_for(self._catch_up(conn, first), 30)
                    first, failures = False, 0
                    while True:
                        # A quiet minute ends the generator; the SELECT then proves the link alive.
                        async for _notice in conn.notifies(timeout=60.0):
                            await asyncio.wait_for(self._catch_up(conn, False), 30)
                        await asyncio.wait_for(conn.execute("SELECT 1"), 10)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                failures += 1
                delay = min(30.0, 0.5 * 2 ** min(failures - 1, 6))
                log.warning("memory.erasure_listener_down error=%s retry_secs=%.1f", type(e).__name__, delay)
                await asyncio.sleep(delay)

    async def _catch_up(self, conn: psycopg.AsyncConnection[Any], first: bool) -> None:
        """Apply every tombstone not applied yet. At start-up, tombstones older than this process are
        applied only if the outbox holds rows that old (the inserts' check covers the rest)."""
        if first:
            cur = await conn.execute("SELECT coalesce(max(id), 0) FROM gateway_erasures")
            row = await cur.fetchone()
            newest = int(row[0]) if row else 0
            oldest = await self.outbox.oldest()
            if oldest is not None:
                since = datetime.fromtimestamp(oldest, UTC) - timedelta(minutes=5)
                cur = await conn.execute(
                    "SELECT id, tenant, scope FROM gateway_erasures WHERE erased_at > %s ORDER BY id",
                    (since,),
                )
                for _id, tenant, scope in await cur.fetchall():
                    await self.apply_erasure(tenant, scope)
            self._erasures_seen = max(self._erasures_seen, newest)
            return
        cur = await conn.execute(
            "SELECT id, tenant, scope FROM gateway_erasures WHERE id > %s ORDER BY id LIMIT 1000",
            (self._erasures_seen,),
        )
        for id_, tenant, scope in await cur.fetchall():
            await self.apply_erasure(tenant, scope)
            self._erasures_seen = int(id_)

    async def apply_erasure(self, tenant: str, scope: dict[str, str]) -> None:
        """Another replica (or this one) erased ``scope``: drop our queued writes and outbox rows."""
        backend = self._tenants.get(tenant)
        if backend is not None:
            jobs, rows = await backend.purge_local(scope)
        else:
            jobs, rows = 0, await self.outbox.purge(tenant, scope)
        log.info("memory.erasure_applied tenant=%s queued=%d outbox=%d", tenant, jobs, rows)

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
            if isinstance(store, mem0compat.PGVectorBase):
                await self._run(store.ensure_collection)
            if "history_db_path" not in settings.local_config:
                local, hpool = client, pool
                await self._run(lambda: mem0compat.install_history(local, hpool, table_name(tenant)))
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
            outbox=self.outbox,
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
            # Replaced by PostgreSQL (mem0compat) as soon as the client exists: nothing on local disk.
            "history_db_path": ":memory:",
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
        """Drain what can land within ``drain_timeout``; what cannot stays in the outbox (logged)."""
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        for backend in list(self._tenants.values()):
            try:
                await backend.close(drain_timeout)
            except Exception:
                log.exception("closing memory backend failed tenant=%s", backend.tenant)
        self._tenants.clear()
        if self._shared is not None:
            try:
                left = await self.outbox.pending()
                if left:
                    log.warning("memory.outbox_left rows=%d (replayed at the next start)", left)
                await self.outbox.close()
            except Exception:
                log.exception("closing the outbox failed")
        if self._async_pool is not None:
            await self._async_pool.close()
            self._async_pool = None
        if self._embedded is not None:
            await self._run(self._embedded.stop)
            self._embedded = None
        self._executor.shutdown(wait=False, cancel_futures=True)
