"""Connect→greeting latency, empty user vs a user holding 1,000 memories.

Runs a real gateway (embedded PostgreSQL in a temp dir, real aiohttp server on loopback) and real
WebSocket clients, sequentially: for each session ``POST /start``, open the socket, and time until the
greeting's ``bot-llm-stopped`` arrives. Reports client-side p50/p95 and the server's own
``gateway_greeting_seconds``, plus a bare aiohttp WebSocket echo as the floor measured in the same run.

    python -m bench.greeting_latency [--sessions 50] [--memories 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("MEM0_TELEMETRY", "false")

import aiohttp
from aiohttp import web
from pydantic import SecretStr

from gateway.app import backends_key, create_app
from gateway.logging import configure_logging
from gateway.metrics import GatewayMetrics
from gateway.settings import Settings
from gateway.tenants import TenantConfig, TenantRegistry, hash_key, new_key
from memory.scope import MemoryScope


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50_ms": round(_pct(values, 0.5) * 1000, 2),
        "p95_ms": round(_pct(values, 0.95) * 1000, 2),
        "mean_ms": round(statistics.fmean(values) * 1000, 2),
    }


async def _greeting_once(http: aiohttp.ClientSession, base: str, key: str, user: str) -> tuple[float, str]:
    resp = await http.post(
        f"{base}/start",
        json={"transport": "websocket", "body": {"user_id": user, "serializer": "rtvi"}},
        headers={"Authorization": f"Bearer {key}"},
    )
    url = (await resp.json())["wsUrl"]
    t0 = time.perf_counter()
    async with http.ws_connect(url) as ws:
        text = []
        async for msg in ws:
            event = json.loads(msg.data)
            if event["type"] == "bot-llm-text":
                text.append(event["data"]["text"])
            elif event["type"] == "bot-llm-stopped":
                return time.perf_counter() - t0, "".join(text)
    raise RuntimeError("socket closed before the greeting")


async def _echo_floor(sessions: int) -> list[float]:
    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            await ws.send_str(msg.data)
        return ws

    app = web.Application()
    app.router.add_get("/ws", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    samples = []
    async with aiohttp.ClientSession() as http:
        for _ in range(sessions):
            t0 = time.perf_counter()
            async with http.ws_connect(f"http://127.0.0.1:{port}/ws") as ws:
                await ws.send_str("hi")
                await ws.receive()
            samples.append(time.perf_counter() - t0)
    await runner.cleanup()
    return samples


async def main(sessions: int, memories: int) -> dict[str, Any]:
    configure_logging("json", "WARNING")
    data_dir = Path(tempfile.mkdtemp(prefix="mgw-bench-"))
    key = new_key()
    tenant = TenantConfig(name="bench", api_keys=[hash_key(key)], max_sessions=1000)
    settings = Settings(data_dir=data_dir, token_secret=SecretStr("b" * 48), port=0)
    metrics = GatewayMetrics()
    app = create_app(settings, tenants=TenantRegistry([tenant]), metrics=metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    base = f"http://127.0.0.1:{port}"

    backend = await app[backends_key].for_tenant("bench", tenant.memory)
    seed_start = time.perf_counter()
    scope = MemoryScope("bench", user_id="heavy")
    batch = [
        {"role": "user", "content": f"remembered fact number {i} about sailing"} for i in range(memories)
    ]
    for start in range(0, len(batch), 100):
        await backend.add(scope, batch[start : start + 100], infer=False)
    seed_secs = time.perf_counter() - seed_start

    results: dict[str, Any] = {
        "hardware": f"{platform.machine()}, {os.cpu_count()} cores",
        "sessions": sessions,
    }
    async with aiohttp.ClientSession() as http:
        for _ in range(5):  # warm-up: imports, pools, first plans
            await _greeting_once(http, base, key, "warmup")
        for label, user in (("empty_user", "nobody-{i}"), (f"user_with_{memories}_memories", "heavy")):
            samples = []
            for i in range(sessions):
                elapsed, text = await _greeting_once(http, base, key, user.format(i=i))
                samples.append(elapsed)
            results[label] = {**_summary(samples), "sample_greeting": text}
    results["bare_websocket_echo_floor"] = _summary(await _echo_floor(sessions))
    results["seed_seconds"] = round(seed_secs, 2)
    families = metrics.registry.collect()
    greeting = [s for fam in families if fam.name == "gateway_greeting_seconds" for s in fam.samples]
    sums = {s.labels["memories"]: s.value for s in greeting if s.name.endswith("_sum")}
    counts = {s.labels["memories"]: s.value for s in greeting if s.name.endswith("_count")}
    results["server_greeting_mean_ms"] = {k: round(sums[k] / counts[k] * 1000, 2) for k in sums}
    floor = results["bare_websocket_echo_floor"]["p50_ms"]
    results["ratio_p50_vs_floor"] = {
        k: round(v["p50_ms"] / floor, 2) for k, v in results.items() if isinstance(v, dict) and "p50_ms" in v
    }
    await runner.cleanup()
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--memories", type=int, default=1000)
    args = parser.parse_args()
    out = asyncio.run(main(args.sessions, args.memories))
    path = Path(__file__).parent / "results" / "greeting_latency.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
