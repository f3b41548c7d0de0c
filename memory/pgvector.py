"""mem0's ``pgvector`` store with the two fixes measured in docs/pitfalls.md.

As shipped, a filtered ``search`` runs ``WHERE payload->>'user_id' = … ORDER BY vector <=> q LIMIT k``
against an HNSW index: PostgreSQL walks the index, takes ≈40 candidates (``hnsw.ef_search``) and
filters *afterwards*, so once other users' rows dominate the table a user's own memories go missing
(recall@10 0.74 at 10k rows, 0.28 at 100k). Here:

* the payload's ``user_id`` / ``agent_id`` / ``run_id`` get expression indexes, plus two for the
  newest-first listings: ``(user_id, created_at)``, and ``(user_id, role, created_at)`` for the
  greeting's "what did the *user* say" listing. Without the latter PostgreSQL has no statistics on
  ``role``, guesses the filter keeps almost nothing, and reads and sorts all of a user's rows instead
  of walking the recency index: 1.2 ms at 1,000 memories (0.04 ms with it), a plan that flips back
  somewhere below 10,000;
* a scoped search first materialises the scope's rows through those indexes, then ranks them exactly —
  the result equals brute force by construction, at ≈1 ms per 1,000 rows in scope;
* connections come from a pool configured with ``prepare_threshold=None`` so psycopg never switches
  to a server-side generic plan (which would ignore the expression indexes after five executions);
* vectors travel as ``numpy.float32`` through pgvector's binary adapter instead of psycopg's slow
  per-element list adaptation (≈1.2 ms per row);
* ``list`` returns newest first, so "the last N memories" is a bounded, ordered query;
* the same listing is also offered on the event loop (``AsyncLister``), for the greeting: a thread
  doing mem0's ``get_all`` competes for the GIL with the loop setting the session up and took 11-13 ms
  for an empty user under load (0.5 ms alone), which was most of the greeting's wait.

* a generated ``fts`` column (the row's text as an English ``tsvector``, GIN-indexed) for the
  per-turn search, which fuses full-text and vector rankings in one statement (``hybrid_search``,
  ``memory.retrieval``);
* every read leaves out what the tenant's retention has expired (``memory.retention``), and the purge
  job deletes it in bounded batches (``purge_expired``).

Schema set-up (table, indexes, upgrades) runs in one transaction under a per-table advisory lock
(``memory.locks``), so replicas building the same tenant at once each run it once instead of failing
on the catalog's unique indexes.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import numpy as np
from mem0.vector_stores.pgvector import OutputData
from pgvector.psycopg import register_vector, register_vector_async
from psycopg import AsyncConnection, Connection, sql
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from memory import locks, mem0compat, retrieval
from memory.retention import KEEP_FOREVER, Purged, Retention

PROVIDER = "pgvector"
SCOPE_KEYS = ("user_id", "agent_id", "run_id")


# Store rows as mem0 types them (an alias: inside the classes, ``list`` is a method's name).
Rows = list[OutputData]


def _as_vector(values: Sequence[float]) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


def _configure_connection(conn: Connection[Any]) -> None:
    register_vector(conn)
    conn.commit()


# Both pools: no server-side prepared statements (a generic plan would ignore the expression indexes),
# a 10 s wait for a connection, opened by the caller.
_POOL_OPTIONS: dict[str, Any] = {"kwargs": {"prepare_threshold": None}, "timeout": 10.0, "open": False}


def create_pool(conninfo: str, *, min_size: int = 1, max_size: int = 8, name: str = "mem0") -> ConnectionPool:
    """A psycopg pool whose connections never use server-side prepared statements.

    The ``vector`` extension must already exist: the adapter looks its type up per connection.
    """
    pool = ConnectionPool(
        conninfo=conninfo,
        min_size=min_size,
        max_size=max_size,
        configure=_configure_connection,
        name=name,
        **_POOL_OPTIONS,
    )
    pool.open(wait=True, timeout=30.0)
    return pool


def _visible(
    filters: dict[str, Any] | None, retention: Retention, *, unexpired: bool = False, current: bool = False
) -> tuple[str, list[Any]]:
    """The WHERE clause (without the keyword) of the filtered rows a read may return: within the
    tenant's retention; with ``unexpired``, not past mem0's own ``expiration_date``; with ``current``,
    not superseded (``CURRENT``).

    ``unexpired`` leaves out rows whose ISO ``expiration_date`` is before today (UTC), as mem0's
    ``get_all`` does afterwards in Python, so that a LIMIT is exact instead of over-fetched.
    """
    conditions, params = mem0compat.build_filter_conditions(filters)
    now = datetime.now(UTC)
    kept, kept_params = retention.kept(now)
    conditions += kept
    params += kept_params
    if unexpired:
        conditions.append(UNEXPIRED)
        params.append(now.date().isoformat())
    if current:
        conditions.append(CURRENT)
    return (" AND ".join(f"({c})" for c in conditions) if conditions else "TRUE"), params


# What the greeting's listing and the searches see of post-session consolidation (issue 16, its
# payload keys ``superseded_at`` and ``consolidated_at``): a fact a newer one superseded stays for
# audit, and a turn consolidation turned into facts stays too, but neither is recalled. Rows of tenants
# that do not consolidate carry neither key.
CURRENT = "NOT (payload ? 'superseded_at' OR payload ? 'consolidated_at')"
# A raw turn (a row with a ``role``), left out of mem0's searches inside ``facts_only()``.
FACT = "NOT payload ? 'role'"
_FACTS_ONLY: ContextVar[bool] = ContextVar("facts_only", default=False)


@contextmanager
def facts_only() -> Iterator[None]:
    """mem0's searches in this block (this thread) see the scope's facts, not its raw turns.

    Consolidation's ``add(infer=True)`` first searches what the user's memory already holds: mem0
    shows those to the model as known and skips any extracted fact whose text one of them has (an
    exact hash). A raw turn among them makes mem0 drop a fact the model quoted word for word from
    that very turn — which consolidation then hides as consolidated: the memory would be lost.
    """
    token = _FACTS_ONLY.set(True)
    try:
        yield
    finally:
        _FACTS_ONLY.reset(token)


# mem0's ``expiration_date`` (an ISO date): a row past it is never returned (mem0's ``_payload_is_expired``).
UNEXPIRED = "coalesce(payload->>'expiration_date', '') = '' OR payload->>'expiration_date' >= %s"


def _newest_first(
    table: sql.Composable,
    filters: dict[str, Any] | None,
    top_k: int | None,
    *,
    unexpired: bool = False,
    retention: Retention = KEEP_FOREVER,
    current: bool = False,
) -> tuple[sql.Composed, list[Any]]:
    """``SELECT id, payload`` of the filtered, visible rows (``_visible``), newest first, at most
    ``top_k``."""
    where, params = _visible(filters, retention, unexpired=unexpired, current=current)
    statement = sql.SQL(
        "SELECT id, payload FROM {} WHERE " + where + " ORDER BY payload->>'created_at' DESC, id LIMIT %s"
    ).format(table)
    return statement, [*params, top_k]


def _hybrid(
    table: sql.Composable,
    filters: dict[str, Any] | None,
    retention: Retention,
    vector: np.ndarray,
    lexical: str | None,
    top_k: int,
    threshold: float,
) -> tuple[sql.Composed, list[Any]]:
    """One statement: the scope's visible rows, one per distinct text (the newest), at least
    ``threshold`` similar to ``vector`` (as mem0 gates its hybrid scoring: on the semantic score,
    before combining), ranked by cosine distance and by ``ts_rank_cd`` against ``lexical`` (None: no
    lexical ranking), fused by reciprocal rank (``memory.retrieval``); at most ``top_k`` rows of
    ``(id, payload, fused score, similarity)``.

    ``scoped`` is MATERIALIZED so the planner takes the scope's rows through its indexes and ranks
    them exactly instead of walking the HNSW index (which would filter after a fixed candidate count).
    """
    where, params = _visible(filters, retention, unexpired=True, current=True)
    statement = sql.SQL(
        """
        WITH scoped AS MATERIALIZED (
            SELECT DISTINCT ON (payload->>'data') id, vector,
                   coalesce(fts, to_tsvector({config}, coalesce(payload->>'data', ''))) AS fts, payload
            FROM {table}
            WHERE """
        + where
        + """
            ORDER BY payload->>'data', payload->>'created_at' DESC, id
        ),
        candidates AS MATERIALIZED (
            SELECT id, fts, distance FROM (SELECT id, fts, vector <=> %s AS distance FROM scoped) d
            WHERE 1 - distance >= %s
        ),
        semantic AS (
            SELECT id, row_number() OVER (ORDER BY distance, id) AS rank
            FROM candidates ORDER BY distance, id LIMIT %s
        ),
        lexical AS (
            SELECT id, row_number() OVER (ORDER BY ts_rank_cd(fts, query) DESC, id) AS rank
            FROM candidates, websearch_to_tsquery({config}, %s) AS query
            WHERE fts @@ query ORDER BY rank LIMIT %s
        )
        SELECT c.id, s.payload,
               coalesce(1.0 / ({k} + sem.rank), 0) + coalesce(1.0 / ({k} + lex.rank), 0) AS fused,
               1 - c.distance AS similarity
        FROM candidates c JOIN scoped s USING (id)
        LEFT JOIN semantic sem USING (id) LEFT JOIN lexical lex USING (id)
        WHERE sem.rank IS NOT NULL OR lex.rank IS NOT NULL
        ORDER BY fused DESC, similarity DESC, c.id LIMIT %s
        """
    ).format(
        table=table,
        config=sql.Literal(retrieval.TEXT_SEARCH_CONFIG),
        k=sql.Literal(retrieval.RRF_K),
    )
    depth = retrieval.DEPTH
    return statement, [*params, vector, threshold, depth, lexical, depth, top_k]


# The best fused score: first in both rankings. Scores are reported as a share of it, in (0, 1].
_BEST_FUSED = 2.0 / (retrieval.RRF_K + 1)


def _hybrid_rows(rows: list[Any], lexical: str | None) -> list[OutputData]:
    """``OutputData`` with ``score``: the fused score as a share of the best possible, or, without a
    lexical ranking, the cosine similarity (what a vector search reports)."""
    if lexical is None:
        return [OutputData(id=str(r[0]), score=max(0.0, float(r[3])), payload=r[1]) for r in rows]
    return [OutputData(id=str(r[0]), score=float(r[2]) / _BEST_FUSED, payload=r[1]) for r in rows]


class IndexedPGVector(mem0compat.PGVectorBase):
    """Drop-in replacement for mem0's ``PGVector``, registered under the same provider name."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._schema = threading.local()  # .cursor: the schema transaction running on this thread
        # What every read leaves out; set by the tenant's backend (``memory.local``).
        self.retention: Retention = KEEP_FOREVER
        # True while an upgraded table may hold rows without ``fts`` (``_add_text_search``).
        self.fts_backfill = False

    @contextmanager
    def cursor(self, commit: bool = False) -> Iterator[Any]:
        """mem0's cursor — except inside ``_schema_transaction`` on this thread, where mem0's own
        ``list_cols`` / ``create_col`` statements join that transaction (which commits at its end)."""
        held = getattr(self._schema, "cursor", None)
        if held is not None:
            yield held
            return
        with self.mem0_cursor(commit) as cur:
            yield cur

    @contextmanager
    def _schema_transaction(self) -> Iterator[Any]:
        """One transaction holding this table's advisory lock (re-entrant on one thread).

        ``CREATE … IF NOT EXISTS`` run by two sessions at once fails in one of them (both insert the
        catalog row); under the lock, whoever waits sees the committed table and indexes instead.
        """
        if getattr(self._schema, "cursor", None) is not None:
            yield self._schema.cursor
            return
        with self.mem0_cursor(commit=True) as cur:
            locks.lock_table(cur, self.collection_name)
            self._schema.cursor = cur
            try:
                yield cur
            finally:
                self._schema.cursor = None

    def create_col(self) -> None:
        with self._schema_transaction() as cur:
            # mem0 also runs CREATE EXTENSION here; serialise it too where nothing created it yet (a
            # tenant's own database, which prepare_database never saw).
            cur.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'")
            if cur.fetchone() is None:
                locks.lock_extension(cur)
            super().create_col()
            self._create_indexes(new=True)

    def ensure_collection(self) -> None:
        """Also give a table made by an earlier version the indexes it lacks (once per instance).

        A missing index is built on first use after an upgrade, without ``CONCURRENTLY`` (mem0's
        cursor runs in a transaction): writes to that tenant's table wait for the build, once —
        0.24 s for 100k rows here.
        """
        if self.collection_ensured:
            return
        # mem0's check-then-create, but in the schema transaction, and marked done only once
        # committed: another thread must not use a table it cannot see yet.
        with self._schema_transaction():
            if self.collection_name in self.list_cols():
                self._create_indexes(new=False)
            else:
                self.create_col()
        self.collection_ensured = True

    def _create_indexes(self, *, new: bool) -> None:
        recency = {
            "user_recent": "(payload->>'user_id'), (payload->>'created_at') DESC",
            "user_role_recent": "(payload->>'user_id'), (payload->>'role'), (payload->>'created_at') DESC",
        }
        with self.cursor(commit=True) as cur:
            for key in SCOPE_KEYS:
                cur.execute(
                    sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} ((payload->>{}))").format(
                        sql.Identifier(f"{self.collection_name}_{key}_idx"),
                        self.table(),
                        sql.Literal(key),
                    )
                )
            for name, columns in recency.items():
                cur.execute(
                    sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (" + columns + ")").format(
                        sql.Identifier(f"{self.collection_name}_{name}_idx"), self.table()
                    )
                )
            # Exactly-once writes: a replayed outbox row whose memory already landed inserts nothing.
            cur.execute(
                sql.SQL(
                    "CREATE UNIQUE INDEX IF NOT EXISTS {} ON {} ((payload->>'idempotency_key'))"
                    " WHERE payload ? 'idempotency_key'"
                ).format(sql.Identifier(f"{self.collection_name}_idempotency_idx"), self.table())
            )
            self._add_text_search(cur, new=new)
            # Erasure tombstones, checked by every insert (this table may live in a tenant's own DB).
            for statement in ERASURES_DDL:
                cur.execute(statement)

    def _add_text_search(self, cur: Any, *, new: bool) -> None:
        """The ``fts`` column (the row's text as an English ``tsvector``, ``memory.retrieval``) and its
        GIN index. mem0 names its columns in every statement, so it never sees the column.

        A new table gets a generated column (``GENERATED ALWAYS … STORED``: PostgreSQL 18's default,
        VIRTUAL, cannot be indexed). Adding one to an existing table rewrites it and every index under
        ACCESS EXCLUSIVE — measured 149 s for 100k rows with mem0's HNSW index, reads and writes
        waiting — so a table made by an earlier version gets a plain column kept by a trigger instead
        (added in milliseconds), its existing rows are filled in the background
        (``backfill_text_search``), and until then the search computes a missing value on the fly.
        """
        cur.execute(
            "SELECT a.attgenerated FROM pg_attribute a WHERE a.attrelid = to_regclass(quote_ident(%s))"
            " AND a.attname = 'fts' AND NOT a.attisdropped",
            (self.collection_name,),
        )
        row = cur.fetchone()
        config = sql.Literal(retrieval.TEXT_SEARCH_CONFIG)
        if row is None and new:
            cur.execute(
                sql.SQL(
                    "ALTER TABLE {} ADD COLUMN fts tsvector GENERATED ALWAYS AS"
                    " (to_tsvector({}, coalesce(payload->>'data', ''))) STORED"
                ).format(self.table(), config)
            )
        elif row is None:
            function = sql.Identifier(f"{self.collection_name}_fts")
            cur.execute(sql.SQL("ALTER TABLE {} ADD COLUMN fts tsvector").format(self.table()))
            cur.execute(
                sql.SQL(
                    "CREATE OR REPLACE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
                    " NEW.fts := to_tsvector({}, coalesce(NEW.payload->>'data', '')); RETURN NEW; END $$"
                ).format(function, config)
            )
            cur.execute(
                sql.SQL(
                    "CREATE TRIGGER {} BEFORE INSERT OR UPDATE OF payload ON {}"
                    " FOR EACH ROW EXECUTE FUNCTION {}()"
                ).format(function, self.table(), function)
            )
        # A plain column (this upgrade's, or an earlier process's) may still have rows to fill.
        self.fts_backfill = not new and (row is None or row[0] == "")
        cur.execute(
            sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} USING gin (fts)").format(
                sql.Identifier(f"{self.collection_name}_fts_idx"), self.table()
            )
        )

    def backfill_text_search(self, batch: int) -> int:
        """Fill ``fts`` for at most ``batch`` rows of an upgraded table that lack it; how many (0: done).

        One short transaction; rows another process is filling are skipped (``SKIP LOCKED``), so
        replicas share the work. Each update writes the row anew (and its index entries, mem0's HNSW's
        included: ≈1.4 ms a row), so this runs in the background, batch by batch.
        """
        if not self.fts_backfill:
            return 0
        statement = sql.SQL(
            "UPDATE {table} SET fts = to_tsvector({config}, coalesce(payload->>'data', ''))"
            " WHERE id IN (SELECT id FROM {table} WHERE fts IS NULL LIMIT %s FOR UPDATE SKIP LOCKED)"
        ).format(table=self.table(), config=sql.Literal(retrieval.TEXT_SEARCH_CONFIG))
        with self.cursor(commit=True) as cur:
            cur.execute(statement, (batch,))
            filled = int(cur.rowcount)
        if filled == 0:
            self.fts_backfill = False
        return filled

    def insert(self, vectors: list[list[float]], payloads: Any = None, ids: Any = None) -> None:
        """Insert rows — at most once per idempotency key, and never over a later erasure.

        One statement for the batch: a row whose ``idempotency_key`` is already stored is skipped
        (``ON CONFLICT … DO NOTHING`` on the unique partial index), and a row whose
        ``session_started_at`` predates a tombstone in ``gateway_erasures`` covering its IDs is not
        inserted at all — on every replica, whether or not it heard the erasure's NOTIFY. Rows without
        those payload keys (mem0 used directly) insert as before.
        """
        self.ensure_collection()
        keyed = _fan_out_keys([dict(p or {}) for p in payloads])
        rows = [
            (id_, _as_vector(vector), json.dumps(payload))
            for id_, vector, payload in zip(ids, vectors, keyed, strict=True)
        ]
        if not rows:
            return
        values = sql.SQL(", ").join([sql.SQL("(%s::uuid, %s::vector, %s::jsonb)")] * len(rows))
        statement = sql.SQL(
            """
            INSERT INTO {table} (id, vector, payload)
            SELECT v.id, v.vector, v.payload FROM (VALUES {values}) AS v(id, vector, payload)
            WHERE NOT EXISTS (
                SELECT 1 FROM gateway_erasures e
                WHERE e.collection = %s AND v.payload ? 'session_started_at'
                  AND e.erased_at > (v.payload->>'session_started_at')::timestamptz
                  AND v.payload @> e.scope
            )
            ON CONFLICT ((payload->>'idempotency_key')) WHERE payload ? 'idempotency_key' DO NOTHING
            """
        ).format(table=self.table(), values=values)
        params = [value for row in rows for value in row]
        with self.cursor(commit=True) as cur:
            cur.execute(statement, [*params, self.collection_name])

    def update(self, vector_id: str, vector: list[float] | None = None, payload: Any = None) -> None:
        super().update(vector_id, _as_vector(vector) if vector is not None else None, payload)

    def search(
        self,
        query: str,
        vectors: list[float],
        top_k: int | None = 5,
        filters: dict[str, Any] | None = None,
    ) -> list[OutputData]:
        """mem0's vector search (mem0's ``Memory.search`` and ``add(infer=True)`` call it): exact within
        the filters, leaving out what retention expired and what was superseded (and raw turns inside
        ``facts_only()``)."""
        self.ensure_collection()
        scoped = bool(mem0compat.build_filter_conditions(filters)[0])
        where, params = _visible(filters, self.retention, current=True)
        if _FACTS_ONLY.get():
            where = f"{where} AND ({FACT})"
        query_vector = _as_vector(vectors)
        with self.cursor() as cur:
            if scoped:
                # MATERIALIZED keeps the planner from pushing ORDER BY/LIMIT into the HNSW scan.
                statement = sql.SQL(
                    """
                    WITH scoped AS MATERIALIZED (
                        SELECT id, vector, payload FROM {} WHERE """
                    + where
                    + """
                    )
                    SELECT id, vector <=> %s AS distance, payload
                    FROM scoped ORDER BY distance LIMIT %s
                    """
                ).format(self.table())
            else:
                statement = sql.SQL(
                    "SELECT id, vector <=> %s AS distance, payload FROM {} WHERE "
                    + where
                    + " ORDER BY distance LIMIT %s"
                ).format(self.table())
            cur.execute(
                statement, (*params, query_vector, top_k) if scoped else (query_vector, *params, top_k)
            )
            rows = cur.fetchall()
        return [OutputData(id=str(r[0]), score=max(0.0, 1.0 - float(r[1])), payload=r[2]) for r in rows]

    def hybrid_search(
        self,
        query: str,
        vector: Sequence[float],
        top_k: int,
        filters: dict[str, Any] | None,
        *,
        threshold: float,
        lexical: bool = True,
    ) -> list[OutputData]:
        """The per-turn search (``memory.retrieval``): one statement on this thread's connection."""
        self.ensure_collection()
        text = retrieval.lexical_query(query) if lexical else None
        statement, params = _hybrid(
            self.table(), filters, self.retention, _as_vector(vector), text, top_k, threshold
        )
        with self.cursor() as cur:
            cur.execute(statement, params)
            rows = cur.fetchall()
        return _hybrid_rows(rows, text)

    def list(self, filters: dict[str, Any] | None = None, top_k: int | None = 100) -> list[list[OutputData]]:
        """Newest first, leaving out what retention expired (mem0's ``get_all`` drops expired rows)."""
        self.ensure_collection()
        statement, params = _newest_first(self.table(), filters, top_k, retention=self.retention)
        with self.cursor() as cur:
            cur.execute(statement, params)
            rows = cur.fetchall()
        return [[OutputData(id=str(r[0]), score=None, payload=r[1]) for r in rows]]

    def export_page(self, filters: dict[str, Any] | None, after: tuple[str, str] | None, limit: int) -> Rows:
        """Visible rows, oldest first, after the ``(created_at, id)`` of the last row of the previous
        page (keyset pagination: each page is one indexed, bounded query, however large the table)."""
        self.ensure_collection()
        where, params = _visible(filters, self.retention, unexpired=True)
        written = "coalesce(payload->>'created_at', '') COLLATE \"C\""  # byte order, as retention's
        if after is not None:
            where += f" AND ({written}, id) > (%s, %s::uuid)"
            params += list(after)
        statement = sql.SQL(
            "SELECT id, payload FROM {} WHERE " + where + f" ORDER BY {written}, id LIMIT %s"
        ).format(self.table())
        with self.cursor() as cur:
            cur.execute(statement, [*params, limit])
            rows = cur.fetchall()
        return [OutputData(id=str(r[0]), score=None, payload=r[1]) for r in rows]

    def purge_expired(
        self, *, batch: int, max_batches: int, history: mem0compat.PgHistory | None = None
    ) -> Purged | None:
        """Delete what retention has expired, ``batch`` rows per transaction, at most ``max_batches``
        (``Purged.more``: there is more for the next round), with each row's history; then the message
        log's turns past their time. None when another process is purging this table.

        One process purges a table at a time: the round holds a session-level advisory lock
        (``memory.locks.PURGE``) on its own connection — released when the round ends, or by the
        server if the process dies. Each batch is its own short transaction, and skips rows another
        transaction holds (``SKIP LOCKED``), so sessions writing meanwhile never wait for a round.
        """
        purged = Purged()
        if self.retention.forever:
            return purged
        self.ensure_collection()
        now = datetime.now(UTC)
        expired, params = self.retention.expired(now)
        statement = sql.SQL(
            """
            WITH doomed AS (SELECT id FROM {table} WHERE """
            + expired
            + """ LIMIT %s FOR UPDATE SKIP LOCKED)
            DELETE FROM {table} t USING doomed WHERE t.id = doomed.id RETURNING t.id::text, t.payload ? 'role'
            """
        ).format(table=self.table())
        with self.connection_pool.connection() as conn:
            conn.autocommit = True
            try:
                if not locks.try_lock_purge(conn, self.collection_name):
                    return None
                try:
                    for _ in range(max_batches):
                        with conn.transaction():
                            rows = conn.execute(statement, [*params, batch]).fetchall()
                            if history is not None and rows:
                                conn.execute(*history.purge_history([r[0] for r in rows]))
                        purged.count(
                            turns=sum(1 for r in rows if r[1]), facts=sum(1 for r in rows if not r[1])
                        )
                        if len(rows) < batch:
                            break
                    else:
                        purged.more = True
                    cutoff = self.retention.turn_cutoff(now)
                    if history is not None and cutoff is not None:
                        conn.execute(*history.purge_messages(cutoff))
                finally:
                    locks.unlock_purge(conn, self.collection_name)
            finally:
                conn.autocommit = False
        return purged

    def count(self, filters: dict[str, Any] | None = None) -> int:
        """Rows in scope; used by the CLI, tests and benchmarks, not by mem0."""
        self.ensure_collection()
        conditions, params = mem0compat.build_filter_conditions(filters)
        where = sql.SQL("WHERE " + " AND ".join(conditions)) if conditions else sql.SQL("")
        with self.cursor() as cur:
            cur.execute(sql.SQL("SELECT count(*) FROM {} {}").format(self.table(), where), params)
            row = cur.fetchone()
        return int(row[0]) if row else 0

    def delete_col(self) -> None:
        """mem0's ``DROP TABLE``, and the trigger function an upgraded table had (``_add_text_search``)."""
        super().delete_col()
        with self.cursor(commit=True) as cur:
            cur.execute(
                sql.SQL("DROP FUNCTION IF EXISTS {}()").format(sql.Identifier(f"{self.collection_name}_fts"))
            )

    def __del__(self) -> None:
        # The pool is owned by the backend registry and shared with the entity store; mem0's
        # ``__del__`` would close it under everyone's feet when any copy is collected.
        pass


