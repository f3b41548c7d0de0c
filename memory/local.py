"""``LocalMemory``: mem0's ``Memory`` on the gateway's PostgreSQL + pgvector (``memory.backend: pgvector``).

``Memory.from_config`` costs 50-200 ms warm and opens a connection pool; building it per connection
(as Pipecat's ``Mem0MemoryService`` does in ``__init__``) puts that on every call set-up. Here each
tenant's ``Memory`` is built once, on first use, in a worker thread, with a table of its own
(``mem0_<tenant>``, ``memory.pgvector.IndexedPGVector``), WordLlama embeddings and its history and
message log in PostgreSQL (``memory.mem0compat``). The greeting's listing runs on the event loop.

The per-turn search is one statement on the event loop too, fusing full-text and vector rankings
(``memory.retrieval``), and every read leaves out what the tenant's retention expired
(``memory.retention``), which ``purge_expired`` deletes.

Erasure (``forget``) is cluster-wide: one transaction deletes the scope's rows, history and messages,
writes a tombstone (``gateway_erasures``) and ``NOTIFY gateway_erasure``. Every process LISTENs
(``memory.backends``) and drops the scope's queued writes and outbox rows; and every insert checks the
tombstones, so a write from a session that started before the erasure is dropped on every replica —
also one that missed the notice. A session started after the erasure writes normally. Times compare
the gateway's wall clock (session start) with the database's (``erased_at``): replicas' clocks must be
synchronised (NTP) to well under a session's length.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import AsyncIterator
from typing import Any, Self

from mem0 import Memory
from mem0.configs.base import MemoryConfig, MemoryItem
from mem0.llms.configs import LlmConfig
from mem0.vector_stores.configs import VectorStoreConfig
from psycopg import sql
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from memory import consolidation, embedder, extraction, mem0compat, pgvector, ranking, retrieval
from memory.config import ConsolidationSettings, MemorySettings
from memory.retention import Purged, Retention
from memory.scope import MemoryScope
from memory.tenant import Resources, TenantMemory, results


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
# A purge round (at most its batches of deletes) is bounded by this, not by the call timeout.
PURGE_TIMEOUT_SECS = 120.0
# The per-turn query is the user's latest message; its first characters say what it is about (a
# pasted page would only cost embedding time on the loop).
MAX_QUERY_CHARS = 2000


class LocalMemory(TenantMemory):
    """A tenant's mem0 ``Memory`` on PostgreSQL: its own sync pool, and a listing on the event loop
    where the store is our table in our database."""

    client: Memory
    portable = True

    def __init__(
        self,
        *,
        tenant: str,
        kind: str,
        client: Memory,
        settings: MemorySettings,
        resources: Resources,
        pool: ConnectionPool,
        lister: pgvector.AsyncLister | None,
    ) -> None:
        super().__init__(tenant=tenant, kind=kind, client=client, settings=settings, resources=resources)
        self._pool = pool
        self._lister = lister

    @classmethod
    async def create(cls, tenant: str, settings: MemorySettings, resources: Resources) -> Self:
        pool = await resources.run(
            lambda: pgvector.create_pool(
                resources.database_url, max_size=resources.pool_size, name=f"mem0-{tenant}"
            )
        )
        config = _config(tenant, settings, pool, resources.embed_model)
        client = await resources.run(lambda: Memory(config))
        store = client.vector_store
        retention = Retention.of(settings.retention)
        if isinstance(store, pgvector.IndexedPGVector):
            store.retention = retention
        if isinstance(store, mem0compat.PGVectorBase):
            await resources.run(store.ensure_collection)
        if "history_db_path" not in settings.local_config:
            await resources.run(lambda: mem0compat.install_history(client, pool, table_name(tenant)))
        lister = None
        if isinstance(store, pgvector.IndexedPGVector) and store.connection_pool is pool:
            # Our table in our database (a tenant's local_config may point elsewhere): the
            # greeting's listing can run on the loop.
            lister = pgvector.AsyncLister(await resources.loop_pool(), store.collection_name, retention)
        return cls(
            tenant=tenant,
            kind=str(config.vector_store.provider),
            client=client,
            settings=settings,
            resources=resources,
            pool=pool,
            lister=lister,
        )

    async def recent(
        self, scope: MemoryScope, limit: int, timeout: float | None = None, role: str | None = None
    ) -> list[dict[str, Any]]:
        filters = self.read_filters(scope)
        local = self.client
        local_filters: dict[str, Any] = {**filters, "role": role} if role else filters
        if self._lister is not None and limit <= LOOP_LIST_MAX:
            rows = await self._acall("get_all", self._lister.list(local_filters, limit), timeout)
            return [as_memory(r) for r in rows if not mem0compat.payload_is_expired(r.payload)]
        found = results(
            await self._call("get_all", lambda: local.get_all(filters=local_filters, top_k=limit), timeout)
        )
        return [m for m in found if ranking.is_current(m)]

    @property
    def consolidation_settings(self) -> ConsolidationSettings:
        return self.settings.consolidation

    async def consolidate_job(self, job: consolidation.Job, started_at: str) -> consolidation.Result:
        """One consolidation job's blocking work (mem0 extraction, our decision) on the thread pool."""
        client, settings = self.client, self.settings.consolidation
        return await self._call(
            "consolidate",
            lambda: consolidation.consolidate(client, job, settings, started_at),
            consolidation.LEASE_SECS - 30,
        )

    async def _users_words(
        self, scope: MemoryScope, limit: int, timeout: float | None
    ) -> list[dict[str, Any]]:
        return await self.recent(scope, limit, timeout, role="user")

    async def search(
        self, scope: MemoryScope, query: str, *, limit: int, threshold: float, timeout: float | None = None
    ) -> list[dict[str, Any]]:
        """The per-turn search: one statement on the loop (``memory.retrieval``), or mem0's own
        ``Memory.search`` for ``search_mode: mem0`` and for a store that is not our table."""
        mode = self.settings.search_mode
        if mode == "mem0" or self._lister is None:
            return await super().search(scope, query, limit=limit, threshold=threshold, timeout=timeout)
        query = query[:MAX_QUERY_CHARS]
        model = self.client.embedding_model
        text = retrieval.content_words(query)
        if isinstance(model, embedder.WordLlamaEmbedding):
            vector = model.embed(text, "search")  # ≈20-50 µs: cheaper than a thread hop
        else:  # a tenant's own embedder may call a service
            vector = await self._call("embed", lambda: model.embed(text, "search"), timeout)
        lister, filters = self._lister, self.read_filters(scope)
        rows = await self._acall(
            "search",
            lister.search(query, vector, limit, filters, threshold=threshold, lexical=mode == "hybrid"),
            timeout,
        )
        return [{**as_memory(r), "score": r.score} for r in rows]

    def _add_fact(self, text: str, payload: dict[str, Any]) -> Any:
        client = self.client
        return lambda: mem0compat.create_memory(client, text, payload)

    async def export_pages(
        self, scope: MemoryScope | None, page: int = 500
    ) -> AsyncIterator[list[dict[str, Any]]]:
        store = self.client.vector_store
        if not isinstance(store, pgvector.IndexedPGVector):
            raise ValueError("export reads the gateway's own store; this tenant's local_config replaces it")
        filters = scope.retrieval_filters() if scope is not None else None
        after: tuple[str, str] | None = None
        while True:
            rows = await self._call("get_all", functools.partial(store.export_page, filters, after, page))
            if not rows:
                return
            yield [as_memory(r) for r in rows]
            last = rows[-1]
            after = ((last.payload or {}).get("created_at") or "", last.id)

    async def backfill_text_search(self, batch: int = 200) -> int:
        store = self.client.vector_store
        if not isinstance(store, pgvector.IndexedPGVector) or not store.fts_backfill:
            return 0
        return await self._call("backfill", functools.partial(store.backfill_text_search, batch))

    async def purge_expired(self, *, batch: int, max_batches: int) -> Purged | None:
        store, db = self.client.vector_store, self.client.db
        if not isinstance(store, pgvector.IndexedPGVector) or store.retention.forever:
            return Purged()
        history = db if isinstance(db, mem0compat.PgHistory) else None
        purged = await self._call(
            "purge",
            lambda: store.purge_expired(batch=batch, max_batches=max_batches, history=history),
            PURGE_TIMEOUT_SECS,
        )
        if purged is not None:
            for kind, count in (("turn", purged.turns), ("fact", purged.facts)):
                if count:
                    self._observer.purged(self.tenant, kind, count)
        return purged

    async def _erase(self, scope: MemoryScope, timeout: float) -> int:
        """mem0 deletes each memory; then one transaction erases the rest, history and message log
        included, and tells every replica (module docstring)."""
        local, filters, tenant = self.client, scope.retrieval_filters(), self.tenant
        return await self._call("delete_all", lambda: _erase_local(local, filters, tenant), timeout)

    async def _release(self) -> None:
        await self._run(self._pool.close)


def _config(tenant: str, settings: MemorySettings, pool: ConnectionPool, model: Any) -> MemoryConfig:
    llm: LlmConfig
    if settings.extraction_llm is not None:
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
        # Consolidation jobs of the scope: nothing is left for them to do.
        conn.execute(
            sql.SQL("DELETE FROM {} WHERE tenant = %s AND scope @> %s").format(
                sql.Identifier(consolidation.JOBS_TABLE)
            ),
            (tenant, Jsonb(filters)),
        )
        # The payload names the tenant and the tombstone's id: nothing about the person.
        conn.execute("SELECT pg_notify(%s, %s)", (pgvector.ERASURE_CHANNEL, f"{tenant}\t{row[0]}"))
    return late
