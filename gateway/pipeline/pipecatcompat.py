"""The gateway's seam to Pipecat's private parts that its per-session hot path relies on.

Everything here reaches past Pipecat's public API for CPU a session's set-up would otherwise pay
(``bench/scenarios/setup_cpu.py`` measures it), and ``tests/test_pipecat_compat.py`` fails loudly when
a Pipecat upgrade moves or changes what it relies on.

* **Worker handler discovery, once per class.** ``BaseWorker.__init__`` finds a worker's ``@job`` and
  ``@worker_ready`` methods by walking every attribute of every class in its MRO
  (``pipecat.pipeline.job_decorator._collect_job_handlers``,
  ``pipecat.pipeline.worker_ready_decorator._collect_worker_ready_handlers``), for every instance:
  about 0.1 ms per session's ``PipelineWorker``, all on the event loop, to find the same (here: no)
  handlers every time. ``cache_worker_handlers()`` has ``BaseWorker`` look them up once per class
  and bind them per instance: the same handlers, bound the same way (``getattr``), the same
  ``ValueError`` for a class with two handlers of one name.
* **One flat pipeline per worker.** ``PipelineWorker`` wraps the pipeline it is given in one of its
  own, ``[source, RTVI, <the given pipeline>, sink]``, and the given one is a ``Pipeline`` with a source
  and a sink of its own: every frame that crosses the session crosses three pass-through processors
  more (the inner pipeline, its source, its sink), each a push, an observer event and a queue call.
  ``flatten_worker_pipeline`` rebuilds the worker's pipeline (``PipelineWorker._pipeline``, between its
  ``_source`` and ``_sink``) as one ``Pipeline`` of the given type holding RTVI and the given
  pipeline's processors directly: the same processors in the same order, linked the same way, minus
  the three that only passed frames on (≈8 % of a set-up's Python calls). Anything shaped otherwise
  (a bridged worker, a nested pipeline that is not a plain ``Pipeline``) is left as Pipecat built it.
* **Direct mode for processors Pipecat builds itself** (``enable_direct_mode``): the aggregators of
  ``LLMContextAggregatorPair`` take no processor arguments; ``FrameProcessor._enable_direct_mode`` is
  what the constructor argument sets.
* **The worker's observers** (``worker_observers``, ``replace_worker_observer``): ``PipelineWorker``
  keeps them in ``_observer`` (a ``WorkerObserver``, its list in ``_observers``); a session's go behind
  one ``ObserverHub`` (``gateway.pipeline.worker``).
* **Processors set up one after another** (``SessionPipeline``): ``Pipeline._setup_processors`` /
  ``_cleanup_processors`` gather a task per processor; ours loops, with Pipecat's own
  ``_setup_processor`` and the processors' ``_setup_started`` / ``_setup_finished`` marks.
* **Voice models shared by every session** (``SharedSileroVADAnalyzer``, ``SharedSmartTurnAnalyzer``):
  Pipecat opens an ONNX session per analyzer in ``__init__``; these mirror its ``__init__`` (the
  attributes it sets: ``_model``, ``_windows_since_reset``, ``_low_confidence_windows``, ``session``,
  ``sample_rates``; ``_log_data``, ``_session``) around the process's one session.
* **Silero scored in batches across sessions** (``BatchedSileroVADAnalyzer``, ``score_silero_batch``):
  stock ``VADAnalyzer.analyze_audio`` hands every audio frame (10-20 ms) to a thread of the analyzer's
  own and back, and each window is one ONNX run. Here a frame that completes no window is answered on
  the event loop with the state it already has, and a completed window is scored in one ONNX run with
  the windows every other session completed meanwhile (``gateway.pipeline.vad.VADBatcher``); Pipecat's
  own ``_run_analyzer`` then runs the VAD's state machine and volume on it, exactly as stock does. A
  batched run reads and writes each stream's ``SileroOnnxModel`` state as ``__call__`` does
  (``_state``, ``_context``, ``_last_sr``, ``_last_batch_size``).

``tests/test_pipecat_compat.py`` checks each against the installed Pipecat (and ``tests/test_voice.py``
that the shared analyzers score and predict as Pipecat's own do).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
from onnxruntime import InferenceSession
from pipecat.audio.turn.smart_turn.base_smart_turn import BaseSmartTurn
from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3
from pipecat.audio.vad.silero import SileroOnnxModel, SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADAnalyzer, VADParams, VADState
from pipecat.observers.base_observer import BaseObserver
from pipecat.pipeline import job_decorator, worker_ready_decorator
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineWorker
from pipecat.pipeline.worker_observer import WorkerObserver
from pipecat.processors.frame_processor import FrameProcessor, FrameProcessorSetup
from pipecat.workers import base_worker

from gateway.logging import get_logger

log = get_logger(__name__)

Collect = Callable[[Any], dict[str, Callable[..., Any]]]

# Pipecat's own functions, and the marker attribute each one looks for on a handler function.
ORIGINAL_COLLECTORS: dict[str, tuple[Collect, Callable[[Any], str | None]]] = {
    "_collect_job_handlers": (
        job_decorator._collect_job_handlers,
        lambda f: f.job_name if getattr(f, "is_job_handler", False) else None,
    ),
    "_collect_worker_ready_handlers": (
        worker_ready_decorator._collect_worker_ready_handlers,
        lambda f: f.worker_ready_name if hasattr(f, "worker_ready_name") else None,
    ),
}


def handler_attributes(cls: type, key_of: Callable[[Any], str | None]) -> dict[str, str]:
    """``{handler key: attribute name}`` for ``cls``, found as Pipecat finds them: the first
    definition of each attribute name along the MRO, if callable and marked; two attributes marking
    one key raise ``ValueError`` as Pipecat does."""
    seen: set[str] = set()
    found: dict[str, str] = {}
    for klass in cls.__mro__:
        for attr_name, value in klass.__dict__.items():
            if attr_name in seen:
                continue
            seen.add(attr_name)
            if not callable(value):
                continue
            key = key_of(value)
            if key is None:
                continue
            if key in found:
                raise ValueError(
                    f"Duplicate handler for '{key}': '{attr_name}' conflicts with '{found[key]}'"
                )
            found[key] = attr_name
    return found


def _per_class(key_of: Callable[[Any], str | None]) -> Collect:
    cache: dict[type, dict[str, str]] = {}

    def collect(obj: Any) -> dict[str, Callable[..., Any]]:
        cls = type(obj)
        attributes = cache.get(cls)
        if attributes is None:
            attributes = cache[cls] = handler_attributes(cls, key_of)
        return {key: getattr(obj, name) for key, name in attributes.items()}

    collect.__wrapped__ = key_of  # type: ignore[attr-defined]  # marks ours (idempotence)
    return collect


def cache_worker_handlers() -> None:
    """Have ``BaseWorker`` discover ``@job`` / ``@worker_ready`` handlers once per class (idempotent)."""
    for name, (_, key_of) in ORIGINAL_COLLECTORS.items():
        current = getattr(base_worker, name)
        if getattr(current, "__wrapped__", None) is key_of:
            continue
        setattr(base_worker, name, _per_class(key_of))


def flatten_worker_pipeline(worker: PipelineWorker, pipeline: Pipeline, flat: type[Pipeline]) -> bool:
    """Replace ``worker``'s ``[source, (RTVI), pipeline, sink]`` by ``flat([(RTVI), *pipeline's
    processors], source, sink)``; True if done, False (nothing changed) if the worker is not shaped
    so. Call it right after the worker is built, before it runs."""
    outer = worker._pipeline
    source, sink = worker._source, worker._sink
    processors = outer.processors
    if (
        not isinstance(outer, Pipeline)
        or type(pipeline) is not flat
        or len(processors) < 3
        or processors[0] is not source
        or processors[-1] is not sink
        or processors[-2] is not pipeline
        or processors.count(pipeline) != 1
    ):
        return False
    inner = pipeline.processors[1:-1]  # without the given pipeline's own source and sink
    worker._pipeline = flat([*processors[1:-2], *inner], source=source, sink=sink)
    return True


def enable_direct_mode(*processors: FrameProcessor) -> None:
    """Pipecat's direct mode (frames handled on the pushing task, no queues or tasks of the
    processor's own) for processors built without the constructor argument. Before set-up."""
    for processor in processors:
        processor._enable_direct_mode = True


