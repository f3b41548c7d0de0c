"""Contract of the seam to mem0's private parts (``memory/mem0compat.py``).

These fail loudly when an upgrade of mem0 changes what the gateway relies on: the methods mem0's
``Memory`` calls on ``self.db`` (replaced by ``PgHistory``), their signatures, the private helpers
re-exported by ``mem0compat``, the ``PGVector`` hooks ``PGVectorBase`` renames (run by mem0's own
methods on real PostgreSQL), the factories' provider tables, and ``SQLiteManager``'s lock and tables
(a real one, purged). Then a round trip through a real ``Memory`` on real PostgreSQL shows our store,
embedder and history are the ones mem0 uses.
"""

from __future__ import annotations

import asyncio
import inspect
import re
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import mem0.memory.main
import mem0.utils.factory
import psycopg
from mem0.memory.storage import SQLiteManager
from mem0.vector_stores.pgvector import PGVector

from memory import embedder, mem0compat, pgvector
from memory.backends import MemoryBackends
from memory.config import MemorySettings
from memory.local import table_name
from memory.mem0compat import DB_METHODS, PgHistory, history_tables
from memory.scope import MemoryScope
from tests.conftest import unique
from tests.stores import where_on_disk


def _db_methods_mem0_calls() -> set[str]:
    source = inspect.getsource(mem0.memory.main)
    return set(re.findall(r"self\.db\.([a-z_]+)\(", source)) | set(
        re.findall(r"to_thread\(\s*self\.db\.([a-z_]+)", source)
    )


def test_pghistory_has_every_method_mem0s_memory_calls_on_its_db() -> None:
    called = _db_methods_mem0_calls()
    assert called, "mem0 no longer calls self.db.<method>(…): Memory.db is not what mem0compat replaces"
    assert called <= set(DB_METHODS), f"mem0 calls db methods PgHistory lacks: {called - set(DB_METHODS)}"
    for name in DB_METHODS:
        assert callable(getattr(PgHistory, name, None)), name


def test_pghistory_accepts_what_sqlitemanager_accepts() -> None:
    for name in DB_METHODS:
        theirs = inspect.signature(getattr(SQLiteManager, name))
        ours = inspect.signature(getattr(PgHistory, name))
        for param in theirs.parameters.values():
            assert param.name in ours.parameters, f"{name}: mem0 passes {param.name}, PgHistory lacks it"
            assert ours.parameters[param.name].kind == param.kind, (
                f"{name}({param.name}) is passed differently"
            )


def test_the_private_helpers_the_gateway_uses_still_exist() -> None:
    assert mem0compat.payload_is_expired({"expiration_date": "2000-01-01"}) is True
    assert mem0compat.payload_is_expired({"expiration_date": "2999-01-01"}) is False
    conditions, params = mem0compat.build_filter_conditions({"user_id": "t:u"})
    assert conditions and params


def test_the_pgvector_hooks_pgvectorbase_renames_still_exist() -> None:
    for name in ("_get_cursor", "_ensure_collection"):
        assert callable(getattr(PGVector, name, None)), f"mem0's PGVector has no {name} any more"
    init = inspect.getsource(PGVector.__init__)
    assert "self._collection_ensured" in init, "mem0's PGVector no longer tracks _collection_ensured"


class CountingStore(mem0compat.PGVectorBase):
    """Counts what mem0's own methods run through the renamed hooks."""

    cursors = 0
    ensured = 0

    def cursor(self, commit: bool = False) -> AbstractContextManager[Any]:
        self.cursors += 1
        return super().cursor(commit)

    def ensure_collection(self) -> None:
        self.ensured += 1
        super().ensure_collection()


def test_mem0s_own_pgvector_methods_run_through_the_renamed_hooks(database_url: str) -> None:
    pool = pgvector.create_pool(database_url, max_size=1)
    try:
        store = CountingStore(
            **dict.fromkeys(("dbname", "user", "password", "host", "port")),
            collection_name=unique("hooks"),
            embedding_model_dims=4,
            diskann=False,
            hnsw=False,
            connection_pool=pool,
        )
        assert not store.collection_ensured
        assert store.get("00000000-0000-0000-0000-000000000000") is None  # mem0's get, untouched
        assert store.ensured == 1, "mem0's PGVector.get no longer runs _ensure_collection"
        # list_cols and create_col (from mem0's _ensure_collection), then get's SELECT.
        assert store.cursors >= 3, f"mem0's PGVector took {store.cursors} cursors, not 3, via _get_cursor"
        assert store.collection_ensured, "mem0's _ensure_collection no longer sets _collection_ensured"
        assert store.collection_name in store.list_cols()
        store.delete_col()
    finally:
        pool.close()


