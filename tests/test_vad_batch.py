"""Every session's VAD scored in batches on the event loop (``gateway/pipeline/vad.py``), against
Pipecat's own ``SileroVADAnalyzer`` (an ONNX session and a thread per analyzer) on real speech."""

from __future__ import annotations

import asyncio
import itertools
import threading

import pytest
from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADAnalyzer, VADState

from gateway.pipeline.voice import VoiceModels
from tests.speech import espeak, silence

SENTENCE = "Hello, I would like to book a table for two tonight please."


def call(rate: int) -> bytes:
    """Silence, a sentence, a pause, the sentence again, silence: starts and stops to detect."""
    said = espeak(SENTENCE, rate)
    return silence(1.0, rate) + said + silence(1.5, rate) + said + silence(1.0, rate)


async def states(analyzers: list[VADAnalyzer], streams: list[bytes], chunk: int) -> list[list[VADState]]:
    """Feed every stream its 20 ms frames together, as concurrent sessions do; each one's states."""
    seen: list[list[VADState]] = [[] for _ in analyzers]
    for offset in range(0, max(len(s) for s in streams), chunk):
        live = [i for i, stream in enumerate(streams) if offset < len(stream)]
        results = await asyncio.gather(
            *(analyzers[i].analyze_audio(streams[i][offset : offset + chunk]) for i in live)
        )
        for i, state in zip(live, results, strict=True):
            seen[i].append(state)
    return seen


@pytest.mark.parametrize("rate", [8000, 16000])
async def test_batched_sessions_reach_exactly_the_states_pipecats_own_analyzers_reach(rate: int) -> None:
    chunk = rate // 50 * 2
    audio = call(rate)
    # Four callers out of step with one another (each starts 70 ms later), so windows complete at
    # different frames and batches mix streams in different states.
    streams = [audio[i * 7 * chunk // 2 :] for i in range(4)]
    stock: list[VADAnalyzer] = [SileroVADAnalyzer() for _ in streams]
    models = VoiceModels()
    ours: list[VADAnalyzer] = [models.vad_analyzer() for _ in streams]
    for analyzer in (*stock, *ours):
        analyzer.set_sample_rate(rate)

    expected = await states(stock, streams, chunk)
    got = await states(ours, streams, chunk)

    assert got == expected
    for per_stream in expected:  # the speech was heard, twice, and ended
        starts = sum(1 for a, b in itertools.pairwise(per_stream) if b == VADState.SPEAKING != a)
        assert starts >= 2 and per_stream[-1] == VADState.QUIET
    batcher = models.batcher
    assert batcher is not None
    assert batcher.batches < batcher.windows  # windows of concurrent sessions shared ONNX runs
    for analyzer in (*stock, *ours):
        await analyzer.cleanup()


async def test_a_batched_analyzer_hands_no_frame_to_a_thread() -> None:
    models = VoiceModels()
    analyzer = models.vad_analyzer()
    analyzer.set_sample_rate(16000)
    threads = threading.active_count()
    audio = call(16000)
    for offset in range(0, len(audio), 640):
        await analyzer.analyze_audio(audio[offset : offset + 640])
    assert threading.active_count() == threads
    assert not analyzer._executor._threads  # Pipecat's per-analyzer executor never started a thread
    await analyzer.cleanup()


def test_pipecat_analyzers_per_session_when_asked() -> None:
    """``GATEWAY_VOICE_ANALYZERS=pipecat``: stock analyzers, each on an ONNX session of its own."""
    models = VoiceModels(shared=False)
    first, second = models.vad_analyzer(), models.vad_analyzer()
    assert type(first) is SileroVADAnalyzer
    assert first._model.session is not second._model.session
    assert models.batcher is None


async def next_iterations(n: int = 3) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_a_window_waits_for_others_only_while_enough_sessions_stream() -> None:
    """Below ``GATEWAY_VAD_BATCH_MIN_STREAMS`` a window is scored on the next loop iteration (a wait
    would only delay the verdict); while the last second's windows say that many sessions stream, a
    window waits ``GATEWAY_VAD_BATCH_SECS`` and other sessions' windows join its batch — and those
    count as streaming too, so the waits go on for as long as the load does."""
    models = VoiceModels(vad_gather_secs=0.3, vad_min_streams=1)  # one stream: 31.25 windows a second
    analyzers = [models.vad_analyzer() for _ in range(40)]
    batcher = models.batcher
    assert batcher is not None
    window = silence(0.032, 16000)
    loop = asyncio.get_running_loop()

    def score(analyzer: VADAnalyzer) -> asyncio.Future[float]:
        assert isinstance(analyzer, SileroVADAnalyzer)
        return asyncio.ensure_future(batcher.score(analyzer._model, window, 16000))

    # The first second: no rate known yet, so no window waits for company.
    started = loop.time()
    for _ in range(40):
        alone = score(analyzers[0])
        await next_iterations()
        assert alone.done()
    assert batcher.batches == 40
    await asyncio.sleep(max(0.0, 1.05 - (loop.time() - started)))

    # 40 windows in that second, more than one stream's 31.25: a window now waits, and every other
    # session's window scored meanwhile goes into the same ONNX run. A second of that...
    started = loop.time()
    while loop.time() - started < 1.05:
        first = score(analyzers[0])
        await next_iterations()
        assert not first.done()
        await asyncio.wait_for(asyncio.gather(first, *(score(a) for a in analyzers[1:])), timeout=5)
    assert batcher.windows == 40 + 40 * (batcher.batches - 40)

    # ...is 40 windows a batch, three or four batches a second: still busy, the next window waits.
    last = score(analyzers[0])
    await next_iterations()
    assert not last.done()
    await asyncio.wait_for(last, timeout=5)
    for analyzer in analyzers:
        await analyzer.cleanup()
