"""Scenario 1: connect → greeting latency for users holding 0, 100, 1,000 and 10,000 memories, gateway vs
the recipe in Pipecat's docs.

* **gateway** — the real gateway; span = ``POST /start`` → WebSocket connect → the greeting's
  ``bot-llm-stopped`` (``greet_timed().total``). The gateway starts fetching memories at ``/start``, so
  that request is inside its span; the naive endpoints have no such request. The WebSocket-only span
  (connect → ``bot-llm-stopped``) is reported beside it.
* **naive** — ``bench/naive.py``: per connection ``Mem0MemoryService(user_id=…, local_config=…)`` +
  ``await get_memories()`` + the docs' greeting, behind a minimal aiohttp WebSocket endpoint; span =
  WebSocket connect → ``bot-llm-stopped``. Two stores: mem0's default local Qdrant (one on-disk store
  per memory level, holding only that user's memories — the smallest store the user can be in) and the
  gateway's pgvector store type in the same PostgreSQL. Same WordLlama embedder, extraction LLM off.
  Each connection closes its mem0 client afterwards (the docs don't; see the lock probe rows).

At each level the three run in interleaved rounds (one gateway session, one connection to each naive
endpoint), so drift and cache warmth hit them alike. Every seeded store is read back through mem0
(``get_all`` count + ``search``) before timing, and the gateway's greeting is checked to name one
of the user's 24 newest memories (the pool it ranks).
"""

from __future__ import annotations

import asyncio
import gc
import math
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from bench import plots
from bench.harness import (
    BenchContext,
    ScenarioResult,
    Target,
    memory_texts,
    ratio,
    read_bot_turn,
    seed_memories,
    seed_store,
    start_gateway,
    summarize_ms,
    target_at_most,
    verify_seeded,
    ws_greeting_timed,
)
from bench.loadrun import TimingClient, timing_client
from bench.naive import (
    DOCS_KNOWN,
    NaiveServer,
    close_memory,
    pgvector_config,
    qdrant_config,
    start_naive_server,
)

NAME = "greeting"
TITLE = "1. Greeting latency vs the naive recipe"

GATEWAY = "gateway (/start → greeting)"
GATEWAY_WS = "gateway (WebSocket connect → greeting)"
NAIVE_QDRANT = "naive: Qdrant local (mem0 default)"
NAIVE_PG = "naive: pgvector (gateway's store type)"
TARGET_LEVEL = 1000
TARGET_RATIO = 0.1


def _sizes(smoke: bool) -> dict[str, Any]:
    """``rounds`` per memory level (``big`` at 10,000, where one naive Qdrant connection takes ~1 s)."""
    if smoke:
        return {"levels": [0, 30], "rounds": 3, "big": 2, "warmup": 1, "probe": 2}
    return {"levels": [0, 100, 1000, 10_000], "rounds": 80, "big": 16, "warmup": 5, "probe": 6}


def _user(level: int) -> str:
    return f"user{level}"


async def _naive_sample(
    client: TimingClient, server: NaiveServer, user: str, expect_memories: bool
) -> float | None:
    """One naive connection, once the previous one's teardown is done; seconds, or None if it failed."""
    await server.settle()  # the previous connection's teardown is not this one's cost
    elapsed, text = await client.ws_greeting(server.ws_url(user))
    if elapsed is not None and expect_memories and not text.startswith(DOCS_KNOWN):
        raise AssertionError(f"naive greeting did not recall memories: {text[:80]!r}")
    return elapsed


async def _lock_probe(
    config: Callable[[], dict[str, Any]], user: str, n: int
) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """mem0's default store as the docs leave it (no close): ``n`` sequential connections, then two
    overlapping ones. Returns a row for each and the distinct failure reasons."""
    reasons: list[str] = []
    async with start_naive_server(config, close=False) as server, aiohttp.ClientSession() as http:
        samples = []
        failed = 0
        for _ in range(n):
            elapsed, _text = await ws_greeting_timed(http, server.ws_url(user))
            if elapsed is None:
                failed += 1
            else:
                samples.append(elapsed)
        sequential = {"connections": n, "failed": failed, **summarize_ms(samples)}
        reasons += [f"{c}x {r}" for r, c in server.failures.items()]
    gc.collect()
    async with start_naive_server(config, close=False) as server, aiohttp.ClientSession() as http:
        # The first caller is still talking when the second arrives: both services exist at once.
        async with http.ws_connect(server.ws_url(user)) as first:
            await read_bot_turn(first)
            elapsed, _text = await ws_greeting_timed(http, server.ws_url(user))
        overlap = {
            "connections": 2,
            "failed": 1 if elapsed is None else 0,
            **summarize_ms([elapsed] if elapsed else []),
        }
        reasons += [f"{c}x {r}" for r, c in server.failures.items() if f"{c}x {r}" not in reasons]
    gc.collect()
    return sequential, overlap, reasons


