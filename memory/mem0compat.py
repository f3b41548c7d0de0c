"""The project's seam to mem0's private parts, and mem0's history and message log in PostgreSQL.

Every use of a mem0 name it does not offer publicly is here; ``tests/test_mem0_compat.py`` runs each
against the installed mem0 and fails with the name of what moved, so an upgrade is one test run:

* ``Memory.db`` (mem0's SQLite history) is replaced by ``PgHistory``, which must offer every method
  mem0 calls on it, with mem0's signatures (below).
* ``PGVectorBase``: mem0's ``PGVector`` takes each statement's cursor from its private
  ``_get_cursor`` and runs its private ``_ensure_collection`` (guarded by ``_collection_ensured``)
  first. ``memory.pgvector.IndexedPGVector`` changes both; here they are renamed into methods of our
  own (``cursor``, ``ensure_collection``, ``collection_ensured``).
* ``register_vector_store`` / ``register_embedder``: mem0 2.2 offers a public ``register_provider``
  on ``LlmFactory`` only; for stores and embedders this writes into the factories' ``provider_to_class``.
* ``purge_sqlite_history``: a tenant that keeps mem0's SQLite history (its own ``history_db_path``) is
  purged on erasure under ``SQLiteManager``'s private ``_lock``, with SQL on its tables.
* ``create_memory``: an imported fact (a memory with no role) is stored by mem0's private
  ``Memory._create_memory`` — what ``add(infer=False)`` runs per message, minus the role it sets —
  so its row, hash and history are exactly mem0's.
* ``payload_is_expired`` and ``build_filter_conditions`` re-export mem0's private helpers, so listings
  on the event loop decide expiry and build filters exactly as mem0 does; ``_escape_scope_value`` keys
  the message log.

**History in PostgreSQL.** mem0's ``Memory`` keeps two tables besides the vector store: ``history``
(every ADD/UPDATE/DELETE with the old and new text — a DELETE keeps the erased text as
``old_memory``) and ``messages`` (the last messages per scope, which ``infer=True`` feeds back to its
LLM). Both live in ``Memory.db``, a ``mem0.memory.storage.SQLiteManager`` on local disk: one file per
process, which an erasure through another replica cannot reach. Here ``Memory.db`` is replaced by
``PgHistory``, the same methods over two tables per tenant in the tenant's PostgreSQL
(``<table>_history``, ``<table>_messages``), shared by every replica, so ``forget`` removes the text
once for everyone.

A write that an erasure overtook (a session that started before the erasure, its turn landing after
it) must not leave its text here either: ``memory.pgvector`` refuses its row, and ``PgHistory`` then
skips the ``ADD`` history of a memory whose row is not in the table, and the message log of a scope
erased since the writing session started (``writing()`` tells it that session's start and IDs).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

from mem0 import Memory
from mem0.embeddings.base import EmbeddingBase
from mem0.memory.main import _escape_scope_value, _payload_is_expired
from mem0.memory.storage import SQLiteManager
from mem0.utils.factory import EmbedderFactory, VectorStoreFactory
from mem0.vector_stores.pgvector import PGVector, _build_filter_conditions
from psycopg import sql
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

T = TypeVar("T")

# mem0 private helpers, re-exported so that no other module imports a mem0 ``_name`` (contract-tested).
payload_is_expired: Callable[..., bool] = _payload_is_expired
build_filter_conditions: Callable[..., tuple[list[str], list[Any]]] = _build_filter_conditions

log = logging.getLogger(__name__)

# The methods mem0.memory.main calls on ``self.db`` (checked by the contract test).
DB_METHODS = (
    "add_history",
    "batch_add_history",
    "get_history",
    "save_messages",
    "get_last_messages",
    "reset",
    "close",
)
MESSAGES_KEPT = 10  # as SQLiteManager: the last 10 per scope

_writing = threading.local()  # .session_start (ISO 8601), .ids: the gateway write this thread runs


@contextmanager
def writing(session_start: str, ids: dict[str, str]) -> Iterator[None]:
    """Mark the mem0 call this thread makes now as a write of a session started at ``session_start``."""
    _writing.session_start, _writing.ids = session_start, ids
    try:
        yield
    finally:
        _writing.session_start = _writing.ids = None


def run_writing(session_start: str, ids: dict[str, str], fn: Callable[[], T]) -> T:
    with writing(session_start, ids):
        return fn()


def create_memory(client: Memory, text: str, payload: dict[str, Any]) -> str:
    """Store ``text`` as one memory with ``payload`` as its metadata (IDs included, and no ``role``
    unless given); mem0 embeds it, hashes it, keeps a ``created_at`` it is given, writes its history
    ADD. Returns the new memory's id."""
    memory_id: str = client._create_memory(text, {}, dict(payload))
    return memory_id


