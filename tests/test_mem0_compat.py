"""Contract of the seam to mem0's private parts (``memory/mem0compat.py``, ``memory/pgvector.py``).

These fail loudly when an upgrade of mem0 changes what the gateway relies on: the methods mem0's
``Memory`` calls on ``self.db`` (replaced by ``PgHistory``), their signatures, the private helpers
re-exported by ``mem0compat``, and the ``PGVector`` internals ``IndexedPGVector`` overrides. Then a
round trip through a real ``Memory`` on real PostgreSQL shows history lands in PostgreSQL.
"""

from __future__ import annotations

import asyncio
import inspect
import re
from pathlib import Path

import mem0.memory.main
import psycopg
from mem0.memory.storage import SQLiteManager
from mem0.vector_stores.pgvector import PGVector

from memory import mem0compat
from memory.backends import MemoryBackends, table_name
from memory.config import MemorySettings
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
    assert mem0compat.escape_scope_value("a&b=c") != "a&b=c"  # still escapes the scope separators
    assert mem0compat.payload_is_expired({"expiration_date": "2000-01-01"}) is True
    conditions, params = mem0compat.build_filter_conditions({"user_id": "t:u"})
    assert conditions and params
    assert mem0.memory.main._build_session_scope({"user_id": "x"}) == "user_id=x"


def test_the_pgvector_internals_indexedpgvector_overrides_still_exist() -> None:
    for name in ("_get_cursor", "_ensure_collection", "create_col", "insert", "list_cols", "_col"):
        assert callable(getattr(PGVector, name, None)), f"mem0's PGVector has no {name} any more"
    init = inspect.getsource(PGVector.__init__)
    assert "_collection_ensured" in init, "PGVector no longer tracks _collection_ensured"


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
        scope = MemoryScope(tenant, user_id="historian")
        await backend.add(scope, [{"role": "user", "content": "I once sailed to Svalbard"}], infer=False)
        history, _ = history_tables(table_name(tenant))
        with psycopg.connect(database_url) as conn:
            rows = conn.execute(f'SELECT event, new_memory FROM "{history}"').fetchall()
        assert rows == [("ADD", "I once sailed to Svalbard")]
        assert await asyncio.to_thread(where_on_disk, data_dir, "Svalbard") == []
    finally:
        await backends.close()