def worker_observers(worker: PipelineWorker) -> list[BaseObserver]:
    """The observers ``worker`` was built with (RTVI's included), as its ``WorkerObserver`` holds them."""
    return list(worker._observer._observers)


def worker_observer(worker: PipelineWorker) -> WorkerObserver:
    """What ``worker`` reports frames and events to."""
    observer: WorkerObserver = worker._observer
    return observer


def replace_worker_observer(worker: PipelineWorker, observer: WorkerObserver) -> None:
    """Have ``worker`` report to ``observer`` instead of the ``WorkerObserver`` it built. Before it runs."""
    worker._observer = observer


class SessionPipeline(Pipeline):
    """A ``Pipeline`` that sets its processors up, and cleans them up, one after another.

    Pipecat gives each processor's ``setup()`` and ``cleanup()`` a task of its own and gathers them,
    so that one slow processor does not hold back the StartFrame at the others. A session's
    processors do no I/O there (shared clients and models are built once per process), so the
    ~twenty tasks per session buy nothing; the StartFrame is still held at each processor until
    its own setup has returned, exactly as Pipecat does it.
    """

    async def _setup_processors(
        self, processors: Sequence[FrameProcessor], setup: FrameProcessorSetup
    ) -> None:
        for processor in processors:
            processor._setup_started()
        for processor in processors:
            await self._setup_processor(processor, setup)
            processor._setup_finished()

    async def _cleanup_processors(self, processors: Sequence[FrameProcessor]) -> None:
        for processor in processors:
            try:
                await processor.cleanup()
            except Exception:
                log.exception("processor.cleanup_failed", processor=type(processor).__name__)