def _class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register_vector_store(provider: str, store: type[PGVector]) -> None:
    """Have mem0 build ``store`` for ``provider`` (process-wide, idempotent)."""
    VectorStoreFactory.provider_to_class[provider] = _class_path(store)


def register_embedder(provider: str, embedder: type[EmbeddingBase]) -> None:
    """Have mem0 build ``embedder`` for ``provider`` (process-wide, idempotent).

    mem0's ``EmbedderConfig`` still refuses names it does not know: configure the provider with a
    subclass of it (``memory.embedder.WordLlamaEmbedderConfig``).
    """
    EmbedderFactory.provider_to_class[provider] = _class_path(embedder)


class PGVectorBase(PGVector):
    """mem0's ``PGVector``, with the private hooks its methods run through renamed into our own API.

    Every statement of mem0's takes its cursor from ``cursor`` and first runs ``ensure_collection``;
    a subclass overrides those, and reaches mem0's own through ``mem0_cursor`` and
    ``mem0_ensure_collection``.
    """

    @property
    def collection_ensured(self) -> bool:
        """Whether this instance has made sure its table exists (mem0 checks it before each call)."""
        ensured: bool = self._collection_ensured
        return ensured

    @collection_ensured.setter
    def collection_ensured(self, value: bool) -> None:
        self._collection_ensured = value

    def table(self) -> sql.Identifier:
        """The collection's table, quoted."""
        return sql.Identifier(self.collection_name)

    def mem0_cursor(self, commit: bool = False) -> AbstractContextManager[Any]:
        """mem0's cursor: a pooled connection's, committed at the end when ``commit``, else rolled back
        on error."""
        return PGVector._get_cursor(self, commit)

    def mem0_ensure_collection(self) -> None:
        """mem0's check: list the tables, create ours if missing, then mark this instance ensured."""
        PGVector._ensure_collection(self)

    def cursor(self, commit: bool = False) -> AbstractContextManager[Any]:
        """The cursor each statement runs on, mem0's included."""
        return self.mem0_cursor(commit)

    def ensure_collection(self) -> None:
        """What runs before each statement, mem0's included."""
        self.mem0_ensure_collection()

    def _get_cursor(self, commit: bool = False) -> AbstractContextManager[Any]:
        return self.cursor(commit)

    def _ensure_collection(self) -> None:
        self.ensure_collection()


def purge_sqlite_history(db: SQLiteManager, filters: dict[str, str]) -> None:
    """Erase a scope from mem0's own SQLite history and message log (a tenant's ``history_db_path``):
    the history of every deleted memory, and the scope's messages."""
    # mem0's message log is keyed "agent_id=…&run_id=…&user_id=…"; a row is this scope's when it
    # carries every one of the scope's IDs.
    tokens = _scope_tokens(filters)
    match = " AND ".join(["instr('&' || session_scope || '&', ?) > 0"] * len(tokens))
    with db._lock:
        db.connection.execute(
            "DELETE FROM history WHERE memory_id IN (SELECT memory_id FROM history WHERE event = 'DELETE')"
        )
        db.connection.execute(f"DELETE FROM messages WHERE {match}", tokens)
        db.connection.commit()


def _scope_tokens(filters: dict[str, str]) -> list[str]:
    """``&key=value&`` for each of the scope's IDs, escaped as mem0 escapes its message-log keys."""
    return [f"&{key}={_escape_scope_value(value)}&" for key, value in sorted(filters.items())]


def history_tables(collection: str) -> tuple[str, str]:
    return f"{collection}_history", f"{collection}_messages"


