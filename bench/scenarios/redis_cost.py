"""Scenario: what the Redis session registry adds to ``POST /start`` and to connect → greeting.

Two gateways in this process, as in the floor scenario, same code and settings but for the registry:
one with the in-process registry (the default, ``InProcessRegistry``), one with ``redis_url`` pointing
at a ``redis-server`` this scenario starts on a free loopback port (``--save "" --appendonly no``) and
stops at the end (``RedisRegistry``). What goes to Redis, per session:

* prestart on (the default): ``/start`` takes one ``/start`` token from the tenant's bucket (a Lua
  script) and acquires the session's lease (another); the connect spends the token (``SET NX``) and
  claims the session started at ``/start`` (this process only).
* prestart off (``prestart_secs=0``): ``/start`` takes only the bucket token; the connect spends the
  token and acquires the lease.

The session's end releases the lease (a third script), outside every span. Both modes run with both
registries, four gateways in the same interleaved rounds (the order rotates every round), each sample
timed by a client in its own process (``bench.loadrun.TimingClient``) and started once every gateway
has no session left. Users have no memories (the greeting's "new" branch). The lease renewal task runs
every ``lease_ttl_secs / 3`` (5 s) in the Redis gateways, whether or not a sample is under way.
"""

from __future__ import annotations

import time
from typing import Any

from bench import plots
from bench.harness import (
    BenchContext,
    BenchGateway,
    ScenarioResult,
    ratio,
    redis_server_path,
    start_gateway,
    start_redis_server,
    summarize_ms,
)
from bench.loadrun import timing_client

NAME = "redis_cost"
TITLE = "Redis registry cost per /start and per connect"

SPANS = ("POST /start", "WebSocket connect → greeting", "/start → greeting")
MODES: dict[str, dict[str, Any]] = {"prestart on (default)": {}, "prestart off": {"prestart_secs": 0}}
REGISTRIES = ("in-process", "redis")
CLIENT_COMMANDS = ("evalsha", "eval", "set", "get", "ping", "script|load")
SHORT = {
    "prestart on (default)": "",
    "prestart off": "no prestart: ",
    "POST /start": "/start",
    "WebSocket connect → greeting": "connect",
    "/start → greeting": "total",
}


