"""Scenario 2: the gateway's connect → greeting for a user with no memories, against a bare aiohttp
WebSocket echo (connect, one message, its reply) — what any WebSocket service on this machine pays.

Samples alternate gateway / echo / bare ``POST`` + echo, one of each per round, so drift (CPU
frequency, background work) hits all of them alike. The target compares like with like: WebSocket
connect → greeting against WebSocket connect → echo. ``/start`` → greeting is reported against a bare
aiohttp ``POST`` followed by the echo (the same two round trips with no work behind them).

The gateway greets in RTVI's order by default: the client connects and says ``client-ready`` (as every
RTVI client does), the gateway answers ``bot-ready`` and then greets — one client round trip inside the
connect span, like the echo's. A second gateway in the same rounds greets on connect
(``greeting.after: connect``, the opt-in; its client says nothing first), so what RTVI's order costs is
side by side. A text session greets before its pipeline is built (``gateway.pipeline.builds``).

Every sample is timed by a client in a process of its own (``bench.loadrun.TimingClient``), as a real
caller is: on the gateway's own event loop it would wait behind the pipeline ``/start`` just started.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from bench import plots
from bench.harness import (
    BenchContext,
    ScenarioResult,
    ratio,
    serve_on_loopback,
    start_echo_server,
    start_gateway,
    summarize_ms,
    target_at_most,
)
from bench.loadrun import timing_client

NAME = "floor"
TITLE = "2. Gateway floor: empty-memory greeting vs a bare aiohttp WebSocket echo"

LIMIT = 3.0
GATEWAY_WS = "gateway: WebSocket connect → client-ready → greeting"
GATEWAY_TOTAL = "gateway: /start → greeting"
EAGER_WS = "gateway, greeting on connect: WebSocket connect → greeting"
EAGER_TOTAL = "gateway, greeting on connect: /start → greeting"
ECHO = "bare aiohttp: WebSocket connect → echo"
POST_ECHO = "bare aiohttp: POST → WebSocket connect → echo"
ECHO_WARM = "bare aiohttp: WebSocket connect → echo, back to back"


@asynccontextmanager
async def _bare_start_server() -> AsyncIterator[str]:
    """A bare aiohttp app answering ``POST /start`` with a small JSON body; yields its base URL."""

    async def start(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"wsUrl": "", "token": "x" * 40, "sessionId": "y" * 32})

    app = web.Application()
    app.router.add_post("/start", start)
    async with serve_on_loopback(app) as base:
        yield base


async def run(ctx: BenchContext) -> ScenarioResult:
    rounds = 5 if ctx.smoke else 300
    warmup = 2 if ctx.smoke else 20
    samples: dict[str, list[float]] = {
        GATEWAY_WS: [],
        GATEWAY_TOTAL: [],
        EAGER_WS: [],
        EAGER_TOTAL: [],
        ECHO: [],
        POST_ECHO: [],
        ECHO_WARM: [],
    }
    async with (
        start_gateway(tenants=("floor",), database_url=ctx.database_url) as gw,
        start_gateway(
            tenants=("eager",),
            database_url=gw.database_url,
            tenant_settings={"greeting": {"after": "connect"}},
        ) as eager,
        start_echo_server() as echo_url,
        _bare_start_server() as bare,
        timing_client() as client,
    ):
        for i in range(warmup + rounds):
            # A user nobody has met: empty memory, the greeting's "new" branch.
            # Each sample starts once the gateway has no session left: a session's teardown runs after
            # its client closed and would otherwise land in the next sample, gateway or echo alike.
            await gw.settle()
            timing = await client.greet(gw.url, gw.key, f"empty-{i}")
            await gw.settle()
            at_connect = await client.greet(eager.url, eager.key, f"empty-{i}", client_ready=False)
            await eager.settle()
            echo = await client.echo(echo_url)
            post_echo = await client.post_echo(bare, echo_url)
            if i >= warmup:
                samples[GATEWAY_WS].append(timing.connect)
                samples[GATEWAY_TOTAL].append(timing.total)
                samples[EAGER_WS].append(at_connect.connect)
                samples[EAGER_TOTAL].append(at_connect.total)
                samples[ECHO].append(echo)
                samples[POST_ECHO].append(post_echo)
            ctx.progress("gateway vs echo", i + 1, warmup + rounds)
        server = _server_mean(gw.metrics.registry, gw.tenant)
        # The same echo back to back, on a loop doing nothing else: warm caches, the lowest floor there is.
        ctx.progress("echo back to back", 0, 1)
        samples[ECHO_WARM] = [await client.echo(echo_url) for _ in range(warmup + rounds)][warmup:]
        ctx.progress("echo back to back", 1, 1)

    stats = {name: summarize_ms(values) for name, values in samples.items()}
    floor_of = {
        GATEWAY_WS: ECHO,
        GATEWAY_TOTAL: POST_ECHO,
        EAGER_WS: ECHO,
        EAGER_TOTAL: POST_ECHO,
        ECHO: ECHO,
        POST_ECHO: POST_ECHO,
        ECHO_WARM: ECHO,
    }
    rows: list[dict[str, Any]] = []
    for name, s in stats.items():
        rows.append(
            {"variant": name, **s, "p50 vs its floor": ratio(s["p50_ms"], stats[floor_of[name]]["p50_ms"])}
        )
    measured = ratio(stats[GATEWAY_WS]["p50_ms"], stats[ECHO]["p50_ms"])
    rtvi_cost = round(stats[GATEWAY_WS]["p50_ms"] - stats[EAGER_WS]["p50_ms"], 2)
    warm = ratio(stats[GATEWAY_WS]["p50_ms"], stats[ECHO_WARM]["p50_ms"])
    notes = [
        f"The target uses the interleaved echo: an echo right after gateway work runs with cold caches "
        f"and costs more than one on a loop doing nothing else ('{ECHO_WARM}', its ratio column is "
        f"against the interleaved echo). Against that warm floor the gateway's p50 is {warm}x.",
        "RTVI's order (the default): the client says client-ready on connect and the greeting follows "
        f"bot-ready, one client round trip; '{EAGER_WS}' is a second gateway in the same rounds whose "
        "tenant greets on connect (greeting.after: connect), its client saying nothing first: "
        f"the difference of the two p50s ({rtvi_cost} ms) is what RTVI's order costs here.",
        f"Floor pairs: '{GATEWAY_WS}' vs '{ECHO}' (the target), '{GATEWAY_TOTAL}' vs '{POST_ECHO}'. "
        "Sequential, one session at a time, timed by a client in its own process, rounds interleaved, "
        "each sample started only once the gateway "
        "had no session left (teardown outside every span); the echo is measured to its reply, the "
        "gateway to the greeting's bot-llm-stopped; closes are outside both spans.",
    ]
    if server is not None:
        notes.append(
            f"Server-side gateway_greeting_seconds (WebSocket accept → greeting written): "
            f"mean {server:.1f} ms."
        )
    plot = plots.bar_plot(
        ctx.out_dir / "floor.png",
        title="Empty-memory greeting vs bare aiohttp (p50)",
        ylabel="p50 latency (ms)",
        bars={name: s["p50_ms"] for name, s in stats.items()},
    )
    return ScenarioResult(
        name=NAME,
        title=TITLE,
        rows=rows,
        targets=[target_at_most("gateway connect→greeting p50 / echo p50", measured, LIMIT, "x floor")],
        notes=notes,
        plots=[plot] if plot else [],
    )


def _server_mean(registry: Any, tenant: str) -> float | None:
    labels = {"tenant": tenant, "memories": "none", "source": "template"}
    count = registry.get_sample_value("gateway_greeting_seconds_count", labels)
    total = registry.get_sample_value("gateway_greeting_seconds_sum", labels)
    return float(total) / float(count) * 1000 if count else None
