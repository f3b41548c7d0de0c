"""Scenario 5: memory search overhead per user turn at 1,000 memories, embedded backend.

What a turn waits for before its LLM call: ``GatewayMemoryService`` runs the tenant backend's
``search`` (WordLlama query embedding and one hybrid full-text + vector statement on the event loop,
``memory.retrieval``, metrics; ``bench/scenarios/retrieval.py`` compares it with mem0's
``Memory.search``, the path before, on recall and latency). Measured directly on the tenant's shared
backend — the object every session uses — with its parts (query embedding, the store's SQL alone)
beside it, and against the naive recipe's per-turn search: Pipecat's
``Mem0MemoryService._retrieve_memories`` on mem0's default local Qdrant and on the gateway's store
type, each service built once (so only the search is timed).

Then end to end: two live sessions with the fake zero-delay LLM, one for the user holding the
memories and one for a user holding none, alternate ``send-text`` turns; the difference of their p50
``send-text`` → ``bot-llm-stopped`` is the overhead a caller feels.
"""

from __future__ import annotations

import asyncio
import functools
import random
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from bench import plots
from bench.harness import (
    BenchContext,
    ScenarioResult,
    memory_texts,
    read_bot_turn,
    rtvi,
    say_timed,
    seed_memories,
    seed_store,
    start_gateway,
    start_session,
    summarize_ms,
    target_at_most,
    verify_seeded,
)
from bench.naive import close_memory, pgvector_config, qdrant_config

NAME = "search"
TITLE = "5. Memory search overhead per turn at 1,000 memories (embedded backend)"
LIMIT_MS = 10.0
MEMORIES = 1000

_TOPICS = "sailing chess jazz hiking coffee gardening stars pottery running bread photos kayaks poems".split()
_ASKS = ["What do you remember about my {}?", "Any tips on {} for me?", "I was thinking about {} again",
         "Remind me what I said about {}", "Should I try {} this weekend?"]  # fmt: skip


def queries(n: int, seed: int = 11) -> list[str]:
    rng = random.Random(seed)
    return [rng.choice(_ASKS).format(rng.choice(_TOPICS)) for _ in range(n)]


async def _timed(
    ctx: BenchContext, label: str, call: Callable[[str], Awaitable[Any]], qs: list[str], warmup: int
) -> list[float]:
    samples = []
    for i, q in enumerate(qs[:warmup] + qs):
        started = time.perf_counter()
        await call(q)
        if i >= warmup:
            samples.append(time.perf_counter() - started)
        ctx.progress(label, i + 1, warmup + len(qs))
    return samples


