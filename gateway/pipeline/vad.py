"""Every voice session's VAD on one Silero ONNX session, scored in batches on the event loop.

Stock Pipecat gives each session's ``SileroVADAnalyzer`` an ONNX session and a thread of its own, and
every audio frame (10-20 ms) goes to that thread and back (``VADAnalyzer.analyze_audio``); with tens of
sessions that is thousands of thread hand-offs a second, contending for the GIL, and the turn ends of
every session wait behind them (a profile in pipecat #3218 found it eating most of the CPU). Here:

* a frame that completes no 32 ms window is answered at once, on the event loop, with the VAD state
  the session already has (``pipecatcompat.BatchedSileroVADAnalyzer``);
* a completed window joins a batch; the batch is scored in one ONNX run on the event loop: a window
  costs ≈35 µs at 8 kHz and ≈60 µs at 16 kHz in a batch of 16 against ≈110 µs alone (measured on this
  machine), and no thread is involved;
* the batch runs on the next loop iteration, or — while at least ``min_streams`` sessions stream audio
  (``GATEWAY_VAD_BATCH_MIN_STREAMS``, 16) — ``gather_secs`` after its first window
  (``GATEWAY_VAD_BATCH_SECS``, 8 ms) so that more join it. Waiting pays only under load: at 30 calls
  8 ms makes batches of ≈10 and took the gateway from ≈71 % to ≈56 % of its core, but at one call it
  only delays each window, and the VAD's stop verdict needs six in a row: end of speech → first audio
  p50 389 ms with the wait against 364 ms without, stock Pipecat 374 ms
  (``bench/scenarios/voice_capacity.py``, one call, 60 s each);
* each session's recurrent state stays its own (``pipecatcompat.score_silero_batch``), so a session
  gets exactly the confidences it would get alone (``tests/test_vad_batch.py`` compares them).

How long a window waits for its score (batching plus a busy loop) is kept as the worst of the last
10 s: ``gateway_vad_wait_seconds``, next to ``gateway_event_loop_lag_seconds``.
"""

from __future__ import annotations

import asyncio

import numpy as np
from onnxruntime import InferenceSession
from pipecat.audio.vad.silero import SileroOnnxModel

from gateway.logging import get_logger
from gateway.looplag import WindowedMax
from gateway.pipeline.pipecatcompat import score_silero_batch, silero_window_samples

log = get_logger(__name__)

_Item = tuple[SileroOnnxModel, bytes, "asyncio.Future[float]", float]
WINDOW_SECS = 0.032  # Silero's window: 256 samples at 8 kHz, 512 at 16 kHz


class VADBatcher:
    """Scores Silero windows of many sessions together (``score`` is what each session awaits).

    Windows are grouped by sample rate (one ONNX run takes one rate); a batch is run once
    ``max_batch`` windows wait or ``gather_secs`` after its first, whichever comes first — or on the
    next loop iteration while fewer than ``min_streams`` sessions stream (from the windows counted
    over the last whole second).
    """

    def __init__(
        self,
        session: InferenceSession,
        *,
        gather_secs: float = 0.0,
        min_streams: int = 0,
        max_batch: int = 64,
    ) -> None:
        self._session = session
        self._gather = gather_secs
        self._max_batch = max_batch
        # Streams, from the windows of the last whole second: a stream completes one every 32 ms.
        self._min_rate = min_streams / WINDOW_SECS
        self._rate = 0.0
        self._counted_since = 0.0
        self._counted = 0
        self._pending: dict[int, list[_Item]] = {}
        self._timer: asyncio.TimerHandle | asyncio.Handle | None = None
        self.wait = WindowedMax(10.0)
        # Counters for the benchmark and tests: windows scored, batches run.
        self.windows = 0
        self.batches = 0

    async def score(self, model: SileroOnnxModel, window: bytes, sample_rate: int) -> float:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[float] = loop.create_future()
        pending = self._pending.setdefault(sample_rate, [])
        now = loop.time()
        pending.append((model, window, future, now))
        busy = self._count(now)  # every window counts, whether it opens a batch or joins one
        if len(pending) >= self._max_batch:
            self._run(sample_rate, pending)
            self._pending[sample_rate] = []
        elif self._timer is None and self._gather > 0 and busy:
            self._timer = loop.call_later(self._gather, self._run_all)
        elif self._timer is None:
            self._timer = loop.call_soon(self._run_all)
        return await future

    def _count(self, now: float) -> bool:
        """Count a window; True while enough sessions stream audio for a wait to gather a batch
        worth it."""
        self._counted += 1
        elapsed = now - self._counted_since
        if elapsed >= 1.0:
            self._rate = self._counted / elapsed
            self._counted_since, self._counted = now, 0
        return self._rate >= self._min_rate

    def _run_all(self) -> None:
        self._timer = None
        pending, self._pending = self._pending, {}
        for sample_rate, items in pending.items():
            if items:
                self._run(sample_rate, items)

    def _run(self, sample_rate: int, items: list[_Item]) -> None:
        live = [item for item in items if not item[2].done()]  # a cancelled session's window is dropped
        if not live:
            return
        samples = silero_window_samples(sample_rate)
        pcm = np.frombuffer(b"".join(item[1] for item in live), dtype=np.int16).reshape(len(live), samples)
        # As SileroVADAnalyzer.voice_confidence scales a window.
        windows = pcm.astype(np.float32) / 32768.0
        try:
            scores = score_silero_batch(self._session, [item[0] for item in live], windows, sample_rate)
        except Exception:
            # Stock voice_confidence logs and scores 0 (not speech); the sessions go on.
            log.exception("vad.batch_failed", windows=len(live))
            scores = np.zeros(len(live), dtype=np.float32)
        now = asyncio.get_running_loop().time()
        self.wait.observe(now - min(item[3] for item in live))
        self.windows += len(live)
        self.batches += 1
        for item, score in zip(live, scores.tolist(), strict=True):
            item[2].set_result(score)
