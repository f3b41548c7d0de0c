"""Scenario: 5,000 sequential whole sessions against one gateway process; does it return to baseline?

Each session is what a caller does: ``POST /start``, WebSocket, ``client-ready``, the greeting, one
``send-text`` user turn (zero-delay fake LLM; the turn's memories are written) and close — one after
another, from a client in a process of its own (``bench.loadgen``'s ``soak`` command), each user new.
The gateway runs in a process of its own (``bench.gatewayproc``, tuned as ``memory-gateway serve``
tunes it), so what it holds is nobody else's.

Sampled after a warm-up (``WARMUP`` sessions: pools, plans, lazy imports), at every checkpoint and at
the end, each time once no session is live and no memory write is queued, after ``gc.collect()`` and a
settle: the gateway's VmRSS, its open fds (``/proc/<pid>/fd``), ``len(asyncio.all_tasks())`` on its
loop, its threads and GC-tracked objects (inside the process), and PostgreSQL connections (from
``pg_stat_activity``: the database's total, which includes the sampler's own connection, and the
gateway's, by its ``application_name``).

"Back to baseline" (the targets): RSS at the end within 5 % of the baseline, and fds, tasks and the
gateway's PostgreSQL connections no more than at the baseline. Run with the in-process registry (the
default) and with the Redis registry (a ``redis-server`` of the scenario's own), as a cluster runs it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bench import plots
from bench.harness import (
    BenchContext,
    ScenarioResult,
    Target,
    percentile,
    redis_server_path,
    start_redis_server,
    target_at_most,
)
from bench.loadrun import GatewayProcess, fake_llm, ms, timing_client

NAME = "soak"
TITLE = "Soak: 5,000 sequential sessions, back to baseline"

SESSIONS = 5_000
CHECKPOINTS = 5  # samples between the baseline and the end (the last one is the end)
WARMUP = 50
SMOKE_SESSIONS = 30
SMOKE_WARMUP = 5
SETTLE_SECS = 3.0
RSS_TOLERANCE_PCT = 5.0
APPLICATION = "mgw-bench-soak"


def _with_application(url: str, name: str) -> str:
    """``url`` with ``application_name`` set, so pg_stat_activity tells the gateway's connections apart."""
    return f"{url}{'&' if '?' in url else '?'}application_name={name}"


async def _pg_connections(url: str) -> tuple[int, int]:
    """(connections to the database, the sampler's own included; the gateway's)."""
    import psycopg

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE application_name = %s) "
            "FROM pg_stat_activity WHERE datname = current_database()",
            (APPLICATION,),
        )
        row = await cur.fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


@contextlib.asynccontextmanager
async def _database(ctx: BenchContext) -> AsyncIterator[str]:
    """The run's shared PostgreSQL, or one of this scenario's own when the run has none."""
    if ctx.database_url is not None:
        yield ctx.database_url
        return
    import asyncio

    from memory.postgres import EmbeddedPostgres, prepare_database

    root = Path(tempfile.mkdtemp(prefix="mgw-bsoak-"))
    database = EmbeddedPostgres(root)
    try:
        url = await asyncio.to_thread(database.start)
        await asyncio.to_thread(prepare_database, url)
        yield url
    finally:
        await asyncio.to_thread(database.stop)
        shutil.rmtree(root, ignore_errors=True)


def _redis(enabled: bool) -> contextlib.AbstractAsyncContextManager[str | None]:
    if enabled:
        return start_redis_server()
    return contextlib.nullcontext(None)


def _progress(ctx: BenchContext, label: str, offset: int, total: int, done: int, _: int) -> None:
    ctx.progress(label, offset + done, total)