class PgHistory:
    """``SQLiteManager``'s interface over the tenant's sync psycopg pool (called from worker threads)."""

    def __init__(self, pool: ConnectionPool, collection: str) -> None:
        self.pool = pool
        self._collection = sql.Identifier(collection)
        self._collection_name = collection
        history, messages = self.names = history_tables(collection)
        self._history = sql.Identifier(history)
        self._messages = sql.Identifier(messages)
        self._lock_key = f"mem0-history:{collection}"

    def create_tables(self) -> None:
        """Create both tables (idempotent; serialised across replicas by an advisory lock)."""
        with self.pool.connection() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self._lock_key,))
            conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} (id TEXT PRIMARY KEY, memory_id TEXT, old_memory TEXT,"
                    " new_memory TEXT, event TEXT, created_at TEXT, updated_at TEXT, is_deleted INTEGER,"
                    " actor_id TEXT, role TEXT)"
                ).format(self._history)
            )
            conn.execute(
                sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (memory_id)").format(
                    sql.Identifier(f"{self.names[0]}_memory_idx"), self._history
                )
            )
            conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} (id TEXT PRIMARY KEY, session_scope TEXT, role TEXT,"
                    " content TEXT, name TEXT, created_at TEXT)"
                ).format(self._messages)
            )
            conn.execute(
                sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (session_scope, created_at)").format(
                    sql.Identifier(f"{self.names[1]}_scope_idx"), self._messages
                )
            )

    def _insert_history(self, records: list[dict[str, Any]]) -> None:
        rows = [
            (
                str(uuid.uuid4()),
                r.get("memory_id"),
                r.get("old_memory"),
                r.get("new_memory"),
                r.get("event"),
                r.get("created_at"),
                r.get("updated_at"),
                int(r.get("is_deleted", 0) or 0),
                r.get("actor_id"),
                r.get("role"),
            )
            for r in records
        ]
        # An ADD whose memory row is not in the table — refused as a duplicate of a replayed write, or
        # because an erasure overtook it (``memory.pgvector``) — is not history; it would only keep
        # the text. Other events (UPDATE, DELETE) are recorded as mem0 records them.
        statement = sql.SQL(
            "INSERT INTO {history} (id, memory_id, old_memory, new_memory, event, created_at, updated_at,"
            " is_deleted, actor_id, role) SELECT %s, %s, %s, %s, %s, %s, %s, %s, %s, %s"
            " WHERE %s <> 'ADD' OR EXISTS (SELECT 1 FROM {memories} WHERE id::text = %s)"
        ).format(history=self._history, memories=self._collection)
        with self.pool.connection() as conn, conn.cursor() as cur:
            cur.executemany(statement, [(*row, row[4], row[1]) for row in rows])

    def add_history(
        self,
        memory_id: str,
        old_memory: str | None,
        new_memory: str | None,
        event: str,
        *,
        created_at: str | None = None,
        updated_at: str | None = None,
        is_deleted: int = 0,
        actor_id: str | None = None,
        role: str | None = None,
    ) -> None:
        self._insert_history(
            [
                {
                    "memory_id": memory_id,
                    "old_memory": old_memory,
                    "new_memory": new_memory,
                    "event": event,
                    "created_at": created_at,
                    "updated_at": updated_at,
                    "is_deleted": is_deleted,
                    "actor_id": actor_id,
                    "role": role,
                }
            ]
        )

    def batch_add_history(self, records: list[dict[str, Any]]) -> None:
        if records:
            self._insert_history(records)

    def get_history(self, memory_id: str) -> list[dict[str, Any]]:
        with self.pool.connection() as conn:
            rows = conn.execute(
                sql.SQL(
                    "SELECT id, memory_id, old_memory, new_memory, event, created_at, updated_at, is_deleted,"
                    " actor_id, role FROM {} WHERE memory_id = %s ORDER BY created_at ASC, updated_at ASC"
                ).format(self._history),
                (memory_id,),
            ).fetchall()
        keys = ("id", "memory_id", "old_memory", "new_memory", "event", "created_at", "updated_at")
        return [
            {**dict(zip(keys, r[:7], strict=True)), "is_deleted": bool(r[7]), "actor_id": r[8], "role": r[9]}
            for r in rows
        ]

    def save_messages(self, messages: list[dict[str, Any]], session_scope: str) -> None:
        if not messages or self._erased_since_start():
            return
        now = datetime.now(UTC).isoformat()
        rows = [
            (str(uuid.uuid4()), session_scope, m.get("role"), m.get("content"), m.get("name"), now)
            for m in messages
        ]
        with self.pool.connection() as conn, conn.cursor() as cur:
            cur.executemany(
                sql.SQL(
                    "INSERT INTO {} (id, session_scope, role, content, name, created_at)"
                    " VALUES (%s, %s, %s, %s, %s, %s)"
                ).format(self._messages),
                rows,
            )
            cur.execute(
                sql.SQL(
                    "DELETE FROM {0} WHERE session_scope = %s AND id NOT IN"
                    " (SELECT id FROM {0} WHERE session_scope = %s ORDER BY created_at DESC LIMIT %s)"
                ).format(self._messages),
                (session_scope, session_scope, MESSAGES_KEPT),
            )

    def _erased_since_start(self) -> bool:
        """True when this thread writes for a session whose scope was erased after it started."""
        start, ids = getattr(_writing, "session_start", None), getattr(_writing, "ids", None)
        if not start or not ids:
            return False
        with self.pool.connection() as conn:
            row = conn.execute(
                "SELECT 1 FROM gateway_erasures WHERE collection = %s AND erased_at > %s::timestamptz"
                " AND %s::jsonb @> scope LIMIT 1",
                (self._collection_name, start, Jsonb(ids)),
            ).fetchone()
        return row is not None

    def get_last_messages(self, session_scope: str, limit: int = 10) -> list[dict[str, Any]]:
        with self.pool.connection() as conn:
            rows = conn.execute(
                sql.SQL(
                    "SELECT role, content, name, created_at FROM (SELECT role, content, name, created_at"
                    " FROM {} WHERE session_scope = %s ORDER BY created_at DESC LIMIT %s) m"
                    " ORDER BY created_at ASC"
                ).format(self._messages),
                (session_scope, limit),
            ).fetchall()
        return [{"role": r[0], "content": r[1], "name": r[2], "created_at": r[3]} for r in rows]

    def reset(self) -> None:
        """Empty both tables (mem0's ``Memory.reset``; SQLiteManager drops them, we keep the schema)."""
        with self.pool.connection() as conn:
            conn.execute(sql.SQL("DELETE FROM {}").format(self._history))
            conn.execute(sql.SQL("DELETE FROM {}").format(self._messages))

    def close(self) -> None:
        """The pool is the backend registry's; nothing of our own to release."""

    def purge_history(self, memory_ids: list[str]) -> tuple[sql.Composed, list[Any]]:
        """The statement (run in the purge's transaction) removing the history of purged memories:
        it holds their text (``new_memory`` of the ADD, both sides of an UPDATE)."""
        return sql.SQL("DELETE FROM {} WHERE memory_id = ANY(%s)").format(self._history), [memory_ids]

    def purge_messages(self, before: str) -> tuple[sql.Composed, list[Any]]:
        """The statement removing message-log rows (turns ``infer=True`` fed to its LLM) older than
        ``before`` (ISO 8601, UTC, as ``save_messages`` writes ``created_at``)."""
        return sql.SQL("DELETE FROM {} WHERE created_at < %s").format(self._messages), [before]

    def erase_statements(
        self, memory_ids: list[str], filters: dict[str, str]
    ) -> list[tuple[sql.Composed, list[Any]]]:
        """Statements (run in the caller's erasure transaction) removing the scope's history and messages.

        History rows carry no scope, only a memory id: those of the erased memories go, and — as
        before — any history of a memory that has been deleted. Message-log rows are keyed
        ``agent_id=…&run_id=…&user_id=…``; a row is the scope's when it carries every scope ID.
        """
        tokens = _scope_tokens(filters)
        match = " AND ".join(["strpos('&' || session_scope || '&', %s) > 0"] * len(tokens))
        return [
            (
                sql.SQL(
                    "DELETE FROM {0} WHERE memory_id = ANY(%s) OR memory_id IN"
                    " (SELECT memory_id FROM {0} WHERE event = 'DELETE')"
                ).format(self._history),
                [memory_ids],
            ),
            (sql.SQL("DELETE FROM {} WHERE " + match).format(self._messages), list(tokens)),
        ]


def install_history(client: Memory, pool: ConnectionPool, collection: str) -> PgHistory:
    """Replace ``client.db`` (mem0's SQLite history) with ``PgHistory``; create its tables first."""
    history = PgHistory(pool, collection)
    history.create_tables()
    old = client.db
    client.db = history
    if old is not None:
        old.close()
    return history
