"""Scenario: 1, 10, 100, 500 concurrent text sessions against one gateway process.

The gateway runs in this process (the harness's ``start_gateway``, tuned as ``memory-gateway serve``
tunes it: ``gateway.runtime.tune_gc``), on this process's event loop; a zero-delay fake LLM and the
client load generator each run in a child process of their own (``bench.loadgen``), over loopback.
Users have no memories yet. Per level N:

1. **arrival** — N clients arrive at ``ARRIVAL_RATE`` per second, the tenant's default ``/start``
   rate limit (each ``POST /start``, WebSocket, ``client-ready``) and stay connected; greeting
   latency is WebSocket connect → the greeting's ``bot-llm-stopped``, measured by the client. The
   target is taken here.
2. **conversation** — with all N live, each sends ``TURNS`` ``send-text`` turns, each after a random
   pause of 0 to twice ``THINK_SECS`` s; turn latency is send → the reply's ``bot-llm-stopped``.
3. **burst** — all N close; then N new clients connect *at once* and are greeted (a stress figure:
   the greetings queue behind each other's set-up on one event loop).

CPU is this process's CPU seconds (event loop and memory threads; PostgreSQL, clients and LLM are other
processes) over the phase's wall time. Target: 500 sessions with p99 greeting < 1 s and no errors.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import plots
from bench.harness import BenchContext, ScenarioResult, percentile, target_at_most
from bench.loadrun import Clients, GcPauses, LoadGateway, cpu_seconds, fake_llm, load_gateway, ms

NAME = "concurrency"
TITLE = "Concurrent text sessions: greeting and turn latency, errors, CPU"
TENANT = "bench_concurrency"

LEVELS = (1, 10, 100, 500)
SMOKE_LEVELS = (1, 5)
# Sessions per second: a tenant's default /start rate limit (10/s, bursts of 50), so what one tenant
# can send at its defaults. The burst phase shows what happens far beyond it.
ARRIVAL_RATE = 10.0
TURNS = 1
# Mean pause before a turn (uniform 0-40 s): a person typing, about one message per 20-40 s per
# session, so 500 sessions offer ~12 turns/s — near one process's measured capacity here.
THINK_SECS = 20.0
GREETING_LIMIT_MS = 1000.0


def _greeting_fallbacks(gateway: LoadGateway) -> int:
    value = gateway.bench.metrics.registry.get_sample_value(
        "gateway_greeting_seconds_count",
        {"tenant": gateway.tenant, "memories": "fallback", "source": "template"},
    )
    return int(value or 0)


def _memory_calls(gateway: LoadGateway) -> dict[str, tuple[float, float]]:
    """(count, seconds) per memory operation so far, from the gateway's own histogram."""
    out: dict[str, tuple[float, float]] = {}
    for family in gateway.bench.metrics.registry.collect():
        if family.name != "gateway_memory_seconds":
            continue
        for sample in family.samples:
            if sample.labels.get("tenant") != gateway.tenant:
                continue
            count, total = out.get(sample.labels["operation"], (0.0, 0.0))
            if sample.name.endswith("_count"):
                count += sample.value
            elif sample.name.endswith("_sum"):
                total += sample.value
            out[sample.labels["operation"]] = (count, total)
    return out


def _memory_means(
    before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]
) -> dict[str, Any]:
    means: dict[str, Any] = {}
    for op, (count, total) in sorted(after.items()):
        n = count - before.get(op, (0.0, 0.0))[0]
        if n > 0:
            means[f"memory_{op}_mean_ms"] = ms((total - before.get(op, (0.0, 0.0))[1]) / n)
    return means


async def _settle(gateway: LoadGateway, timeout: float) -> bool:
    try:
        await gateway.bench.settle(timeout)
    except TimeoutError:
        return False
    return True


def _p(samples: list[float], q: float) -> float | None:
    return ms(percentile(samples, q))


async def run_level(
    ctx: BenchContext, gateway: LoadGateway, sessions: int, *, turns: int, think: float, burst: bool = True
) -> dict[str, Any]:
    """One level: arrival, conversation, burst; a table row."""
    timeout = 60.0 + sessions * 0.5
    fallbacks = _greeting_fallbacks(gateway)
    memory = _memory_calls(gateway)
    errors: dict[str, int] = {}
    label = f"{NAME} {sessions}"
    with GcPauses().watching() as arrival_gc:
        phases = await _arrive_and_talk(ctx, gateway, sessions, turns, think, timeout)
    opened, turned = phases.opened, phases.turned
    for kind, count in phases.errors.items():
        errors[kind] = errors.get(kind, 0) + count
    (cpu0, wall0), (cpu1, wall1), (cpu2, wall2) = phases.clocks
    if not await _settle(gateway, timeout):
        errors["not_settled"] = errors.get("not_settled", 0) + 1
    burst_greeting: list[float] = []
    with GcPauses().watching() as burst_gc:
        if burst:
            async with Clients.running(gateway, user_prefix=f"b{sessions}-{time.time_ns()}-") as clients:
                stormed = await clients.open(
                    sessions, timeout, lambda i, n: ctx.progress(f"{label}: burst", i, n), rate=0.0
                )
                burst_greeting = stormed["greeting_secs"]
                for kind, count in (await clients.close())["errors"].items():
                    errors[f"burst_{kind}"] = errors.get(f"burst_{kind}", 0) + count
            if not await _settle(gateway, timeout):
                errors["not_settled"] = errors.get("not_settled", 0) + 1
    greeting, turn = opened["greeting_secs"], turned["turn_secs"]
    return {
        "sessions": sessions,
        "greeted": opened["opened"],
        "greeting_p50_ms": _p(greeting, 50),
        "greeting_p99_ms": _p(greeting, 99),
        "greeting_max_ms": ms(max(greeting, default=math.nan)),
        "turns": len(turn),
        "turn_p50_ms": _p(turn, 50),
        "turn_p99_ms": _p(turn, 99),
        "turns_per_s": round(len(turn) / (wall2 - wall1), 1),
        "burst_greeting_p50_ms": _p(burst_greeting, 50) if burst else None,
        "burst_greeting_p99_ms": _p(burst_greeting, 99) if burst else None,
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "greeting_fallbacks": _greeting_fallbacks(gateway) - fallbacks,
        "arrival_cpu_util": round((cpu1 - cpu0) / (wall1 - wall0), 3),
        "arrival_cpu_ms_per_session": round((cpu1 - cpu0) * 1000 / sessions, 2),
        "conversation_cpu_util": round((cpu2 - cpu1) / (wall2 - wall1), 3),
        "cpu_ms_per_turn": round((cpu2 - cpu1) * 1000 / len(turn), 2) if turn else None,
        "gc_pause_s": round(arrival_gc.total, 3),
        "gc_longest_pause_ms": round(arrival_gc.longest * 1000, 1),
        "burst_gc_pause_s": round(burst_gc.total, 3) if burst else None,
        **_memory_means(memory, _memory_calls(gateway)),
    }