async def _soak_one(
    ctx: BenchContext, database_url: str, llm_url: str, registry: str
) -> tuple[list[dict[str, Any]], list[Target], list[str], list[tuple[float, float]]]:
    total = SMOKE_SESSIONS if ctx.smoke else SESSIONS
    warmup = SMOKE_WARMUP if ctx.smoke else WARMUP
    checkpoints = 1 if ctx.smoke else CHECKPOINTS
    chunk = math.ceil(total / checkpoints)
    tenant = f"bench_soak_{registry.replace('-', '_')}"
    gw_ctx = dataclasses.replace(ctx, database_url=_with_application(database_url, APPLICATION))
    rows: list[dict[str, Any]] = []
    errors: dict[str, int] = {}
    latencies: list[float] = []
    rss_points: list[tuple[float, float]] = []
    wall = 0.0
    async with _redis(registry == "redis") as redis_url:
        settings: dict[str, Any] = {"redis_url": redis_url} if redis_url else {}
        async with (
            GatewayProcess.running(gw_ctx, tenant, llm_url, **settings) as gw,
            timing_client() as client,
        ):
            warm = await client.soak(
                gw.base_url, gw.api_key, user_prefix="soak-w-", first=0, count=warmup, timeout=600
            )
            for kind, count in warm["errors"].items():
                errors[f"warmup_{kind}"] = errors.get(f"warmup_{kind}", 0) + count

            async def sample(done: int, chunk_result: dict[str, Any] | None) -> dict[str, Any]:
                probe = await gw.sample(SETTLE_SECS, timeout=30 if ctx.smoke else 120)
                pg_total, pg_gateway = await _pg_connections(database_url)
                seconds = chunk_result["seconds"] if chunk_result else []
                row = {
                    "registry": registry,
                    "sessions": done,
                    "settled": probe["settled"],
                    "rss_mib": round(probe["rss_mib"], 1),
                    "fds": probe["fds"],
                    "tasks": probe["tasks"],
                    "threads": probe["threads"],
                    "gc_objects": probe["gc_objects"],
                    "pg_connections": pg_total,
                    "pg_gateway": pg_gateway,
                    "sessions_per_s": round(len(seconds) / chunk_result["wall_secs"], 1)
                    if chunk_result
                    else None,
                    "session_p50_ms": ms(percentile(seconds, 50)) if seconds else None,
                    "session_p99_ms": ms(percentile(seconds, 99)) if seconds else None,
                }
                row["_task_names"] = probe["task_names"]
                rss_points.append((float(done), row["rss_mib"]))
                return row

            rows.append(await sample(0, None))
            done = 0
            while done < total:
                count = min(chunk, total - done)
                result = await client.soak(
                    gw.base_url,
                    gw.api_key,
                    user_prefix="soak-",
                    first=done,
                    count=count,
                    timeout=60 + count * 2.0,
                    progress=functools.partial(_progress, ctx, f"{registry} sessions", done, total),
                )
                done += count
                wall += float(result["wall_secs"])
                latencies += result["seconds"]
                for kind, n in result["errors"].items():
                    errors[kind] = errors.get(kind, 0) + n
                rows.append(await sample(done, result))
    base, end = rows[0], rows[-1]
    base_names, end_names = base.pop("_task_names"), end.pop("_task_names")
    for row in rows:
        row.pop("_task_names", None)
    rss_growth = round((end["rss_mib"] - base["rss_mib"]) / base["rss_mib"] * 100, 2)
    deltas = {
        "registry": registry,
        "sessions": "end - baseline",
        "settled": end["settled"],
        "rss_mib": round(end["rss_mib"] - base["rss_mib"], 1),
        "fds": end["fds"] - base["fds"],
        "tasks": end["tasks"] - base["tasks"],
        "threads": end["threads"] - base["threads"],
        "gc_objects": end["gc_objects"] - base["gc_objects"],
        "pg_connections": end["pg_connections"] - base["pg_connections"],
        "pg_gateway": end["pg_gateway"] - base["pg_gateway"],
        "sessions_per_s": round(len(latencies) / wall, 1) if wall else None,
        "session_p50_ms": ms(percentile(latencies, 50)),
        "session_p99_ms": ms(percentile(latencies, 99)),
    }
    rows.append(deltas)
    complete = not errors and end["settled"] and len(latencies) == total
    label = f"{registry} registry"

    def measured(value: float) -> float:
        return float(value) if complete else math.nan

    targets = [
        target_at_most(f"{label}: RSS growth, end vs baseline", measured(rss_growth), RSS_TOLERANCE_PCT, "%"),
        target_at_most(f"{label}: open fds added", measured(deltas["fds"]), 0, "fds"),
        target_at_most(f"{label}: asyncio tasks added", measured(deltas["tasks"]), 0, "tasks"),
        target_at_most(
            f"{label}: gateway PostgreSQL connections added", measured(deltas["pg_gateway"]), 0, "connections"
        ),
    ]
    notes = [
        f"{label}: {len(latencies)} of {total} sessions completed in {wall:.1f} s of session time "
        f"({deltas['sessions_per_s']} sessions/s, one at a time); RSS {base['rss_mib']} → {end['rss_mib']} "
        f"MiB ({rss_growth:+.2f} %), fds {base['fds']} → {end['fds']}, tasks {base['tasks']} → "
        f"{end['tasks']}, gateway PostgreSQL connections {base['pg_gateway']} → {end['pg_gateway']} "
        f"(database total {base['pg_connections']} → {end['pg_connections']}, sampler included)."
    ]
    if errors:
        notes.append(f"{label}: errors {errors}")
    if base_names != end_names:
        changed = {
            name: (base_names.get(name, 0), end_names.get(name, 0))
            for name in sorted(set(base_names) | set(end_names))
            if base_names.get(name, 0) != end_names.get(name, 0)
        }
        notes.append(f"{label}: tasks by name that changed (baseline, end): {changed}")
    else:
        notes.append(f"{label}: the gateway's tasks at the end, by name, are the baseline's: {end_names}")
    return rows, targets, notes, rss_points