async def run(ctx: BenchContext) -> ScenarioResult:
    from memory import pgvector
    from memory.embedder import load_wordllama

    sizes = _sizes(ctx.smoke)
    levels: list[int] = sizes["levels"]
    model = await asyncio.to_thread(load_wordllama)
    work = Path(tempfile.mkdtemp(prefix="mgw-greet-"))
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    p50: dict[str, dict[int, float]] = {GATEWAY: {}, GATEWAY_WS: {}, NAIVE_QDRANT: {}, NAIVE_PG: {}}
    try:
        async with start_gateway(
            tenants=("greeting",), database_url=ctx.database_url, embed_model=model
        ) as gw:
            # ---- seed: the same texts for the same user in all three stores, each read back through mem0
            seeded: dict[str, float] = {}
            texts = {level: memory_texts(level, prefix="Ada") for level in levels}
            for i, level in enumerate(levels):
                ctx.progress("seeding gateway", i, len(levels))
                if level:
                    seeded[f"gateway {level}"] = await seed_memories(
                        gw.app, gw.tenant, _user(level), level, texts=texts[level]
                    )
            pg_pool = await asyncio.to_thread(pgvector.create_pool, gw.database_url, max_size=2)

            def naive_pg() -> dict[str, Any]:
                return pgvector_config(gw.database_url, "naive_greeting", work / "naive-pg-history.db", model)

            def naive_qdrant(level: int) -> Callable[[], dict[str, Any]]:
                return lambda: qdrant_config(work / f"qdrant-{level}", work / f"qdrant-{level}.db", model)

            def seed_naive(config: dict[str, Any], level: int) -> float:
                from mem0 import Memory

                memory = Memory.from_config(config)
                try:
                    took = seed_store(memory, texts[level], user_id=_user(level))
                    verify_seeded(memory, {"user_id": _user(level)}, texts[level])
                    return took
                finally:
                    close_memory(memory, pool=False)  # the seeding pool is shared by the levels

            for i, level in enumerate(levels):
                ctx.progress("seeding naive stores", i, len(levels))
                seed_pg = pgvector_config(
                    gw.database_url, "naive_greeting", work / "seed.db", model, pool=pg_pool
                )
                if level:
                    seeded[f"naive pgvector {level}"] = await asyncio.to_thread(seed_naive, seed_pg, level)
                seeded[f"naive qdrant {level}"] = await asyncio.to_thread(
                    seed_naive, naive_qdrant(level)(), level
                )
            await asyncio.to_thread(pg_pool.close)

            # ---- measure, level by level
            async with timing_client() as client:
                for _ in range(sizes["warmup"] * 3):
                    await client.greet(gw.url, gw.key, "warmup")
                for level in levels:
                    label = f"{level} memories"
                    # Interleaved rounds, as in the floor scenario: one gateway session, then one
                    # connection to each naive endpoint, so drift (CPU frequency, the heap, background
                    # work) and cache warmth hit the gateway and its baselines alike.
                    rounds = sizes["big"] if level >= 10_000 else sizes["rounds"]
                    timings = []
                    naive: dict[str, list[float]] = {NAIVE_PG: [], NAIVE_QDRANT: []}
                    failed = {NAIVE_PG: 0, NAIVE_QDRANT: 0}
                    async with (
                        start_naive_server(naive_pg, close=True) as pg_server,
                        start_naive_server(naive_qdrant(level), close=True) as qdrant_server,
                    ):
                        servers = {NAIVE_PG: pg_server, NAIVE_QDRANT: qdrant_server}
                        warmup = sizes["warmup"]
                        for i in range(warmup + rounds):
                            await gw.settle()  # the previous session's teardown is not this one's cost
                            timing = await client.greet(gw.url, gw.key, _user(level))
                            if i >= warmup:
                                timings.append(timing)
                            for variant, server in servers.items():
                                elapsed = await _naive_sample(client, server, _user(level), level > 0)
                                if i < warmup:
                                    continue
                                if elapsed is None:
                                    failed[variant] += 1
                                else:
                                    naive[variant].append(elapsed)
                            ctx.progress(label, i + 1, warmup + rounds)
                        for variant, server in servers.items():
                            notes += [
                                f"{variant} at {level} memories failed: {count}x {reason}"
                                for reason, count in server.failures.items()
                            ]
                    # The greeting ranks the newest 24 (memory.ranking: recency and relevance to the
                    # agent), so it names one of them, not necessarily the very newest.
                    recent = [t.rstrip(" .") for t in texts[level][-24:]] if level else []
                    if recent and not any(t in timings[-1].text for t in recent):
                        raise AssertionError(
                            f"gateway greeting names none of the newest memories: {timings[-1].text!r}"
                        )
                    for variant, values in (
                        (GATEWAY, [t.total for t in timings]),
                        (GATEWAY_WS, [t.connect for t in timings]),
                    ):
                        stats = summarize_ms(values)
                        p50[variant][level] = stats["p50_ms"]
                        rows.append({"memories": level, "variant": variant, **stats, "failed": 0})
                    for variant, samples in naive.items():
                        stats = summarize_ms(samples)
                        p50[variant][level] = stats["p50_ms"]
                        rows.append(
                            {"memories": level, "variant": variant, **stats, "failed": failed[variant]}
                        )
                    gc.collect()

                # ---- mem0's local Qdrant as the docs leave it: nothing closes the client
                probe_level = levels[1]
                ctx.progress("Qdrant lock probe", 0, 1)
                sequential, overlap, reasons = await _lock_probe(
                    naive_qdrant(probe_level), _user(probe_level), sizes["probe"]
                )
                ctx.progress("Qdrant lock probe", 1, 1)
            metric_notes = _server_greeting_means(gw.metrics.registry, gw.tenant)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    for level in levels:
        gateway_p50 = p50[GATEWAY].get(level, math.nan)
        for row in rows:
            if row["memories"] == level:
                row["p50 vs gateway"] = ratio(row["p50_ms"], gateway_p50)
    rows.append(
        {
            "memories": levels[1],
            "variant": "naive Qdrant, docs as written (no close): sequential",
            **{k: v for k, v in sequential.items() if k != "connections"},
            "failed": sequential["failed"],
        }
    )
    rows.append(
        {
            "memories": levels[1],
            "variant": "naive Qdrant, docs as written: 2nd caller while 1st is live",
            **{k: v for k, v in overlap.items() if k != "connections"},
            "failed": overlap["failed"],
        }
    )
    notes += [f"Qdrant lock probe failures: {r}" for r in reasons]

    target_level = TARGET_LEVEL if TARGET_LEVEL in levels else levels[-1]
    targets: list[Target] = []
    for variant in (NAIVE_QDRANT, NAIVE_PG):
        targets.append(
            target_at_most(
                f"gateway p50 / {variant} p50 at {target_level:,} memories",
                ratio(p50[GATEWAY][target_level], p50[variant][target_level], 3),
                TARGET_RATIO,
                "x",
            )
        )
    notes += [
        "Spans: gateway = POST /start → bot-llm-stopped (memories are fetched and the pipeline "
        "started from /start on, so that "
        "request is inside the span); naive = WebSocket connect → bot-llm-stopped, and the naive "
        "endpoint builds only the memory service (no pipeline, LLM or transport): a lower bound for a "
        "naive bot. Sequential sessions timed by a client in a process of its own, each after the "
        "previous one fully ended (teardown outside every span), after warm-up; loopback. Rounds "
        "interleave the three: one gateway session, then one connection to each naive endpoint.",
        "Naive Qdrant: one on-disk local store per memory level holding only that user's memories "
        "(the smallest store the user can be in; local Qdrant loads and scans every point). "
        "Naive pgvector: mem0's `pgvector` provider from a connection string (a pool per instance), "
        "which in this process builds the gateway's IndexedPGVector, in the gateway's PostgreSQL. Both "
        "get the already-loaded WordLlama model and mem0's extraction LLM off; a docs user's config would "
        "also build mem0's default OpenAI LLM client per connection, so the naive figures are lower bounds.",
        "Seeding (s): " + ", ".join(f"{k} {v:.1f}" for k, v in seeded.items()),
        *metric_notes,
    ]
    plot = plots.line_plot(
        ctx.out_dir / "greeting-latency.png",
        title="Connect → greeting p50 by memories held",
        xlabel="memories held by the user",
        ylabel="p50 latency (ms, log)",
        series={variant: sorted(by_level.items()) for variant, by_level in p50.items()},
        logx=True,
        logy=True,
    )
    return ScenarioResult(
        name=NAME, title=TITLE, rows=rows, targets=targets, notes=notes, plots=[plot] if plot else []
    )


def _server_greeting_means(registry: Any, tenant: str) -> list[str]:
    """The gateway's own ``gateway_greeting_seconds`` (accept → greeting written), mean per outcome."""
    out = []
    for outcome in ("recalled", "none", "fallback"):
        labels = {"tenant": tenant, "memories": outcome, "source": "template"}
        count = registry.get_sample_value("gateway_greeting_seconds_count", labels)
        total = registry.get_sample_value("gateway_greeting_seconds_sum", labels)
        if count:
            out.append(
                f"Server-side gateway_greeting_seconds{{memories={outcome}}}: {int(count)} greetings, "
                f"mean {total / count * 1000:.1f} ms (WebSocket accept → greeting written)"
            )
    return out