async def _configure_async(conn: AsyncConnection[Any]) -> None:
    await conn.set_autocommit(True)
    await register_vector_async(conn)  # the per-turn search sends its query vector


async def create_async_pool(
    conninfo: str, *, max_size: int = 4, name: str = "mem0-async"
) -> AsyncConnectionPool:
    """The event loop's own small pool (no prepared statements either, for the same reason)."""
    pool = AsyncConnectionPool(
        conninfo=conninfo,
        min_size=1,
        max_size=max_size,
        configure=_configure_async,
        name=name,
        **_POOL_OPTIONS,
    )
    await pool.open(wait=True, timeout=30.0)
    return pool


class AsyncLister:
    """One table's reads on the event loop: ``IndexedPGVector.list`` and ``hybrid_search``, each a
    single indexed, bounded query through the process's async pool.

    A worker thread doing the same competes for the GIL with the loop setting sessions up (module
    docstring); on the loop the query is one await, and its CPU (decoding at most ``top_k`` payloads)
    is small.
    """

    def __init__(
        self, pool: AsyncConnectionPool, collection_name: str, retention: Retention = KEEP_FOREVER
    ) -> None:
        self._pool = pool
        self._table = sql.Identifier(collection_name)
        self.retention = retention

    async def list(self, filters: dict[str, Any], top_k: int) -> list[OutputData]:
        """The newest ``top_k`` unexpired rows within retention matching ``filters``."""
        statement, params = _newest_first(
            self._table, filters, top_k, unexpired=True, retention=self.retention, current=True
        )
        async with self._pool.connection() as conn:
            cursor = await conn.execute(statement, params)
            rows = await cursor.fetchall()
        return [OutputData(id=str(r[0]), score=None, payload=r[1]) for r in rows]

    async def search(
        self,
        query: str,
        vector: Sequence[float],
        top_k: int,
        filters: dict[str, Any],
        *,
        threshold: float,
        lexical: bool = True,
    ) -> Rows:
        """``IndexedPGVector.hybrid_search`` on the loop."""
        text = retrieval.lexical_query(query) if lexical else None
        statement, params = _hybrid(
            self._table, filters, self.retention, _as_vector(vector), text, top_k, threshold
        )
        async with self._pool.connection() as conn:
            cursor = await conn.execute(statement, params)
            rows = await cursor.fetchall()
        return _hybrid_rows(rows, text)


