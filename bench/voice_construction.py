"""Per-session cost of building voice mode: Pipecat's defaults side by side with ``gateway.pipeline.voice``.

Everything here runs on the event loop when a voice session starts, before the bot can say a word. Each
row is built ``--rounds`` times after one warm-up; memory is the RSS growth of keeping ``--keep`` VAD
analyzers alive (what N concurrent sessions hold).

    python -m bench.voice_construction [--rounds 20] [--keep 10]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from openai import DefaultAsyncHttpxClient
from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3
from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.services.openai.stt import OpenAISTTService
from pipecat.services.openai.tts import OpenAITTSService

from gateway.logging import configure_logging
from gateway.pipeline.voice import VoiceModels, build_voice
from gateway.tenants import TenantConfig

BASE_URL = "http://127.0.0.1:9/v1"


def _timed(build: Callable[[], object], rounds: int) -> dict[str, float]:
    build()  # warm-up: first-use loads (shared models, imports) are not per-session costs
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        build()
        samples.append((time.perf_counter() - started) * 1000)
    return {"p50_ms": round(statistics.median(samples), 3), "max_ms": round(max(samples), 3)}


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _rss_growth(build: Callable[[], object], keep: int) -> float:
    gc.collect()
    before = _rss_mib()
    held = [build() for _ in range(keep)]
    gc.collect()
    growth = _rss_mib() - before
    del held
    return round(growth, 1)


def main(rounds: int, keep: int) -> dict[str, Any]:
    configure_logging("json", "WARNING")
    client = DefaultAsyncHttpxClient()
    models = VoiceModels()
    tenant = TenantConfig.model_validate(
        {"name": "bench", "stt": {"base_url": BASE_URL}, "tts": {"base_url": BASE_URL}}
    )
    smart = TenantConfig.model_validate(
        {
            "name": "bench",
            "stt": {"base_url": BASE_URL, "turn_detection": "smart_turn"},
            "tts": {"base_url": BASE_URL},
        }
    )
    rows: dict[str, Callable[[], object]] = {
        "SileroVADAnalyzer() (Pipecat)": lambda: SileroVADAnalyzer(),
        "VoiceModels.vad_analyzer() (shared session)": lambda: models.vad_analyzer(),
        "LocalSmartTurnAnalyzerV3() (Pipecat)": lambda: LocalSmartTurnAnalyzerV3(),
        "VoiceModels.turn_analyzer() (shared session)": lambda: models.turn_analyzer(),
        "OpenAISTTService (own client)": lambda: OpenAISTTService(api_key="x", base_url=BASE_URL),
        "OpenAISTTService (shared http_client)": lambda: OpenAISTTService(
            api_key="x", base_url=BASE_URL, http_client=client
        ),
        "OpenAITTSService (own client)": lambda: OpenAITTSService(api_key="x", base_url=BASE_URL),
        "OpenAITTSService (shared http_client)": lambda: OpenAITTSService(
            api_key="x", base_url=BASE_URL, http_client=client
        ),
        "build_voice(): STT+VAD+TTS, speech_timeout": lambda: build_voice(tenant, models, client),
        "build_voice(): STT+VAD+TTS, smart_turn": lambda: build_voice(smart, models, client),
    }
    results: dict[str, Any] = {name: _timed(build, rounds) for name, build in rows.items()}
    results[f"rss_growth_mib_{keep}_vad_analyzers"] = {
        "pipecat": _rss_growth(lambda: SileroVADAnalyzer(), keep),
        "shared_session": _rss_growth(lambda: models.vad_analyzer(), keep),
    }
    results["machine"] = {"python": platform.python_version(), "cpus": os.cpu_count()}
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--keep", type=int, default=10)
    args = parser.parse_args()
    out = main(args.rounds, args.keep)
    path = Path(__file__).parent / "results" / "voice_construction.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
