"""Scenario: event-loop CPU one session's set-up costs, and where it goes.

A session's set-up is ``POST /start`` → WebSocket connect → RTVI ``client-ready`` → greeting streamed
→ session live. All of it that is Python runs on the gateway's one event loop, so its CPU bounds how
many callers one process can greet per second: a 500-connect burst on 2 cores greeted with p99 ≤ 1 s
needs ≈5 ms of loop CPU per set-up or less. The gateway runs in this process (the harness's
``start_gateway``, tuned as ``memory-gateway serve`` tunes it), on this process's event loop — its
main thread; the fake LLM (each session builds its LLM service; the greeting calls no LLM) and the
clients (``bench.loadgen``) each in a child process of their own. Users have no memories yet.

* **sequential** — rounds of sessions opened one at a time, each after the previous one was greeted
  (one ``open`` command of one session to the client process); per session, the loop thread's CPU
  (``time.thread_time()``, read on the loop) and the process's (``getrusage``: loop + memory worker
  threads) across that command. The same command opening no session (the pipe round trip and its
  JSON, on this loop too) is timed the same way; its median is subtracted. Sessions stay live until
  the end of their round (their teardown is outside every sample), then the round's client process
  closes them all and the gateway settles.
* **sequential, INFO JSON logs** — the same, ``LOGGED_ROUNDS`` rounds, with the gateway logging as in
  production (JSON at INFO, written to /dev/null) instead of the bench's console at WARNING (not in
  smoke mode: it reconfigures the process's logging).
* **paced** — ``PACED_SESSIONS`` arriving at ``PACED_RATE``/s (the concurrency scenario's arrival,
  slower), all kept open: loop and process CPU over the whole arrival divided by the sessions, minus
  the idle loop's CPU over the same wall time (measured just before).
* **profile** — ``PROFILE_SESSIONS`` more, sequential, under ``cProfile`` (which profiles the thread
  that enables it: the loop). Top entries by cumulative and by own time go to
  ``setup_cpu_profile.txt`` beside the results and, shortened, into the notes. Profiling inflates
  every call; read it for proportions, not for milliseconds.

If ``bench/results/baseline/setup_cpu.json`` exists (this scenario's result on the code before the
set-up work was cut), its rows are shown beside this run's, labelled ``before``.
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import gc
import io
import json
import logging
import os
import pstats
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import plots
from bench.harness import BenchContext, ScenarioResult, percentile, target_at_most
from bench.loadrun import Clients, GcPauses, LoadGateway, cpu_seconds, fake_llm, load_gateway
from gateway.keys import deps_key

NAME = "setup_cpu"
TITLE = "Event-loop CPU per session set-up (/start → greeting → live)"
TENANT = "bench_setup_cpu"

ROUNDS, ROUND_SESSIONS = 6, 50  # 300 sequential sessions, at most 50 live at once
SMOKE_ROUNDS, SMOKE_ROUND_SESSIONS = 1, 4
PACED_SESSIONS, PACED_RATE = 200, 20.0
SMOKE_PACED_SESSIONS = 4
PROFILE_SESSIONS, SMOKE_PROFILE_SESSIONS = 100, 3
LOGGED_ROUNDS = 2  # sessions of the production-logging phase: LOGGED_ROUNDS * ROUND_SESSIONS
BASELINE_SAMPLES = 50
WARMUP_SESSIONS = 20
LIMIT_MS = 5.0
RESULTS_DIR = Path(__file__).resolve().parent.parent / "results"
# Not beside the scenario JSON files: the report reads every ``results/*.json`` as a scenario's latest.
BEFORE_FILE = RESULTS_DIR / "baseline" / "setup_cpu.json"
PROFILE_FILE = "setup_cpu_profile.txt"


def _clocks() -> tuple[float, float]:
    """(this thread's CPU seconds, this process's CPU seconds); called on the loop thread."""
    return time.thread_time(), cpu_seconds()


async def _sample(
    gateway: LoadGateway, clients: Clients, sessions: int, timeout: float, pauses: GcPauses
) -> tuple[float, float, int]:
    """(loop CPU s, process CPU s, sessions greeted) across one ``open`` command and, after the
    greeting, until the session is live (its pipeline built, started and given the conversation:
    a text session builds it after greeting, ``gateway.pipeline.builds``); its collector pauses are
    added to ``pauses``."""
    builds = gateway.app[deps_key].builds
    with pauses.watching():
        loop0, proc0 = _clocks()
        opened = await clients.open(sessions, timeout, rate=0.0)
        await builds.settled()
        loop1, proc1 = _clocks()
    return loop1 - loop0, proc1 - proc0, int(opened["opened"])


def _r(value: float, digits: int = 3) -> float:
    return round(value, digits)


def _dist(prefix: str, values_ms: list[float]) -> dict[str, float]:
    return {
        f"{prefix}_p50_ms": _r(percentile(values_ms, 50)),
        f"{prefix}_p90_ms": _r(percentile(values_ms, 90)),
        f"{prefix}_mean_ms": _r(statistics.fmean(values_ms)) if values_ms else float("nan"),
    }


async def _sequential(
    ctx: BenchContext, gateway: LoadGateway, rounds: int, per_round: int, phase: str = "sequential"
) -> tuple[dict[str, Any], dict[str, int]]:
    loop_ms: list[float] = []
    proc_ms: list[float] = []
    base_loop: list[float] = []
    base_proc: list[float] = []
    errors: dict[str, int] = {}
    failed = 0
    pauses = GcPauses()
    idle_pauses = GcPauses()
    for r in range(rounds):
        prefix = f"s{r}-{time.time_ns()}-"
        async with Clients.running(gateway, user_prefix=prefix) as clients:
            for _ in range(max(3, BASELINE_SAMPLES // rounds)):
                loop_s, proc_s, _ = await _sample(gateway, clients, 0, 30.0, idle_pauses)
                base_loop.append(loop_s * 1000)
                base_proc.append(proc_s * 1000)
            for i in range(per_round):
                loop_s, proc_s, greeted = await _sample(gateway, clients, 1, 60.0, pauses)
                if greeted != 1:
                    failed += 1
                    continue
                loop_ms.append(loop_s * 1000)
                proc_ms.append(proc_s * 1000)
                ctx.progress(phase, r * per_round + i + 1, rounds * per_round)
            for kind, count in (await clients.close())["errors"].items():
                errors[kind] = errors.get(kind, 0) + count
        await gateway.bench.settle(60.0)
    base_l, base_p = percentile(base_loop, 50), percentile(base_proc, 50)
    loop_net = [x - base_l for x in loop_ms]
    proc_net = [x - base_p for x in proc_ms]
    threads_net = [p - lo for p, lo in zip(proc_net, loop_net, strict=True)]
    row: dict[str, Any] = {
        "phase": phase,
        "sessions": len(loop_ms),
        **_dist("loop_cpu", loop_net),
        **_dist("process_cpu", proc_net),
        "other_threads_cpu_p50_ms": _r(percentile(threads_net, 50)),
        "loop_cpu_total_s": _r(sum(loop_net) / 1000),
        "process_cpu_total_s": _r(sum(proc_net) / 1000),
        "roundtrip_loop_cpu_p50_ms": _r(base_l),
        "gc_pause_ms_per_session": _r(pauses.total * 1000 / max(1, len(loop_ms))),
        "gc_collections": pauses.collections,
        "gc_full_collections": pauses.full_collections,
        "failed": failed,
    }
    return row, errors


@contextlib.contextmanager
def _production_logging() -> Iterator[None]:
    """The gateway's logging as ``memory-gateway serve`` runs it in production (JSON at INFO, Pipecat's
    loguru bridged), written to /dev/null; the bench's own (console, WARNING) afterwards."""
    from gateway.logging import configure_logging

    with open(os.devnull, "w", encoding="utf-8") as sink:
        configure_logging("json", "INFO", stream=sink)
        try:
            yield
        finally:
            configure_logging("console", "WARNING")
            logging.getLogger("mem0.utils.spacy_models").setLevel(logging.ERROR)