async def run(ctx: BenchContext) -> ScenarioResult:
    if redis_server_path() is None:
        return ScenarioResult(
            name=NAME,
            title=TITLE,
            rows=[{"variant": "skipped", "reason": "redis-server is not installed"}],
            notes=["Skipped: redis-server is not installed (Debian: apt-get install redis-server)."],
        )
    rounds = 5 if ctx.smoke else 300
    warmup = 2 if ctx.smoke else 20
    keys = [(mode, registry) for mode in MODES for registry in REGISTRIES]
    # (mode, registry) -> span -> seconds
    samples: dict[tuple[str, str], dict[str, list[float]]] = {k: {s: [] for s in SPANS} for k in keys}
    async with start_redis_server() as redis_url:
        async with (
            start_gateway(tenants=("rc_local",), database_url=ctx.database_url) as local,
            start_gateway(tenants=("rc_redis",), database_url=local.database_url, redis_url=redis_url) as rds,
            start_gateway(
                tenants=("rc_local_lazy",), database_url=local.database_url, **MODES["prestart off"]
            ) as local_lazy,
            start_gateway(
                tenants=("rc_redis_lazy",),
                database_url=local.database_url,
                redis_url=redis_url,
                **MODES["prestart off"],
            ) as rds_lazy,
            timing_client() as client,
        ):
            gateways: dict[tuple[str, str], BenchGateway] = {
                keys[0]: local,
                keys[1]: rds,
                keys[2]: local_lazy,
                keys[3]: rds_lazy,
            }
            _check_backends(gateways)
            await _reset_stats(redis_url)
            for i in range(warmup + rounds):
                # Rotate the order so no variant always runs right after the same other one.
                order = keys[i % len(keys) :] + keys[: i % len(keys)]
                for key in order:
                    gw = gateways[key]
                    await _settle_all(gateways)
                    timing = await client.greet(gw.url, gw.key, f"rc-{i}")
                    if i >= warmup:
                        spans = samples[key]
                        spans["POST /start"].append(timing.total - timing.connect)
                        spans["WebSocket connect → greeting"].append(timing.connect)
                        spans["/start → greeting"].append(timing.total)
                ctx.progress("interleaved rounds", i + 1, warmup + rounds)
            await _settle_all(gateways)
            redis_sessions = 2 * (warmup + rounds)
            commands = await _command_stats(redis_url)
            round_trip = await _redis_round_trip(redis_url, 50 if ctx.smoke else 500)

    stats = {
        key: {span: summarize_ms(values) for span, values in spans.items()} for key, spans in samples.items()
    }
    rows: list[dict[str, Any]] = []
    for mode in MODES:
        for span in SPANS:
            base = stats[(mode, "in-process")][span]
            for registry in REGISTRIES:
                s = stats[(mode, registry)][span]
                delta = round(s["p50_ms"] - base["p50_ms"], 2)
                rows.append(
                    {
                        "mode": mode,
                        "span": span,
                        "registry": registry,
                        **s,
                        "p50 added by Redis ms": delta if registry == "redis" else None,
                        "p50 vs in-process": ratio(s["p50_ms"], base["p50_ms"]),
                        "p95 added by Redis ms": round(s["p95_ms"] - base["p95_ms"], 2)
                        if registry == "redis"
                        else None,
                    }
                )
    rt = summarize_ms(round_trip)
    rows.append(
        {
            "mode": "—",
            "span": "redis-py round trip (SET NX PXAT, as the token spend), from the gateways' process",
            "registry": "redis",
            **rt,
        }
    )
    default = "prestart on (default)"

    def added(mode: str, span: str) -> float:
        return round(stats[(mode, "redis")][span]["p50_ms"] - stats[(mode, "in-process")][span]["p50_ms"], 2)

    notes = [
        f"Prestart on (default): Redis adds {added(default, 'POST /start')} ms p50 per /start "
        f"(in-process {stats[(default, 'in-process')]['POST /start']['p50_ms']} ms) and "
        f"{added(default, 'WebSocket connect → greeting')} ms p50 per connect → greeting (in-process "
        f"{stats[(default, 'in-process')]['WebSocket connect → greeting']['p50_ms']} ms). Prestart off: "
        f"{added('prestart off', 'POST /start')} ms per /start, "
        f"{added('prestart off', 'WebSocket connect → greeting')} ms per connect. A bare redis-py round "
        f"trip from the same process is {rt['p50_ms']} ms p50.",
        "Four gateways in this process (in-process / Redis registry x prestart on / off), one session "
        "each per round, the order rotated every round, each sample started once no gateway had a "
        "session left; timed by a client in a process of its own; loopback; users without memories. "
        f"{rounds} rounds after {warmup} of warm-up. POST /start = POST until its JSON is read; "
        "WebSocket connect → greeting = connect until the greeting's bot-llm-stopped.",
        "redis-server (same machine, 2 cores shared with the gateways, the timing client and "
        "PostgreSQL) started by the scenario with --save '' --appendonly no; both Redis gateways use it "
        "(different tenants).",
    ]
    if commands:
        per = {name: round(calls / redis_sessions, 2) for name, calls in commands.items()}
        notes.append(
            f"Redis commands per session over both Redis gateways' {redis_sessions} sessions (INFO "
            f"commandstats: the round trips, lease renewals and the release included): {per}."
        )
    plot = plots.bar_plot(
        ctx.out_dir / "redis_cost.png",
        title="In-process vs Redis registry (p50)",
        ylabel="p50 latency (ms)",
        bars={
            f"{SHORT[mode]}{SHORT[span]}, {registry}": stats[(mode, registry)][span]["p50_ms"]
            for mode in MODES
            for span in SPANS
            for registry in REGISTRIES
        },
    )
    return ScenarioResult(name=NAME, title=TITLE, rows=rows, notes=notes, plots=[plot] if plot else [])


def _check_backends(gateways: dict[tuple[str, str], BenchGateway]) -> None:
    from gateway.keys import registry_key

    for (_, registry), gw in gateways.items():
        backend = gw.app[registry_key].backend
        expected = "redis" if registry == "redis" else "in_process"
        if backend != expected:
            raise RuntimeError(f"gateway {gw.tenant} runs the {backend} registry, expected {expected}")


async def _settle_all(gateways: dict[tuple[str, str], BenchGateway]) -> None:
    for gw in gateways.values():
        await gw.settle()


async def _reset_stats(url: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        await client.config_resetstat()
    finally:
        await client.aclose()


async def _command_stats(url: str) -> dict[str, int]:
    """Calls per client command since the reset (INFO commandstats): the round trips."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        info = await client.info("commandstats")
    finally:
        await client.aclose()
    calls: dict[str, int] = {}
    for key, value in info.items():
        name = key.removeprefix("cmdstat_")
        # Only what clients send; the commands the Lua scripts run inside Redis are counted too.
        if name not in CLIENT_COMMANDS or not isinstance(value, dict):
            continue
        calls[name] = int(value.get("calls", 0))
    return dict(sorted(calls.items()))


async def _redis_round_trip(url: str, n: int) -> list[float]:
    """Seconds per ``SET key 1 NX PXAT …`` (the token spend) on one redis-py client, sequentially."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url, decode_responses=True)
    samples: list[float] = []
    try:
        expires = int((time.time() + 60) * 1000)
        for i in range(n + 20):
            started = time.perf_counter()
            await client.set(f"bench:rt:{i}", "1", nx=True, pxat=expires)
            if i >= 20:
                samples.append(time.perf_counter() - started)
    finally:
        await client.aclose()
    return samples
