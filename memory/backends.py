"""The process's memory: database, embedder, thread pool, and one backend per tenant.

``BACKENDS`` names the kinds a tenant's ``memory.backend`` may choose, each one class behind
``memory.tenant.TenantMemory``: ``pgvector`` (``memory.local.LocalMemory``, mem0's ``Memory`` on our
PostgreSQL) and ``platform`` (``memory.platform.PlatformMemory``, the Mem0 platform). A tenant's backend
is built once, on first use, and shared by all that tenant's sessions; every blocking mem0 call runs
on one bounded thread pool with a timeout.

``MemoryBackends`` also owns the write outbox (``memory.outbox``), replaying what an earlier process
left in it as each tenant's backend is built, and listens for cluster-wide erasures
(``memory.local``): a tombstone written by any replica drops the scope's queued writes and outbox
rows here too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from time import perf_counter
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from memory import embedder, pgvector
from memory.config import MemorySettings
from memory.consolidation import Consolidating, ConsolidationWorker
from memory.local import LocalMemory
from memory.outbox import DEFAULT_MAX_BYTES, Outbox
from memory.platform import PlatformMemory
from memory.postgres import EmbeddedPostgres, ping, prepare_database
from memory.tenant import MemoryObserver, NullObserver, Resources, TenantMemory

__all__ = ["BACKENDS", "MemoryBackends", "TenantMemory"]

log = logging.getLogger(__name__)
T = TypeVar("T")

# memory.backend in a tenant's settings → its class (memory.config.MemorySettings.backend names them).
BACKENDS: dict[str, type[TenantMemory]] = {
    "pgvector": LocalMemory,
    "platform": PlatformMemory,
}


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
        consolidation_poll_secs: float = 1.0,
    ) -> None:
        self._data_dir = data_dir
        self._database_url = database_url
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="mem0")
        self._call_timeout = call_timeout
        self._pool_size = pool_size
        self._observer: MemoryObserver = observer or NullObserver()
        self._embedded: EmbeddedPostgres | None = None
        self._resources: Resources | None = None
        self._async_pool: AsyncConnectionPool | None = None
        self._async_pool_lock = asyncio.Lock()
        self._tenants: dict[str, TenantMemory] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._embed_model = embed_model
        self.outbox = Outbox(data_dir / outbox_name, max_bytes=outbox_max_bytes)
        self._background: set[asyncio.Task[None]] = set()
        self._erasures_seen = 0
        self.consolidator = ConsolidationWorker(
            pool=self._loop_pool,
            tenants=self._consolidating,
            observer=self._observer,
            poll_secs=consolidation_poll_secs,
        )

    @property
    def database_url(self) -> str:
        return self._started().database_url

    def _started(self) -> Resources:
        if self._resources is None:
            raise RuntimeError("memory backends not started")
        return self._resources

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
        self._resources = Resources(
            executor=self._executor,
            observer=self._observer,
            call_timeout=self._call_timeout,
            outbox=self.outbox,
            database_url=url,
            embed_model=model,
            pool_size=self._pool_size,
            loop_pool=self._loop_pool,
            consolidation_requested=self.consolidator.kick,
        )
        await self.outbox.open()
        left = await self.outbox.pending()
        if left:
            log.warning("memory.outbox_found rows=%d (replayed as each tenant's backend is built)", left)
        self._spawn(self._listen(url), "erasure-listener")
        self._spawn(self.consolidator.run(), "consolidation-worker")

    def _consolidating(self) -> dict[str, Consolidating]:
        """The tenants whose consolidation jobs this process runs: built here, with it on."""
        return {
            name: backend
            for name, backend in self._tenants.items()
            if isinstance(backend, LocalMemory) and backend.settings.consolidation.enabled
        }

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
                self._spawn(self._backfill(backend), f"fts-backfill-{tenant}")
        return backend

    async def _backfill(self, backend: TenantMemory, pause: float = 0.2) -> None:
        """Fill the full-text column of a table an earlier version made, a batch at a time, in the
        background (``memory.pgvector``: the search computes missing values meanwhile). A failure is
        logged; the next start goes on where this one stopped."""
        filled = 0
        try:
            while batch := await backend.backfill_text_search():
                filled += batch
                await asyncio.sleep(pause)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.warning("memory.fts_backfill_failed tenant=%s error=%s", backend.tenant, type(e).__name__)
        if filled:
            log.info("memory.fts_backfilled tenant=%s rows=%d", backend.tenant, filled)

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
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(pgvector.ERASURE_CHANNEL)))
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
        backend = await BACKENDS[settings.backend].create(tenant, settings, self._started())
        log.info(
            "memory backend ready tenant=%s kind=%s seconds=%.3f",
            tenant,
            backend.kind,
            perf_counter() - start,
        )
        return backend

    async def _loop_pool(self) -> AsyncConnectionPool:
        """One async pool per process, shared by every tenant's listing (tables differ, not databases)."""
        async with self._async_pool_lock:  # two tenants built at once must not open two pools
            if self._async_pool is None:
                self._async_pool = await pgvector.create_async_pool(
                    self.database_url, max_size=self._pool_size, name="mem0-loop"
                )
            return self._async_pool

    async def ready(self, timeout: float = 2.0) -> bool:
        if self._resources is None:
            return False
        url = self._resources.database_url
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
        if self._resources is not None:
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