async def _paced(
    ctx: BenchContext, gateway: LoadGateway, sessions: int
) -> tuple[dict[str, Any], dict[str, int]]:
    idle_secs = 1.0
    idle0 = _clocks()
    await asyncio.sleep(idle_secs)
    idle1 = _clocks()
    idle_loop_per_s = (idle1[0] - idle0[0]) / idle_secs
    idle_proc_per_s = (idle1[1] - idle0[1]) / idle_secs
    async with Clients.running(gateway, user_prefix=f"p-{time.time_ns()}-") as clients:
        pauses = GcPauses()
        with pauses.watching():
            loop0, proc0 = _clocks()
            wall0 = time.perf_counter()
            opened = await clients.open(
                sessions, 60.0 + sessions, lambda i, n: ctx.progress("paced", i, n), rate=PACED_RATE
            )
            await gateway.app[deps_key].builds.settled()  # the last sessions' pipelines too
            wall = time.perf_counter() - wall0
            loop1, proc1 = _clocks()
        errors = dict((await clients.close())["errors"])
    await gateway.bench.settle(60.0)
    n = max(1, int(opened["opened"]))
    loop_s = (loop1 - loop0) - idle_loop_per_s * wall
    proc_s = (proc1 - proc0) - idle_proc_per_s * wall
    row: dict[str, Any] = {
        "phase": f"paced {PACED_RATE:g}/s",
        "sessions": int(opened["opened"]),
        "loop_cpu_mean_ms": _r(loop_s * 1000 / n),
        "process_cpu_mean_ms": _r(proc_s * 1000 / n),
        "loop_cpu_total_s": _r(loop_s),
        "process_cpu_total_s": _r(proc_s),
        "idle_loop_cpu_ms_per_s": _r(idle_loop_per_s * 1000),
        "gc_pause_ms_per_session": _r(pauses.total * 1000 / n),
        "gc_collections": pauses.collections,
        "gc_full_collections": pauses.full_collections,
        "greeting_p50_ms": _r(percentile(opened["greeting_secs"], 50) * 1000, 2),
        "greeting_p99_ms": _r(percentile(opened["greeting_secs"], 99) * 1000, 2),
        "failed": sessions - int(opened["opened"]),
    }
    return row, errors


