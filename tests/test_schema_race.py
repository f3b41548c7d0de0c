"""Replicas started at the same moment on a fresh shared database all come up, and build its schema once.

Without serialisation, ``CREATE EXTENSION IF NOT EXISTS`` and ``CREATE TABLE/INDEX IF NOT EXISTS`` run by
two sessions at once both insert the same catalog row, and the loser fails with a unique violation
(``pg_extension_name_index``, ``pg_type_typname_nsp_index``, ``pg_class_relname_nsp_index``): "IF NOT
EXISTS" only looks at what was committed before the statement started.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from memory import pgvector
from memory.local import table_name
from memory.postgres import prepare_database
from tests.fake_llm import FakeLLM
from tests.procs import Cluster, fresh_database, replicas

ROUNDS = int(__import__("os").environ.get("SCHEMA_RACE_ROUNDS", "4"))
TENANTS = ("alpha", "beta")
# What every tenant table carries: mem0's own (primary key, HNSW, keyword GIN) and ours (scope keys and
# the two recency listings). A superset check: more may be added.
INDEX_SUFFIXES = (
    "pkey",
    "hnsw_idx",
    "text_lemmatized_idx",
    "user_id_idx",
    "agent_id_idx",
    "run_id_idx",
    "user_recent_idx",
    "user_role_recent_idx",
)


def _schema(url: str) -> tuple[int, dict[str, set[str]], int]:
    """(vector extensions, each table's indexes, invalid indexes) of the database at ``url``."""
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        row = conn.execute("SELECT count(*) FROM pg_extension WHERE extname = 'vector'").fetchone()
        extensions = int(row[0]) if row else 0
        tables: dict[str, set[str]] = {}
        for table, index in conn.execute(
            "SELECT tablename, indexname FROM pg_indexes WHERE schemaname = 'public'"
        ).fetchall():
            tables.setdefault(table, set()).add(index)
        row = conn.execute("SELECT count(*) FROM pg_index WHERE NOT indisvalid").fetchone()
        invalid = int(row[0]) if row else 0
    return extensions, tables, invalid


@pytest.mark.parametrize("round_", range(ROUNDS))
async def test_replicas_started_together_on_a_fresh_database_all_come_up(
    round_: int, tmp_path: Path, database_url: str, fake_llm: FakeLLM
) -> None:
    url = fresh_database(database_url)
    cluster = Cluster(root=tmp_path, database_url=url, llm_base_url=fake_llm.base_url)
    cluster.add_tenants(*({"name": name} for name in TENANTS))

    async with replicas(cluster.replica("a"), cluster.replica("b")) as procs:
        logs = {p.name: p.log() for p in procs}

    for name, log in logs.items():
        assert "memory.backend_failed" not in log, f"replica {name}:\n{log}"
        for tenant in TENANTS:
            assert f"memory backend ready tenant={tenant} " in log, f"replica {name}:\n{log}"
    extensions, tables, invalid = _schema(url)
    assert extensions == 1
    assert invalid == 0
    for tenant in TENANTS:
        table = table_name(tenant)
        assert {f"{table}_{suffix}" for suffix in INDEX_SUFFIXES} <= tables.get(table, set()), tables


def _at_once(workers: int, fn: Callable[[], object]) -> list[BaseException]:
    """Run ``fn`` on ``workers`` threads released together; return what they raised."""
    barrier = threading.Barrier(workers)
    errors: list[BaseException] = []

    def run() -> None:
        barrier.wait(10)
        try:
            fn()
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return errors


def test_prepare_database_from_many_threads_at_once_creates_the_extension_once(database_url: str) -> None:
    url = fresh_database(database_url)
    assert _at_once(8, lambda: prepare_database(url)) == []
    assert _schema(url)[0] == 1


def test_many_stores_ensuring_the_same_new_table_at_once_build_it_once(database_url: str) -> None:
    """As replicas (or threads) building one tenant's table — or mem0's lazily created entity table — do."""
    url = fresh_database(database_url)
    prepare_database(url)
    collection = f"race_{uuid.uuid4().hex[:8]}"
    pool = pgvector.create_pool(url, max_size=8, name="schema-race")
    try:

        def ensure() -> None:
            store = pgvector.IndexedPGVector(
                dbname="postgres",
                collection_name=collection,
                embedding_model_dims=8,
                user=None,
                password=None,
                host=None,
                port=None,
                diskann=False,
                hnsw=True,
                connection_pool=pool,
            )
            store.ensure_collection()

        assert _at_once(8, ensure) == []
    finally:
        pool.close()
    _, tables, invalid = _schema(url)
    assert {f"{collection}_{suffix}" for suffix in INDEX_SUFFIXES} <= tables.get(collection, set())
    assert invalid == 0
