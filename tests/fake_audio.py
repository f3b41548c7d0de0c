"""A local stand-in for OpenAI's paid audio API: real HTTP, the real request and response shapes.

Pipecat's ``OpenAISTTService`` / ``OpenAITTSService`` reach it through the real ``openai`` SDK:

* ``POST /v1/audio/transcriptions`` — multipart form (``file`` = a WAV, ``model``, ``language``, …) →
  ``{"text": ...}``. The transcript is whatever the test set (``transcript``); the WAV is parsed, so a
  request records how much audio, at what rate, the gateway actually sent.
* ``POST /v1/audio/speech`` — JSON (``input``, ``model``, ``voice``, ``response_format: "pcm"``) → raw
  16-bit mono PCM at 24 kHz (what OpenAI's ``pcm`` format is), ``ms_per_char`` of a quiet tone per input
  character, streamed in chunks like the real thing.

Every request is recorded, so tests assert on what the production code path sent.
"""

from __future__ import annotations

import io
import time
import wave
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import web
from aiohttp.test_utils import TestServer

SPEECH_SAMPLE_RATE = 24000


@dataclass(frozen=True)
class Transcription:
    model: str
    language: str | None
    sample_rate: int
    seconds: float
    authorization: str | None


@dataclass(frozen=True)
class Speech:
    text: str
    model: str
    voice: str
    response_format: str
    authorization: str | None
    at: float = field(default_factory=time.monotonic)  # when the request arrived


def tone(seconds: float, sample_rate: int = SPEECH_SAMPLE_RATE, freq: float = 220.0) -> bytes:
    """A quiet sine, as 16-bit little-endian mono PCM (vectorised: the voice benchmark asks for many,
    and a zero-delay fake must not spend its caller's latency computing them)."""
    n = int(seconds * sample_rate)
    samples = (3000 * np.sin(2 * np.pi * freq * np.arange(n) / sample_rate)).astype("<i2")
    return samples.tobytes()


@dataclass
class FakeAudioAPI:
    transcript: str = "My name is Ada and I sail on weekends"
    ms_per_char: float = 5.0
    transcriptions: list[Transcription] = field(default_factory=list)
    speeches: list[Speech] = field(default_factory=list)
    server: TestServer | None = None

    @property
    def base_url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.port}/v1"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/audio/transcriptions", self._transcribe)
        app.router.add_post("/v1/audio/speech", self._speak)
        self.server = TestServer(app, host="127.0.0.1", port=0)
        await self.server.start_server()

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()

    async def _transcribe(self, request: web.Request) -> web.Response:
        form = await request.post()
        upload = form.get("file")
        if not isinstance(upload, web.FileField):
            return web.json_response({"error": {"message": "file is required"}}, status=400)
        with wave.open(io.BytesIO(upload.file.read())) as wav:
            rate = wav.getframerate()
            seconds = wav.getnframes() / rate
        self.transcriptions.append(
            Transcription(
                model=str(form.get("model")),
                language=str(form["language"]) if "language" in form else None,
                sample_rate=rate,
                seconds=seconds,
                authorization=request.headers.get("Authorization"),
            )
        )
        return web.json_response({"text": self.transcript})

    async def _speak(self, request: web.Request) -> web.StreamResponse:
        body: dict[str, Any] = await request.json()
        text = str(body.get("input", ""))
        self.speeches.append(
            Speech(
                text=text,
                model=str(body.get("model")),
                voice=str(body.get("voice")),
                response_format=str(body.get("response_format")),
                authorization=request.headers.get("Authorization"),
            )
        )
        audio = tone(len(text) * self.ms_per_char / 1000)
        resp = web.StreamResponse(headers={"Content-Type": "audio/pcm"})
        await resp.prepare(request)
        chunk = SPEECH_SAMPLE_RATE // 10 * 2  # 100 ms
        for i in range(0, len(audio), chunk):
            await resp.write(audio[i : i + chunk])
        await resp.write_eof()
        return resp