async def _profile(
    ctx: BenchContext, gateway: LoadGateway, sessions: int
) -> tuple[str, list[str], dict[str, Any]]:
    """Profile ``sessions`` sequential set-ups on the loop thread; (report text, short top list, a
    row of noise-free counts: Python calls per set-up, GC-tracked objects each live session holds)."""
    profiler = cProfile.Profile()
    async with Clients.running(gateway, user_prefix=f"prof-{time.time_ns()}-") as clients:
        gc.collect()
        tracked = len(gc.get_objects())
        for i in range(sessions):
            profiler.enable()
            await clients.open(1, 60.0, rate=0.0)
            await gateway.app[deps_key].builds.settled()
            profiler.disable()
            ctx.progress("profile", i + 1, sessions)
        gc.collect()
        tracked = len(gc.get_objects()) - tracked
        await clients.close()
    await gateway.bench.settle(60.0)
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    stats.strip_dirs()
    text.write(f"cProfile of {sessions} sequential session set-ups on the event-loop thread\n\n")
    text.write("=== top 40 by cumulative time ===\n")
    stats.sort_stats("cumulative").print_stats(40)
    text.write("=== top 40 by own time ===\n")
    stats.sort_stats("tottime").print_stats(40)
    top: list[str] = []
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = max(1e-9, sum(tt for _, _, tt, _, _ in raw.values()))
    by_own = sorted(raw.items(), key=lambda kv: kv[1][2], reverse=True)
    for (file, line, func), (_, calls, tt, _, _) in by_own[:20]:
        top.append(
            f"{func} ({file}:{line}): {tt * 1000 / sessions:.3f} ms/session own time, "
            f"{100 * tt / total:.1f} %, {calls / sessions:.1f} calls/session"
        )
    counts = {
        "phase": "profile (cProfile, counts)",
        "sessions": sessions,
        "python_calls_per_session": round(stats.total_calls / sessions),  # type: ignore[attr-defined]
        "gc_tracked_objects_per_live_session": round(tracked / sessions),
    }
    return text.getvalue(), top, counts


