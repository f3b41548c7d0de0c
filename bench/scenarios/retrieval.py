"""Scenario: per-turn search recall@5 and latency — vector only vs hybrid, side by side, one run.

The question set (``bench/retrieval_set.py``): 60 synthetic users, each holding ≈150 memories as a
raw-storage tenant keeps them (8 facts said in passing, half of them inside longer spoken turns, the
bot's replies, small talk and hard negatives sharing the facts' words), and two questions per fact: a
paraphrase and one naming the fact's value. Seeded into one tenant's real store (rows as
``Memory.add(infer=False)`` writes them, real WordLlama embeddings), then every question is asked
through the tenant backend's ``search`` — the call ``GatewayMemoryService`` awaits before each LLM
call — in three modes of the same backend, in interleaved order:

* ``mem0``: mem0's own ``Memory.search`` over the fixed store — what the gateway ran before (vector
  search, plus mem0's keyword boost of vector candidates);
* ``vector``: the new single statement with the lexical ranking off (the vector ranking alone, on the
  query's content words);
* ``hybrid``: the same statement fusing the full-text ranking (``memory.retrieval``).

recall@5: the share of questions whose fact is among the first 5 results (search_limit 10, threshold
0.1: Pipecat's defaults). Reported overall and per kind: ``name`` questions, and paraphrases that do or
do not share a word stem with their fact (decided by PostgreSQL: the fact's ``fts`` matches the
question's text query) — full-text search can help only the former. Latency: the same calls' p50/p95,
and at 1,000 memories held by one user (scenario 5's size).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter, defaultdict
from typing import Any

from bench import plots
from bench.harness import (
    BenchContext,
    ScenarioResult,
    memory_texts,
    seed_store,
    start_gateway,
    summarize_ms,
    target_at_least,
)
from bench.retrieval_set import QuestionSet, build
from bench.scenarios.search import queries

NAME = "retrieval"
TITLE = "Per-turn search: recall@5 and latency, vector only vs hybrid (full-text + vector, one query)"
MODES = ("mem0", "vector", "hybrid")
LABELS = {
    "mem0": "before: mem0 Memory.search (vector + mem0's keyword boost)",
    "vector": "vector only (one query, lexical off)",
    "hybrid": "hybrid (full-text + vector, RRF, one query)",
}
K = 5
TARGET_RECALL = 0.9


async def _seed(backend: Any, qs: QuestionSet, ctx: BenchContext) -> None:
    from memory.scope import MemoryScope

    for i, user in enumerate(qs.users):
        ids = MemoryScope(backend.tenant, user_id=user.user).storage_ids()
        for role in ("user", "assistant"):
            texts = [text for r, text in user.memories if r == role]
            await asyncio.to_thread(
                seed_store,
                backend.client,
                texts,
                user_id=ids["user_id"],
                role=role,
                metadata={"platform": "pipecat", "source": "memory-gateway"},
            )
        ctx.progress("seeding the question set", i + 1, len(qs.users))


async def _kinds(backend: Any, qs: QuestionSet) -> list[str]:
    """Each question's kind; a paraphrase is split by whether its fact shares a word stem with it."""
    from memory import retrieval

    store = backend.client.vector_store
    kinds = []
    for q in qs.questions:
        if q.kind == "name":
            kinds.append("name")
            continue
        text = retrieval.lexical_query(q.text)

        def shares(answer: str = q.answer, user: str = q.user, text: str | None = text) -> bool:
            with store.cursor() as cur:
                cur.execute(
                    f'SELECT fts @@ websearch_to_tsquery(%s, %s) FROM "{store.collection_name}"'
                    " WHERE payload->>'user_id' = %s AND payload->>'data' = %s LIMIT 1",
                    (retrieval.TEXT_SEARCH_CONFIG, text, f"{backend.tenant}/{user}", answer),
                )
                row = cur.fetchone()
            return bool(row and row[0])

        kinds.append(
            "paraphrase, shares a word" if await asyncio.to_thread(shares) else "paraphrase, no shared word"
        )
    return kinds