def test_mem0s_factories_build_the_providers_we_register() -> None:
    pgvector.register()
    embedder.register()
    store_class = mem0.utils.factory.VectorStoreFactory.provider_to_class.get(pgvector.PROVIDER)
    assert store_class == "memory.pgvector.IndexedPGVector", "VectorStoreFactory.provider_to_class moved"
    built = mem0.utils.factory.EmbedderFactory.create(
        embedder.PROVIDER, {"model": FakeModel(), "embedding_dims": embedder.DIMENSIONS}, None
    )
    assert isinstance(built, embedder.WordLlamaEmbedding), "EmbedderFactory.provider_to_class moved"


class FakeModel:
    """Stands in for WordLlama where only the factory's choice of class is under test."""


def test_a_sqlite_history_is_purged_of_the_scope_under_mem0s_lock() -> None:
    db = SQLiteManager(":memory:")
    assert hasattr(db, "_lock") and hasattr(db, "connection"), "SQLiteManager's _lock / connection moved"
    ada = {"user_id": "t/ada&co=1", "agent_id": "bot"}
    bob = {"user_id": "t/bob", "agent_id": "bot"}
    db.save_messages([{"role": "user", "content": "ada's words"}], mem0.memory.main._build_session_scope(ada))
    with_run = mem0.memory.main._build_session_scope({**ada, "run_id": "r1"})
    db.save_messages([{"role": "user", "content": "ada's later words"}], with_run)
    db.save_messages([{"role": "user", "content": "bob's words"}], mem0.memory.main._build_session_scope(bob))
    db.add_history("m-ada", None, "ada's words", "ADD")
    db.add_history("m-ada", "ada's words", None, "DELETE", is_deleted=1)
    db.add_history("m-bob", None, "bob's words", "ADD")

    mem0compat.purge_sqlite_history(db, ada)

    left = db.connection.execute("SELECT content FROM messages").fetchall()
    assert left == [("bob's words",)], "mem0's message-log scope keys no longer match mem0compat's"
    assert db.get_history("m-ada") == []
    assert [h["event"] for h in db.get_history("m-bob")] == ["ADD"]
    db.close()


async def test_a_real_memorys_history_lands_in_postgresql_not_on_disk(
    tmp_root: Path, database_url: str
) -> None:
    data_dir = tmp_root / unique("compat")
    backends = MemoryBackends(data_dir=data_dir, database_url=database_url, max_workers=2)
    await backends.start()
    try:
        tenant = unique("compat")
        backend = await backends.for_tenant(tenant, MemorySettings())
        assert isinstance(backend.client.db, PgHistory)
        assert isinstance(backend.client.vector_store, pgvector.IndexedPGVector)
        assert isinstance(backend.client.embedding_model, embedder.WordLlamaEmbedding)
        scope = MemoryScope(tenant, user_id="historian")
        await backend.add(scope, [{"role": "user", "content": "I once sailed to Svalbard"}], infer=False)
        history, _ = history_tables(table_name(tenant))
        with psycopg.connect(database_url) as conn:
            rows = conn.execute(f'SELECT event, new_memory FROM "{history}"').fetchall()
        assert rows == [("ADD", "I once sailed to Svalbard")]
        assert await asyncio.to_thread(where_on_disk, data_dir, "Svalbard") == []
    finally:
        await backends.close()


async def test_create_memory_stores_a_fact_as_mem0_would_minus_the_role(
    tmp_root: Path, database_url: str
) -> None:
    """``mem0compat.create_memory`` runs mem0's private ``Memory._create_memory``: the row carries the
    given payload (IDs, ``created_at`` kept) and mem0's own keys (hash, updated_at), no role, and its
    history ADD — what an imported fact needs."""
    backends = MemoryBackends(data_dir=tmp_root / unique("compat"), database_url=database_url, max_workers=2)
    await backends.start()
    try:
        tenant = unique("compat")
        backend = await backends.for_tenant(tenant, MemorySettings())
        payload = {"user_id": f"{tenant}/ada", "created_at": "2025-01-02T03:04:05+00:00", "source": "import"}
        memory_id = await asyncio.to_thread(
            mem0compat.create_memory, backend.client, "Ada's sister is Ingrid", payload
        )
        row = backend.client.vector_store.get(memory_id)
        assert row is not None and "role" not in row.payload
        assert {k: row.payload[k] for k in payload} == payload
        assert row.payload["data"] == "Ada's sister is Ingrid" and row.payload["hash"]
        assert row.payload["updated_at"] == payload["created_at"]
        assert [h["event"] for h in backend.client.db.get_history(memory_id)] == ["ADD"]
    finally:
        await backends.close()
