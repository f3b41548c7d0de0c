"""A phone call's greeting, recalled and synthesised while Twilio is still connecting the stream.

A caller hears nothing until the first audio arrives, and on a phone that wait starts at the ring,
not at the WebSocket: Pipecat's users report the first greeting 4-5 s after a call connects (pipecat
#2957, #5100). Here the call's session is built when the webhook is answered (its pipeline started, as
any voice session at ``/start``), and right away ``PreparedGreeting`` fetches what the gateway
remembers of the caller (started by the webhook), composes the greeting and has the session's own TTS
service synthesise it (``run_tts``: the tenant's voice, model and key, over the process's shared HTTP
client) — all while Twilio reads the TwiML and opens the media stream. When the stream starts, the
session pushes the audio it already holds into the pipeline, from where the TTS would have pushed it
(``frames``), so the first audio leaves as the stream starts, and the rest follows as it is
synthesised. Through the pipeline, not past it: the output transport paces it, a barge-in clears it
(Twilio's ``clear``), and the assistant aggregator adds the greeting to the context once it was
spoken.

If the synthesis fails, the session says the greeting through the pipeline as any session does
(``Session._push_line``): a caller is never left without one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from pipecat.frames.frames import ErrorFrame, TTSAudioRawFrame
from pipecat.services.tts_service import TTSService

from gateway.logging import get_logger
from gateway.pipeline import greeting as greetings
from gateway.tenants import GreetingSettings

log = get_logger(__name__)

# A greeting is a sentence or three; anything longer than this is cut off.
MAX_SECONDS = 60.0


class PreparedGreeting:
    """The greeting's text and audio, prepared once (``start``) and replayed by ``frames``."""

    def __init__(self, prefetch: asyncio.Task[Any], settings: GreetingSettings, deadline: float) -> None:
        self._prefetch = prefetch
        self._settings = settings
        self._deadline = deadline
        self._greeting: asyncio.Future[greetings.Greeting] = asyncio.get_running_loop().create_future()
        self._frames: list[TTSAudioRawFrame] = []
        self._more = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.context_id = ""
        self.done = False  # synthesis ended (all of it, or a failure)
        self.failed = False  # it ended without the whole greeting's audio

    def start(self, tts: TTSService) -> None:
        self.context_id = tts.create_context_id()
        self._task = asyncio.create_task(self._prepare(tts), name="greeting-synthesis")

    async def greeting(self) -> greetings.Greeting:
        """The greeting's text (once recalled, or the fallback at the greeting deadline)."""
        return await asyncio.shield(self._greeting)

    @property
    def has_audio(self) -> bool:
        return bool(self._frames)

    async def frames(self) -> AsyncIterator[TTSAudioRawFrame]:
        """The greeting's audio from its first frame: what is held at once, the rest as it arrives."""
        sent = 0
        while True:
            while sent < len(self._frames):
                yield self._frames[sent]
                sent += 1
            if self.done:
                return
            self._more.clear()
            await self._more.wait()

    async def close(self) -> None:
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if not self._greeting.done():
            self._greeting.cancel()

    async def _prepare(self, tts: TTSService) -> None:
        try:
            greeting = await greetings.collect(self._prefetch, self._settings, self._deadline)
            self._greeting.set_result(greeting)
            await self._synthesise(tts, greeting.text)
        except asyncio.CancelledError:
            self.failed = True
            raise
        except Exception:
            self.failed = True
            log.exception("greeting.synthesis_failed")
            if not self._greeting.done():
                self._greeting.set_result(greetings.fallback(self._settings))
        finally:
            self.done = True
            self._more.set()

    async def _synthesise(self, tts: TTSService, text: str) -> None:
        budget = 0
        await tts.start_ttfb_metrics()  # run_tts stops it at the first audio: gateway_ttfb_seconds{tts}
        async for frame in tts.run_tts(text, self.context_id):
            if isinstance(frame, ErrorFrame):
                self.failed = True
                log.warning("greeting.synthesis_error")
                return
            if isinstance(frame, TTSAudioRawFrame):
                budget += len(frame.audio)
                if budget > MAX_SECONDS * frame.sample_rate * frame.num_channels * 2:
                    log.warning("greeting.synthesis_too_long")
                    return
                self._frames.append(frame)
                self._more.set()
