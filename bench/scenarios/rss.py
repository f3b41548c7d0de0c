"""Scenario: gateway RSS at 0, 100 and 500 idle sessions → marginal MiB per session.

The gateway runs in a child process of its own (``bench.gatewayproc``: the harness's gateway, tuned as
``memory-gateway serve`` tunes it), so its heap holds nothing of the bench's or of earlier scenarios —
freed memory the allocator would reuse would hide the sessions' cost. Sessions are real: ``POST /start``,
WebSocket, ``client-ready``, greeted, then idle (idle timeout raised above the run) while the clients —
another process (``bench.loadgen``), reading all the time as a browser does, so heartbeats are answered
— keep the sockets open. The gateway's RSS is its ``/proc/<pid>/status`` VmRSS after ``gc.collect()``
and a short settle, read inside it. Levels are cumulative (the first 100 sessions stay for the 500
level); a warm-up of sessions opened, used and closed first takes one-time allocations (pools, plans,
lazy imports) out of the slope.

Target: ≤ 2 MiB per idle session (least-squares slope over the levels).
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Any

from bench import plots
from bench.harness import BenchContext, ScenarioResult, percentile, target_at_most
from bench.loadrun import Clients, GatewayProcess, fake_llm, ms

NAME = "rss"
TITLE = "Gateway RSS per idle session"
TENANT = "bench_rss"

LEVELS = (0, 100, 500)
SMOKE_LEVELS = (0, 5)
LIMIT_MIB_PER_SESSION = 2.0
WARMUP_SESSIONS = 20
SETTLE_SECS = 2.0
ARRIVAL_RATE = 20.0


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var = sum((x - mean_x) ** 2 for x, _ in points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / var if var else float("nan")


def _progress(ctx: BenchContext, label: str, done: int, total: int) -> None:
    ctx.progress(label, done, total)


async def run(ctx: BenchContext) -> ScenarioResult:
    levels = SMOKE_LEVELS if ctx.smoke else LEVELS
    rows: list[dict[str, Any]] = []
    errors: dict[str, int] = {}
    # An LLM endpoint as in production: idle sessions never call it, but each builds its LLM service.
    async with (
        fake_llm() as llm_url,
        GatewayProcess.running(ctx, TENANT, llm_url, idle_timeout_secs=3600.0) as gw,
    ):
        async with Clients.running(gw, user_prefix="rss-warmup-") as warm:
            await warm.open(WARMUP_SESSIONS if not ctx.smoke else 2, timeout=120, rate=ARRIVAL_RATE)
            await warm.turns(1, 0.0, timeout=120)
            for kind, count in (await warm.close())["errors"].items():
                errors[f"warmup_{kind}"] = count
        await gw.wait_sessions(0, timeout=60)
        held = 0
        async with Clients.running(gw, user_prefix="rss-") as clients:
            for level in levels:
                greeting: list[float] = []
                if level > held:
                    opened = await clients.open(
                        level - held,
                        timeout=120 + level,
                        progress=functools.partial(_progress, ctx, f"{NAME} {level}"),
                        rate=ARRIVAL_RATE,
                    )
                    greeting = opened["greeting_secs"]
                    held = int(opened["held"])
                counted = await gw.wait_sessions(held, timeout=30)
                rss, objects = await gw.rss(SETTLE_SECS)
                rows.append(
                    {
                        "sessions": level,
                        "held": held,
                        "gateway_counted": counted,
                        "rss_mib": round(rss, 1),
                        "gc_tracked_objects": objects,
                        "greeting_p50_ms": ms(percentile(greeting, 50)) if greeting else None,
                        "greeting_p99_ms": ms(percentile(greeting, 99)) if greeting else None,
                    }
                )
            for kind, count in (await clients.close())["errors"].items():
                errors[kind] = errors.get(kind, 0) + count
    points = [(float(r["held"]), float(r["rss_mib"])) for r in rows]
    per_session = slope(points)
    for prev, row in itertools.pairwise(rows):
        added = row["held"] - prev["held"]
        row["marginal_mib_per_session"] = (
            round((row["rss_mib"] - prev["rss_mib"]) / added, 3) if added else None
        )
        row["objects_per_session"] = (
            round((row["gc_tracked_objects"] - prev["gc_tracked_objects"]) / added) if added else None
        )
    complete = not errors and rows[-1]["held"] == levels[-1]
    targets = [
        target_at_most(
            "RSS per idle session (slope)",
            round(per_session, 3) if complete else math.nan,
            LIMIT_MIB_PER_SESSION,
            "MiB/session",
        )
    ]
    notes = [
        "Gateway in a process of its own; VmRSS read inside it after gc.collect() and a "
        f"{SETTLE_SECS:g} s settle; levels cumulative; sessions arrive at {ARRIVAL_RATE:g}/s.",
        f"Warm-up: {WARMUP_SESSIONS} sessions opened, one turn each, closed before the 0-session reading.",
        f"Least-squares slope over {len(points)} levels: {per_session:.3f} MiB/session.",
    ]
    if errors:
        notes.append(f"Errors: {errors}")
    drawn = plots.line_plot(
        ctx.out_dir / "rss.png",
        title="Gateway RSS vs idle sessions",
        xlabel="idle sessions",
        ylabel="RSS (MiB)",
        series={"VmRSS after gc.collect()": points},
    )
    return ScenarioResult(
        name=NAME, title=TITLE, rows=rows, targets=targets, notes=notes, plots=[drawn] if drawn else []
    )