def _before_rows() -> tuple[list[dict[str, Any]], str | None]:
    try:
        before = json.loads(BEFORE_FILE.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return [], None
    if before.get("smoke") or not before.get("rows"):
        return [], None
    rows = [{"code": "before", **{k: v for k, v in r.items() if k != "code"}} for r in before["rows"]]
    return rows, str(before.get("machine", {}).get("date"))


async def run(ctx: BenchContext) -> ScenarioResult:
    smoke = ctx.smoke
    rounds, per_round = (SMOKE_ROUNDS, SMOKE_ROUND_SESSIONS) if smoke else (ROUNDS, ROUND_SESSIONS)
    paced = SMOKE_PACED_SESSIONS if smoke else PACED_SESSIONS
    profiled = SMOKE_PROFILE_SESSIONS if smoke else PROFILE_SESSIONS
    errors: dict[str, int] = {}
    # Tuned as `memory-gateway serve` runs, unless the caller said not to retune this process (the
    # test suite's smoke run does).
    tune = os.environ.get("BENCH_RUNTIME_TUNING") != "0"
    async with fake_llm() as llm_url, load_gateway(ctx, TENANT, llm_url, tune_gc=tune) as gateway:
        # Warm-up, not reported: first query plans, pools, lazy imports, the tenant's backend.
        async with Clients.running(gateway, user_prefix=f"w-{time.time_ns()}-") as clients:
            await clients.open(2 if smoke else WARMUP_SESSIONS, 60.0, rate=0.0)
            await clients.close()
        await gateway.bench.settle(60.0)
        sequential, seq_errors = await _sequential(ctx, gateway, rounds, per_round)
        logged: dict[str, Any] | None = None
        if not smoke:  # reconfigures this process's logging: not inside the test suite's smoke run
            with _production_logging():
                logged, logged_errors = await _sequential(
                    ctx, gateway, LOGGED_ROUNDS, ROUND_SESSIONS, "sequential, INFO JSON logs"
                )
            seq_errors = {
                k: seq_errors.get(k, 0) + logged_errors.get(k, 0) for k in {*seq_errors, *logged_errors}
            }
        paced_row, paced_errors = await _paced(ctx, gateway, paced)
        report, top, counts = await _profile(ctx, gateway, profiled)
    for kind, count in (*seq_errors.items(), *paced_errors.items()):
        errors[kind] = errors.get(kind, 0) + count
    (ctx.out_dir / PROFILE_FILE).write_text(report, encoding="utf-8")
    rows = [{"code": "this run", **sequential}]
    if logged is not None:
        rows.append({"code": "this run", **logged})
    rows.append({"code": "this run", **paced_row})
    rows.append({"code": "this run", **counts})
    before, before_date = ([], None) if smoke else _before_rows()
    loop_p50 = sequential["loop_cpu_p50_ms"]
    targets = [
        target_at_most("loop CPU per session set-up, p50 (sequential)", loop_p50, LIMIT_MS, "ms"),
        target_at_most(
            f"loop CPU per session set-up, mean ({paced_row['phase']})",
            paced_row["loop_cpu_mean_ms"],
            LIMIT_MS,
            "ms",
        ),
        target_at_most("errors", float(sum(errors.values())), 0.0, "errors"),
    ]
    notes = [
        "Set-up = POST /start → WebSocket connect → client-ready → greeting's bot-llm-stopped (the "
        "client's view), greeted by the gateway on this process's event loop; users have no memories; "
        "an LLM endpoint (fake, another process) is configured as in production.",
        "loop_cpu = time.thread_time() on the event-loop thread; process_cpu = getrusage(RUSAGE_SELF) "
        "(loop + memory worker threads); other_threads = process - loop. PostgreSQL, clients and the "
        "fake LLM are other processes and not counted.",
        f"sequential: {rounds} rounds of {per_round}, one session per client command, each after the "
        "previous was greeted; the same command with no session (pipe round trip) is subtracted "
        f"(roundtrip_loop_cpu_p50_ms). paced: {paced} sessions at {PACED_RATE:g}/s, all open, total "
        "CPU over the arrival less the idle loop's over the same time, per session.",
        "Logging as the bench configures it (console, WARNING) except in 'sequential, INFO JSON logs': "
        "as `memory-gateway serve` logs in production (JSON at INFO, Pipecat's loguru bridged), into "
        "/dev/null.",
        f"cProfile of {profiled} sequential set-ups (loop thread only) in {PROFILE_FILE}; top 20 by own "
        "time below (profiling inflates small calls, read for proportions).",
        *[f"profile: {line}" for line in top],
    ]
    if errors:
        notes.append(f"errors: {errors}")
    if before:
        notes.insert(0, f"Rows labelled 'before' are bench/results/baseline/setup_cpu.json ({before_date}).")
    return ScenarioResult(
        name=NAME,
        title=TITLE,
        rows=[*before, *rows],
        targets=targets,
        notes=notes,
        plots=_plots(ctx, [*before, *rows]),
    )


def _plots(ctx: BenchContext, rows: list[dict[str, Any]]) -> list[Path]:
    bars: dict[str, float] = {}
    for row in rows:
        if row["phase"] == "sequential":
            bars[f"{row['code']}: sequential p50"] = float(row["loop_cpu_p50_ms"])
            bars[f"{row['code']}: sequential mean"] = float(row["loop_cpu_mean_ms"])
        elif str(row["phase"]).startswith("paced"):
            bars[f"{row['code']}: {row['phase']} mean"] = float(row["loop_cpu_mean_ms"])
    drawn = plots.bar_plot(
        ctx.out_dir / "setup_cpu.png",
        title=f"Event-loop CPU per session set-up (target ≤ {LIMIT_MS:g} ms)",
        ylabel="ms of loop CPU per session",
        bars=bars,
    )
    return [drawn] if drawn is not None else []