@dataclass
class _Phases:
    opened: dict[str, Any]
    turned: dict[str, Any]
    errors: dict[str, int]
    # (process CPU seconds, wall seconds) at the start of arrival, of conversation, and at its end.
    clocks: list[tuple[float, float]]


async def _arrive_and_talk(
    ctx: BenchContext, gateway: LoadGateway, sessions: int, turns: int, think: float, timeout: float
) -> _Phases:
    """The arrival and conversation phases, with the clocks around them."""
    label = f"{NAME} {sessions}"
    clocks: list[tuple[float, float]] = []
    async with Clients.running(gateway, user_prefix=f"c{sessions}-{time.time_ns()}-") as clients:
        clocks.append((cpu_seconds(), time.perf_counter()))
        opened = await clients.open(
            sessions, timeout, lambda i, n: ctx.progress(f"{label}: arrive", i, n), rate=ARRIVAL_RATE
        )
        clocks.append((cpu_seconds(), time.perf_counter()))
        turned = await clients.turns(turns, 2 * think, timeout + 2 * think * turns)
        clocks.append((cpu_seconds(), time.perf_counter()))
        closed = await clients.close()
    return _Phases(opened, turned, dict(closed["errors"]), clocks)


async def run(ctx: BenchContext) -> ScenarioResult:
    levels = SMOKE_LEVELS if ctx.smoke else LEVELS
    turns, think = (1, 0.5) if ctx.smoke else (TURNS, THINK_SECS)
    rows: list[dict[str, Any]] = []
    async with fake_llm() as llm_url, load_gateway(ctx, TENANT, llm_url) as gateway:
        # Warm-up, not reported: first query plans, pools, lazy imports.
        await run_level(ctx, gateway, 5, turns=1, think=0.0, burst=False)
        for sessions in levels:
            rows.append(await run_level(ctx, gateway, sessions, turns=turns, think=think))
            await asyncio.sleep(0.5)
    top = rows[-1]
    p99 = top["greeting_p99_ms"]
    targets = [
        target_at_most(
            f"p99 greeting, {top['sessions']} sessions arriving at {ARRIVAL_RATE:g}/s",
            math.nan if p99 is None or top["greeted"] < top["sessions"] else p99,
            GREETING_LIMIT_MS,
            "ms",
        ),
        target_at_most(f"errors at {top['sessions']} sessions", float(top["errors"]), 0.0, "errors"),
    ]
    notes = [
        "Gateway on the bench's event loop (tuned as `memory-gateway serve` runs it); the fake LLM and "
        "the clients in two other processes, loopback only. Users have no memories.",
        f"Arrival: {ARRIVAL_RATE:g} sessions/s, all kept open; then {turns} turn(s) per session, each after "
        f"a random 0-{2 * think:g} s pause; then the burst: the same number connecting at once.",
        "greeting = WebSocket connect → greeting's bot-llm-stopped (client clock); turn = send-text → "
        "reply's bot-llm-stopped. errors count failed greetings/turns, wrong replies and sockets the "
        "server closed, in all phases.",
        "cpu = this process's CPU seconds (event loop + memory threads) over the phase's wall time; "
        "PostgreSQL, clients and LLM run elsewhere. The machine has 2 cores, shared with those.",
    ]
    return ScenarioResult(
        name=NAME, title=TITLE, rows=rows, targets=targets, notes=notes, plots=_plots(ctx, rows)
    )


def _plots(ctx: BenchContext, rows: list[dict[str, Any]]) -> list[Path]:
    def series(key: str) -> list[tuple[float, float]]:
        return [(float(r["sessions"]), math.nan if r[key] is None else float(r[key])) for r in rows]

    drawn = plots.line_plot(
        ctx.out_dir / "concurrency.png",
        title="Latency vs concurrent sessions (one gateway process)",
        xlabel="concurrent sessions",
        ylabel="ms",
        series={
            f"greeting p50 (arriving {ARRIVAL_RATE:g}/s)": series("greeting_p50_ms"),
            f"greeting p99 (arriving {ARRIVAL_RATE:g}/s)": series("greeting_p99_ms"),
            "greeting p99 (all at once)": series("burst_greeting_p99_ms"),
            "turn p50": series("turn_p50_ms"),
            "turn p99": series("turn_p99_ms"),
        },
        logx=True,
        logy=True,
    )
    return [drawn] if drawn is not None else []