async def run(ctx: BenchContext) -> ScenarioResult:
    from pipecat.services.mem0.memory import Mem0MemoryService

    from memory import pgvector
    from memory.embedder import load_wordllama
    from memory.scope import MemoryScope

    n = 5 if ctx.smoke else 300
    n_naive = 3 if ctx.smoke else 150
    n_turns = 3 if ctx.smoke else 60
    memories = 20 if ctx.smoke else MEMORIES
    warmup = 2 if ctx.smoke else 20
    qs = queries(n)
    texts = memory_texts(memories, prefix="Ada")
    user = "ada"
    model = await asyncio.to_thread(load_wordllama)
    work = Path(tempfile.mkdtemp(prefix="mgw-search-"))
    results: dict[str, list[float]] = {}
    turn_rows: list[dict[str, Any]] = []
    try:
        async with start_gateway(
            tenants=("search",), database_url=ctx.database_url, embed_model=model, llm=True
        ) as gw:
            ctx.progress("seeding", 0, 1)
            await seed_memories(gw.app, gw.tenant, user, memories, texts=texts)
            backend = await gw.backend()
            scope = MemoryScope(gw.tenant, user_id=user)
            params = Mem0MemoryService.InputParams()
            found = await backend.search(
                scope, texts[0], limit=params.search_limit, threshold=params.search_threshold
            )
            if not found or found[0]["memory"] != texts[0]:
                raise AssertionError("the gateway's search does not find a seeded memory first")

            async def gateway_search(q: str) -> Any:
                return await backend.search(
                    scope, q, limit=params.search_limit, threshold=params.search_threshold
                )

            results["gateway: TenantMemory.search (per-turn call)"] = await _timed(
                ctx, "gateway search", gateway_search, qs, warmup
            )
            embedder = backend.client.embedding_model
            store = backend.client.vector_store
            filters = scope.retrieval_filters()

            async def embed_only(q: str) -> Any:
                return embedder.embed(q, "search")

            async def sql_only(q: str) -> Any:
                vector = embedder.embed(q, "search")
                return await asyncio.to_thread(store.search, q, vector, 60, filters)

            results["part: query embedding (WordLlama, on the loop)"] = await _timed(
                ctx, "embedding", embed_only, qs, warmup
            )
            results["part: embedding + IndexedPGVector.search (thread)"] = await _timed(
                ctx, "store search", sql_only, qs, warmup
            )

            # ---- the naive recipe's per-turn search, one service each, built once
            pool = await asyncio.to_thread(pgvector.create_pool, gw.database_url, max_size=2)
            naive_configs = {
                "naive: Pipecat _retrieve_memories, Qdrant local": qdrant_config(
                    work / "qdrant", work / "qdrant.db", model
                ),
                "naive: Pipecat _retrieve_memories, pgvector": pgvector_config(
                    gw.database_url, "naive_search", work / "pg.db", model, pool=pool
                ),
            }
            for label, config in naive_configs.items():
                ctx.progress(f"{label}: seeding", 0, 1)
                service = await asyncio.to_thread(
                    functools.partial(Mem0MemoryService, user_id=user, local_config=config)
                )
                try:
                    await asyncio.to_thread(seed_store, service.memory_client, texts, user_id=user)
                    await asyncio.to_thread(verify_seeded, service.memory_client, {"user_id": user}, texts)
                    results[label] = await _timed(
                        ctx, label, service._retrieve_memories, qs[:n_naive], warmup
                    )
                finally:
                    await asyncio.to_thread(close_memory, service.memory_client)
            await asyncio.to_thread(pool.close)

            # ---- end to end: a turn of a user with memories vs one without
            turn_rows = await _turns(ctx, gw, user, n_turns, warmup)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rows: list[dict[str, Any]] = [
        {"what": label, **summarize_ms(values, 3)} for label, values in results.items()
    ]
    rows += turn_rows
    gateway_p50 = rows[0]["p50_ms"]
    notes = [
        f"{memories:,} memories held by the searched user; search_limit 10, threshold 0.1 (Pipecat's "
        "InputParams defaults); varied natural queries; sequential calls after warm-up.",
        "The naive rows call Pipecat's own Mem0MemoryService._retrieve_memories (what its process_frame "
        "awaits before every LLM call) on a service built once; Qdrant is mem0's default local store "
        "holding only this user's memories.",
        "Turn rows: send-text → bot-llm-stopped with a zero-delay fake LLM, two live sessions, turns "
        "alternated. Both turns search (the user without memories searches an empty scope), so their "
        "difference is what holding the memories adds, not the whole search.",
    ]
    plot = plots.bar_plot(
        ctx.out_dir / "search.png",
        title=f"Per-turn memory search at {memories:,} memories (p50)",
        ylabel="p50 (ms, log)",
        bars={
            row["what"].split(" (")[0]: row["p50_ms"] for row in rows if not row["what"].startswith("turn")
        },
        logy=True,
    )
    return ScenarioResult(
        name=NAME,
        title=TITLE,
        rows=rows,
        targets=[target_at_most(f"gateway search p50 at {memories:,} memories", gateway_p50, LIMIT_MS, "ms")],
        notes=notes,
        plots=[plot] if plot else [],
    )


async def _turns(ctx: BenchContext, gw: Any, user: str, n: int, warmup: int) -> list[dict[str, Any]]:
    qs = queries(n + warmup, seed=5)
    samples: dict[str, list[float]] = {"with": [], "without": []}
    async with aiohttp.ClientSession() as http:
        with_url = await start_session(http, gw.url, gw.key, user)
        without_url = await start_session(http, gw.url, gw.key, "stranger")
        async with http.ws_connect(with_url) as with_ws, http.ws_connect(without_url) as without_ws:
            for ws in (with_ws, without_ws):  # as every RTVI client does on connect
                await ws.send_str(rtvi("client-ready", {"version": "2.0.0", "about": {"library": "bench"}}))
            await read_bot_turn(with_ws)  # greetings
            await read_bot_turn(without_ws)
            for i, q in enumerate(qs):
                for key, ws in (("with", with_ws), ("without", without_ws)):
                    seconds, _reply = await say_timed(ws, q)
                    if i >= warmup:
                        samples[key].append(seconds)
                ctx.progress("turns", i + 1, len(qs))
    with_stats = summarize_ms(samples["with"], 3)
    without_stats = summarize_ms(samples["without"], 3)
    return [
        {"what": "turn: user with memories (send-text → bot-llm-stopped)", **with_stats},
        {"what": "turn: user without memories", **without_stats},
        {
            "what": "turn: cost of holding the memories vs none (p50 difference)",
            "n": with_stats["n"],
            "p50_ms": round(with_stats["p50_ms"] - without_stats["p50_ms"], 3),
        },
    ]
