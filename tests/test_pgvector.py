"""The fixed pgvector store: a user's search equals brute force even when they are 1 % of the table."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from psycopg import sql

from memory import pgvector
from memory.pgvector import IndexedPGVector

USERS = 100
PER_USER = 100
DIMS = 256


def _open_store(collection: str, pool: Any, dims: int, *, hnsw: bool = False) -> IndexedPGVector:
    return IndexedPGVector(
        dbname="postgres",
        collection_name=collection,
        embedding_model_dims=dims,
        user=None,
        password=None,
        host=None,
        port=None,
        diskann=False,
        hnsw=hnsw,
        connection_pool=pool,
    )


@pytest.fixture(scope="module")
def seeded(database_url: str) -> Iterator[tuple[IndexedPGVector, dict[str, list[tuple[str, np.ndarray]]]]]:
    pool = pgvector.create_pool(database_url, max_size=2, name="recall-test")
    store = _open_store(f"recall_{uuid.uuid4().hex[:8]}", pool, DIMS, hnsw=True)
    rng = np.random.default_rng(7)
    base = datetime(2026, 1, 1, tzinfo=UTC)
    rows: dict[str, list[tuple[str, np.ndarray]]] = {}
    ids, vectors, payloads = [], [], []
    for u in range(USERS):
        user = f"t/user-{u}"
        for k in range(PER_USER):
            v = rng.standard_normal(DIMS).astype(np.float32)
            v /= np.linalg.norm(v)
            mid = str(uuid.uuid4())
            rows.setdefault(user, []).append((mid, v))
            ids.append(mid)
            vectors.append(v.tolist())
            payloads.append(
                {
                    "user_id": user,
                    "data": f"m{u}-{k}",
                    "created_at": (base + timedelta(minutes=k)).isoformat(),
                }
            )
    # Bulk-load, then build the HNSW index in one go (as a restored production table would have it);
    # building it row by row would make this fixture 5x slower without testing anything more.
    store.ensure_collection()
    hnsw = f'"{store.collection_name}_hnsw_idx"'
    with store.cursor(commit=True) as cur:
        cur.execute(f"DROP INDEX {hnsw}")
    for start in range(0, len(ids), 2000):
        store.insert(vectors[start : start + 2000], payloads[start : start + 2000], ids[start : start + 2000])
    with store.cursor(commit=True) as cur:
        cur.execute(f'CREATE INDEX {hnsw} ON "{store.collection_name}" USING hnsw (vector vector_cosine_ops)')
        cur.execute(f'ANALYZE "{store.collection_name}"')
    yield store, rows
    store.delete_col()
    pool.close()


def _brute_force(rows: list[tuple[str, np.ndarray]], query: np.ndarray, k: int) -> list[str]:
    scored = sorted(rows, key=lambda r: -float(np.dot(r[1], query)))
    return [mid for mid, _ in scored[:k]]


def test_table_holds_ten_thousand_rows_across_users(seeded: Any) -> None:
    store, _ = seeded
    assert store.count() == USERS * PER_USER


@pytest.mark.parametrize("user_index", [0, 37, 99])
def test_user_scoped_search_equals_brute_force(seeded: Any, user_index: int) -> None:
    store, rows = seeded
    user = f"t/user-{user_index}"
    rng = np.random.default_rng(user_index)
    for _ in range(5):
        q = rng.standard_normal(DIMS).astype(np.float32)
        q /= np.linalg.norm(q)
        found = store.search("q", q.tolist(), top_k=10, filters={"user_id": user})
        assert [r.id for r in found] == _brute_force(rows[user], q, 10)
        assert all(r.payload["user_id"] == user for r in found)


def test_list_returns_a_users_newest_rows_first(seeded: Any) -> None:
    store, _ = seeded
    (listed,) = store.list(filters={"user_id": "t/user-5"}, top_k=3)
    assert [r.payload["data"] for r in listed] == ["m5-99", "m5-98", "m5-97"]


async def test_loop_listing_matches_the_threaded_list(seeded: Any, database_url: str) -> None:
    store, _ = seeded
    pool = await pgvector.create_async_pool(database_url, max_size=1, name="loop-list-test")
    try:
        lister = pgvector.AsyncLister(pool, store.collection_name)
        for filters in ({"user_id": "t/user-5"}, {"user_id": "t/user-42", "data": "m42-7"}):
            on_loop = await lister.list(filters, 4)
            (threaded,) = store.list(filters=filters, top_k=4)
            assert [(r.id, r.payload) for r in on_loop] == [(r.id, r.payload) for r in threaded]
            assert on_loop
    finally:
        await pool.close()


async def test_loop_listing_leaves_out_expired_rows_before_its_limit(seeded: Any, database_url: str) -> None:
    store, _ = seeded
    user = f"t/expiring-{uuid.uuid4().hex[:6]}"
    today = datetime.now(UTC).date()
    rows = [
        ("kept-old", "2026-01-01T00:00:00+00:00", None),
        ("kept-future", "2026-01-02T00:00:00+00:00", (today + timedelta(days=1)).isoformat()),
        ("expired", "2026-01-03T00:00:00+00:00", (today - timedelta(days=1)).isoformat()),
    ]
    vector = np.ones(DIMS, dtype=np.float32) / np.sqrt(DIMS)
    store.insert(
        [vector.tolist()] * len(rows),
        [
            {"user_id": user, "data": data, "created_at": created} | ({"expiration_date": exp} if exp else {})
            for data, created, exp in rows
        ],
        [str(uuid.uuid4()) for _ in rows],
    )
    pool = await pgvector.create_async_pool(database_url, max_size=1, name="loop-expiry-test")
    try:
        listed = await pgvector.AsyncLister(pool, store.collection_name).list({"user_id": user}, 2)
    finally:
        await pool.close()
    # The newest row has expired: the two rows returned are the two that have not, not one of them.
    assert [r.payload["data"] for r in listed] == ["kept-future", "kept-old"]


def _plan_leaf(plan: dict[str, Any]) -> dict[str, Any]:
    while plan.get("Plans"):
        plan = plan["Plans"][0]
    return plan


@pytest.fixture
def chatty_user(database_url: str) -> Iterator[tuple[IndexedPGVector, str]]:
    """A table where one user has 1,000 raw memories, half said by the user, among 2,000 of others."""
    pool = pgvector.create_pool(database_url, max_size=1, name="role-index-test")
    store = _open_store(f"roles_{uuid.uuid4().hex[:8]}", pool, 8)
    base = datetime(2026, 1, 1, tzinfo=UTC)
    vector = [1.0] + [0.0] * 7
    payloads = [
        {
            "user_id": user,
            "role": "user" if k % 2 else "assistant",
            "data": f"{user}-{k}",
            "created_at": (base + timedelta(minutes=k)).isoformat(),
        }
        for user, n in (("t/chatty", 1000), ("t/other-1", 1000), ("t/other-2", 1000))
        for k in range(n)
    ]
    store.insert([vector] * len(payloads), payloads, [str(uuid.uuid4()) for _ in payloads])
    with store.cursor(commit=True) as cur:
        cur.execute(f'ANALYZE "{store.collection_name}"')
    yield store, "t/chatty"
    store.delete_col()
    pool.close()


def test_greeting_listing_walks_the_role_recency_index(chatty_user: Any) -> None:
    """'What did the user say last' reads a handful of index entries, not all of the user's rows and a
    sort (the plan PostgreSQL picks without an index covering ``role``)."""
    store, user = chatty_user
    filters = {"user_id": user, "role": "user"}
    statement, params = pgvector._newest_first(store.table(), filters, 3, unexpired=True)
    with store.cursor() as cur:
        cur.execute(sql.SQL("EXPLAIN (ANALYZE, FORMAT JSON) ") + statement, params)
        ((plan,),) = cur.fetchall()
    leaf = _plan_leaf(plan[0]["Plan"])
    assert leaf["Index Name"] == f"{store.collection_name}_user_role_recent_idx"
    assert leaf["Actual Rows"] <= 10
    (listed,) = store.list(filters=filters, top_k=3)
    assert [r.payload["data"] for r in listed] == ["t/chatty-999", "t/chatty-997", "t/chatty-995"]


def test_a_table_from_an_earlier_version_gets_the_missing_indexes(chatty_user: Any) -> None:
    store, _ = chatty_user
    index = f"{store.collection_name}_user_role_recent_idx"
    with store.cursor(commit=True) as cur:
        cur.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(index)))
    reopened = _open_store(store.collection_name, store.connection_pool, 8)
    reopened.ensure_collection()
    with store.cursor() as cur:
        cur.execute("SELECT indexname FROM pg_indexes WHERE tablename = %s", (store.collection_name,))
        assert index in {name for (name,) in cur.fetchall()}