class _SharedSessionSileroModel(SileroOnnxModel):
    """Silero's per-stream recurrent state around the process's one ONNX session."""

    def __init__(self, session: InferenceSession) -> None:
        # Not super().__init__(): that opens a new InferenceSession, which is what we avoid.
        self.session = session
        self.sample_rates = [8000, 16000]
        self.reset_states()


class SharedSileroVADAnalyzer(SileroVADAnalyzer):
    """``SileroVADAnalyzer`` whose model runs on a shared ONNX session (≈0.02 ms to build, not ≈70-90)."""

    def __init__(
        self, session: InferenceSession, *, sample_rate: int | None = None, params: VADParams | None = None
    ) -> None:
        # Mirrors SileroVADAnalyzer.__init__ minus the model load.
        VADAnalyzer.__init__(self, sample_rate=sample_rate, params=params)
        self._model = _SharedSessionSileroModel(session)
        self._windows_since_reset = 0
        self._low_confidence_windows = 0


class SharedSmartTurnAnalyzer(LocalSmartTurnAnalyzerV3):
    """``LocalSmartTurnAnalyzerV3`` on the session of an already loaded one (per-stream state is in
    ``BaseSmartTurn``; the model call is stateless)."""

    def __init__(self, loaded: LocalSmartTurnAnalyzerV3, **kwargs: Any) -> None:
        # Mirrors LocalSmartTurnAnalyzerV3.__init__ minus the model load.
        BaseSmartTurn.__init__(self, **kwargs)
        self._log_data = loaded._log_data
        self._session = loaded._session


class WindowScorer(Protocol):
    """Scores one Silero window of one stream (``gateway.pipeline.vad.VADBatcher``)."""

    async def score(self, model: SileroOnnxModel, window: bytes, sample_rate: int) -> float: ...


def silero_window_samples(sample_rate: int) -> int:
    """Samples per Silero window (``SileroVADAnalyzer.num_frames_required``)."""
    return 512 if sample_rate == 16000 else 256


def score_silero_batch(
    session: InferenceSession, models: Sequence[SileroOnnxModel], windows: np.ndarray, sample_rate: int
) -> np.ndarray:
    """One window per stream, scored in one ONNX run: ``windows[i]`` (float32 samples) with
    ``models[i]``'s recurrent state and context, each model left as its own ``__call__`` would leave
    it. Returns the confidences, one per stream. Every model must be a distinct stream."""
    context_size = 64 if sample_rate == 16000 else 32
    for model in models:
        # SileroOnnxModel.__call__'s resets, for a batch of one per stream.
        if not model._last_batch_size or model._last_sr != sample_rate or model._last_batch_size != 1:
            model.reset_states(1)
        if not np.shape(model._context)[1]:
            model._context = np.zeros((1, context_size), dtype="float32")
    x = np.concatenate([np.concatenate([m._context for m in models], axis=0), windows], axis=1)
    state = np.concatenate([m._state for m in models], axis=1)
    rate = np.array(sample_rate, dtype="int64")
    out, new_state = session.run(None, {"input": x, "state": state, "sr": rate})
    for i, model in enumerate(models):
        model._state = new_state[:, i : i + 1, :]
        model._context = x[i : i + 1, -context_size:]
        model._last_sr = sample_rate
        model._last_batch_size = 1
    scores: np.ndarray = out[:, 0]
    return scores


class BatchedSileroVADAnalyzer(SharedSileroVADAnalyzer):
    """A ``SileroVADAnalyzer`` on the process's session whose windows are scored by ``scorer``
    (in batches across sessions, on the event loop): no thread, no executor round trip per frame.

    ``analyze_audio`` keeps the audio that completes no window and answers with the VAD state it
    has; each completed window is scored, then goes through Pipecat's own ``_run_analyzer`` (the
    state machine, the volume, the model resets of ``_maybe_reset_model``), one window at a time,
    so every decision is stock Pipecat's on the same confidences.
    """

    def __init__(
        self,
        session: InferenceSession,
        scorer: WindowScorer,
        *,
        sample_rate: int | None = None,
        params: VADParams | None = None,
    ) -> None:
        super().__init__(session, sample_rate=sample_rate, params=params)
        self._scorer = scorer
        self._unscored = bytearray()
        self._scored: float | None = None

    async def analyze_audio(self, buffer: bytes) -> VADState:
        self._unscored += buffer
        size = self._vad_frames_num_bytes
        while len(self._unscored) >= size:
            window = bytes(self._unscored[:size])
            del self._unscored[:size]
            self._scored = await self._scorer.score(self._model, window, self.sample_rate)
            self._run_analyzer(window)
        return self._vad_state

    def voice_confidence(self, buffer: Any) -> float:
        scored, self._scored = self._scored, None
        if scored is None:  # called directly, not from analyze_audio: score it alone, as stock does
            return float(np.asarray(super().voice_confidence(buffer)).ravel()[0])
        # What stock voice_confidence does after its model call.
        self._maybe_reset_model(scored)
        return scored