IDEMPOTENCY_KEY = "idempotency_key"
# Set (True) by the writer when one message may become several rows (``infer=True`` extraction):
# each row of the batch then gets the key ``<key>:<n>``.
FAN_OUT = "idempotency_fan_out"

# Erasure tombstones: every insert checks them (``IndexedPGVector.insert``); ``memory.local`` writes one
# and notifies this channel, every process listens (``memory.backends``).
ERASURE_CHANNEL = "gateway_erasure"
ERASURES_DDL = (
    "CREATE TABLE IF NOT EXISTS gateway_erasures (id BIGSERIAL PRIMARY KEY, tenant TEXT NOT NULL,"
    " collection TEXT NOT NULL, scope JSONB NOT NULL, erased_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    "CREATE INDEX IF NOT EXISTS gateway_erasures_collection_idx ON gateway_erasures (collection, erased_at)",
)


def _fan_out_keys(payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for n, payload in enumerate(payloads):
        if payload.pop(FAN_OUT, False) and IDEMPOTENCY_KEY in payload:
            payload[IDEMPOTENCY_KEY] = f"{payload[IDEMPOTENCY_KEY]}:{n}"
    return payloads


def register() -> None:
    """Point mem0's ``pgvector`` provider at the fixed store (idempotent, process-wide)."""
    mem0compat.register_vector_store(PROVIDER, IndexedPGVector)
