"""The voice capacity benchmark's processes (``bench/scenarios/voice_capacity.py``), each its own, spoken
to in JSON lines over stdin/stdout like ``bench.loadgen``:

``python -m bench.voicecalls gateway``
    Reads one config line (``cpu``, ``tenant``, ``database_url``, ``tenant_settings``, ``settings``,
    ``auth_env``, ``auth_token``), pins itself to ``cpu`` (so "per core" means one core: its threads —
    the memory pool, Pipecat's per-analyzer VAD threads in the stock variant — share it), starts the
    harness's gateway and prints ``listening``. ``{"cmd": "stats"}`` answers the process's CPU seconds
    (every thread), the event loop's and the VAD's worst waits (the gauges), VAD windows and batches,
    live sessions and RSS.
``python -m bench.voicecalls fakes``
    The paid APIs, zero-delay: the fake LLM, the fake OpenAI audio API (``ms_per_char`` of speech per
    character) and Twilio's REST API; prints their base URLs.
``python -m bench.voicecalls callers``
    Reads one config line, then places ``sessions`` phone calls at once (spread over ``ramp_secs``),
    each Twilio's side of a call (``tests.fake_twilio.TwilioCall``: the signed webhook, the signed
    stream, 20 ms μ-law media events in real time through Pipecat's ``TwilioFrameSerializer``). Each
    caller waits for the greeting, then for ``seconds`` says espeak-ng utterances (random order, a
    random pause before each, then silence) and times **the end of its speech → the bot's first
    audio** (the utterance's last voiced sample leaves at ``spoken_until``; the first media event after
    it is the reply's, since a caller speaks only once the bot is quiet). Answers ``result`` with every
    sample, the
    greetings' stream start → first audio, errors by kind and its own loop's worst lag (a saturated
    client would show here, not in the gateway's numbers).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import resource
import sys
import time
from collections import Counter
from typing import Any

os.environ.setdefault("MEM0_TELEMETRY", "false")


def _emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def _pin(cpu: int | None) -> None:
    if cpu is not None and hasattr(os, "sched_setaffinity") and cpu < (os.cpu_count() or 1):
        os.sched_setaffinity(0, {cpu})


async def _lines() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=16 * 1024 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def _gateway() -> None:
    import logging

    from bench.harness import start_gateway
    from bench.loadgen import raise_nofile_limit
    from bench.loadrun import cpu_seconds, rss_mib
    from gateway.keys import deps_key, metrics_key, registry_key
    from gateway.logging import configure_logging

    configure_logging("json", "WARNING", stream=sys.stderr)
    logging.getLogger("mem0.utils.spacy_models").setLevel(logging.ERROR)
    raise_nofile_limit()
    reader = await _lines()
    config = json.loads(await reader.readline())
    _pin(config.get("cpu"))
    os.environ[config["auth_env"]] = config["auth_token"]
    async with start_gateway(
        tenants=(config["tenant"],),
        database_url=config["database_url"],
        tenant_settings=config["tenant_settings"],
        max_sessions=10_000,
        **config.get("settings", {}),
    ) as gw:
        _emit("listening", url=gw.url, tenant=gw.tenant, pid=os.getpid())
        registry, metrics = gw.app[registry_key], gw.app[metrics_key]
        models = gw.app[deps_key].voice_models
        while line := await reader.readline():
            command = json.loads(line)
            if command["cmd"] == "stats":
                batcher = models.batcher
                sample = metrics.registry.get_sample_value
                tenant = {"tenant": gw.tenant}
                timed = {
                    f"{name}_{part}": sample(f"{metric}_{part}", {**tenant, **labels}) or 0.0
                    for name, metric, labels in (
                        ("stt", "gateway_ttfb_seconds", {"service": "stt"}),
                        ("llm", "gateway_ttfb_seconds", {"service": "llm"}),
                        ("tts", "gateway_ttfb_seconds", {"service": "tts"}),
                        ("user_bot", "gateway_user_bot_latency_seconds", {}),
                        ("search", "gateway_memory_seconds", {"operation": "search", "backend": "pgvector"}),
                    )
                    for part in ("sum", "count")
                }
                _emit(
                    "stats",
                    **timed,
                    cpu=cpu_seconds(),
                    wall=time.monotonic(),
                    loop_lag=sample("gateway_event_loop_lag_seconds") or 0.0,
                    vad_wait=sample("gateway_vad_wait_seconds") or 0.0,
                    vad_windows=batcher.windows if batcher else 0,
                    vad_batches=batcher.batches if batcher else 0,
                    sessions=registry.held(),
                    rss_mib=rss_mib(),
                    threads=len(os.listdir("/proc/self/task")),
                )
            elif command["cmd"] == "settle":
                deadline = time.monotonic() + float(command.get("timeout", 60))
                while (registry.held() or registry.sessions) and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                _emit("settled", sessions=registry.held())
            else:
                raise SystemExit(f"unknown command {command['cmd']!r}")


async def _fakes() -> None:
    from tests.fake_audio import FakeAudioAPI
    from tests.fake_llm import FakeLLM
    from tests.fake_twilio import FakeTwilioAPI

    reader = await _lines()
    config = json.loads(await reader.readline())
    _pin(config.get("cpu"))
    llm, audio, twilio = (
        FakeLLM(),
        FakeAudioAPI(ms_per_char=float(config["ms_per_char"]), transcript=config["transcript"]),
        FakeTwilioAPI(),
    )
    for server in (llm, audio, twilio):
        await server.start()
    _emit("listening", llm=llm.base_url, audio=audio.base_url, twilio=twilio.base_url)
    try:
        while await reader.readline():
            pass
    finally:
        for server in (llm, audio, twilio):
            await server.close()


async def _callers() -> None:
    import aiohttp

    from bench.loadgen import raise_nofile_limit
    from gateway.looplag import LoopLagMonitor
    from tests.fake_twilio import RATE, TwilioCall
    from tests.speech import espeak, silence

    raise_nofile_limit()
    reader = await _lines()
    config = json.loads(await reader.readline())
    _pin(config.get("cpu"))
    utterances = [espeak(text, RATE) for text in config["utterances"]]
    tail_secs = float(config.get("tail_secs", 1.2))
    tail = silence(tail_secs, RATE)
    sessions, seconds = int(config["sessions"]), float(config["seconds"])
    ramp = float(config.get("ramp_secs", 2.0))
    reply_timeout = float(config.get("reply_timeout_secs", 10.0))
    latencies: list[float] = []
    greetings: list[float] = []
    errors: Counter[str] = Counter()
    lag = LoopLagMonitor(interval=0.05, window=3600.0)
    lag.start()
    connector = aiohttp.TCPConnector(limit=0)

    async def caller(i: int, http: aiohttp.ClientSession, until: float) -> None:
        rng = random.Random(int(config.get("seed", 7)) * 1000 + i)
        await asyncio.sleep(i * ramp / max(1, sessions))
        call = TwilioCall(http, config["webhook_url"], config["auth_token"], caller=f"+1555{i:07d}")
        try:
            await call.call()
            greetings.append(await call.first_audio(timeout=reply_timeout) - call.started_at)
            await call.quiet(0.4, timeout=30)
            while time.monotonic() < until:
                await asyncio.sleep(rng.uniform(0.3, 1.2))
                # The utterance's speech ends where its silent tail begins.
                spoken_until = call.say(rng.choice(utterances) + tail) - tail_secs
                try:
                    async with asyncio.timeout(spoken_until - time.monotonic() + reply_timeout):
                        while not call.heard or call.heard[-1][0] <= spoken_until:
                            await asyncio.sleep(0.02)
                except TimeoutError:
                    errors["no reply"] += 1
                    continue
                first = next(at for at, _ in call.heard if at > spoken_until)
                latencies.append(first - spoken_until)
                await call.quiet(0.4, timeout=30)
        except Exception as e:
            errors[type(e).__name__] += 1
        finally:
            await call.hang_up()

    async with aiohttp.ClientSession(connector=connector) as http:
        _emit("ready")
        await reader.readline()  # go
        until = time.monotonic() + ramp + seconds
        await asyncio.gather(*(caller(i, http, until) for i in range(sessions)))
    await lag.stop()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    _emit(
        "result",
        latencies=latencies,
        greetings=greetings,
        errors=dict(errors),
        client_lag=lag.worst.value(),
        client_cpu=usage.ru_utime + usage.ru_stime,
    )


if __name__ == "__main__":
    role = sys.argv[1]
    asyncio.run({"gateway": _gateway, "fakes": _fakes, "callers": _callers}[role]())