async def run(ctx: BenchContext) -> ScenarioResult:
    registries = ["in-process"]
    skipped = []
    if redis_server_path() is not None:
        registries.append("redis")
    else:
        skipped.append("The Redis registry run was skipped: redis-server is not installed.")
    rows: list[dict[str, Any]] = []
    targets: list[Target] = []
    notes: list[str] = []
    series: dict[str, list[tuple[float, float]]] = {}
    async with _database(ctx) as database_url, fake_llm() as llm_url:
        for registry in registries:
            r, t, n, points = await _soak_one(ctx, database_url, llm_url, registry)
            rows += r
            targets += t
            notes += n
            series[f"{registry} registry"] = points
    total = SMOKE_SESSIONS if ctx.smoke else SESSIONS
    warmup = SMOKE_WARMUP if ctx.smoke else WARMUP
    notes += skipped
    notes.append(
        f"Each run: a fresh gateway process; {warmup} warm-up sessions, then the baseline sample (row "
        f"'sessions' 0), {total} sessions in chunks with a sample after each; every sample once no "
        f"session was live and no memory write queued, after gc.collect() and a {SETTLE_SECS:g} s "
        "settle. Chunk rows: sessions/s and the per-session latency (POST /start → the turn's reply) "
        "of the chunk before the sample; the last row: end minus baseline, rates over the whole run."
    )
    notes.append(
        f"Tolerances ('back to baseline'): RSS growth ≤ {RSS_TOLERANCE_PCT:g} %, fds, asyncio tasks and "
        "the gateway's PostgreSQL connections (application_name) not above the baseline. "
        "pg_connections is the database's total as the sampler sees it (its own connection included, and "
        "the run's other users, if any)."
    )
    drawn = plots.line_plot(
        ctx.out_dir / "soak.png",
        title="Gateway RSS over sequential sessions",
        xlabel="sessions since the baseline",
        ylabel="RSS (MiB)",
        series=series,
    )
    return ScenarioResult(
        name=NAME, title=TITLE, rows=rows, targets=targets, notes=notes, plots=[drawn] if drawn else []
    )