async def run(ctx: BenchContext) -> ScenarioResult:
    from memory.embedder import load_wordllama
    from memory.scope import MemoryScope

    qs = build(n_users=4 if ctx.smoke else 60)
    big = 50 if ctx.smoke else 1000
    n_big = 5 if ctx.smoke else 200
    model = await asyncio.to_thread(load_wordllama)
    tenant = f"retrieval_{uuid.uuid4().hex[:6]}"  # a table of its own, also in a shared database
    async with start_gateway(tenants=(tenant,), database_url=ctx.database_url, embed_model=model) as gw:
        backend = await gw.backend()
        await _seed(backend, qs, ctx)
        kinds = await _kinds(backend, qs)
        params = {"limit": 10, "threshold": 0.1}
        settings = {mode: backend.settings.model_copy(update={"search_mode": mode}) for mode in MODES}

        async def ask(mode: str, scope: MemoryScope, text: str) -> tuple[float, list[str]]:
            backend.settings = settings[mode]
            started = time.perf_counter()
            found = await backend.search(scope, text, **params)
            return time.perf_counter() - started, [m["memory"] for m in found]

        hits: dict[str, Counter[str]] = defaultdict(Counter)
        seconds: dict[str, list[float]] = defaultdict(list)
        totals: Counter[str] = Counter(kinds)
        for i, (q, kind) in enumerate(zip(qs.questions, kinds, strict=True)):
            scope = MemoryScope(tenant, user_id=q.user)
            order = MODES[i % 3 :] + MODES[: i % 3]  # interleaved: no mode always runs first
            for mode in order:
                took, found = await ask(mode, scope, q.text)
                seconds[mode].append(took)
                if q.answer in found[:K]:
                    hits[mode][kind] += 1
            ctx.progress("questions", i + 1, len(qs.questions))

        # ---- latency at 1,000 memories held by one user (scenario 5's size and queries)
        big_user = "ada-1000"
        big_ids = MemoryScope(tenant, user_id=big_user).storage_ids()
        await asyncio.to_thread(
            seed_store, backend.client, memory_texts(big, prefix="Ada"), user_id=big_ids["user_id"]
        )
        big_scope = MemoryScope(tenant, user_id=big_user)
        big_seconds: dict[str, list[float]] = defaultdict(list)
        for i, text in enumerate(queries(n_big + 10, seed=23)):
            for mode in MODES[i % 3 :] + MODES[: i % 3]:
                took, _ = await ask(mode, big_scope, text)
                if i >= 10:
                    big_seconds[mode].append(took)
            ctx.progress("1,000 memories", i + 1, n_big + 10)
        backend.settings = settings["hybrid"]

    categories = ["name", "paraphrase, shares a word", "paraphrase, no shared word"]
    rows: list[dict[str, Any]] = []
    recall: dict[str, float] = {}
    for mode in MODES:
        recall[mode] = round(sum(hits[mode].values()) / len(qs.questions), 3)
        row: dict[str, Any] = {
            "what": LABELS[mode],
            "questions": len(qs.questions),
            f"recall@{K}": recall[mode],
        }
        for c in categories:
            row[c] = round(hits[mode][c] / totals[c], 3) if totals[c] else None
        stats = summarize_ms(seconds[mode], 3)
        row["p50_ms"], row["p95_ms"] = stats["p50_ms"], stats["p95_ms"]
        big_stats = summarize_ms(big_seconds[mode], 3)
        row["p50_ms_at_1000"], row["p95_ms_at_1000"] = big_stats["p50_ms"], big_stats["p95_ms"]
        rows.append(row)
    notes = [
        f"{len(qs.users)} users, {sum(len(u.memories) for u in qs.users):,} memories, {len(qs.questions)} "
        f"questions ({', '.join(f'{totals[c]} {c}' for c in categories)}); one tenant table; "
        "search_limit 10, threshold 0.1; the three modes of the same backend object, interleaved.",
        "recall@5: the fact among the first 5 results. Latency: TenantMemory.search as the memory service "
        "awaits it (≈150 memories per user; *_at_1000: one user holding 1,000, scenario 5's queries).",
        "A paraphrase that shares no word stem with its fact can only be found by the embedding: full-text "
        "search cannot help it, by construction.",
    ]
    plot = plots.bar_plot(
        ctx.out_dir / "retrieval.png",
        title=f"Per-turn search recall@{K} on the question set",
        ylabel=f"recall@{K}",
        bars={mode: recall[mode] for mode in MODES},
    )
    return ScenarioResult(
        name=NAME,
        title=TITLE,
        rows=rows,
        targets=[
            target_at_least(f"hybrid recall@{K} on the question set", recall["hybrid"], TARGET_RECALL, "")
        ],
        notes=notes,
        plots=[plot] if plot else [],
    )
