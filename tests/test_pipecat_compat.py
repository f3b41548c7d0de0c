"""Contract of the seam to Pipecat's private parts (``gateway/pipeline/pipecatcompat.py``).

These fail loudly when a Pipecat upgrade changes what the gateway relies on: ``BaseWorker.__init__``
still discovers its handlers through the two module-level collectors ``cache_worker_handlers``
replaces, and the per-class lookup finds exactly what Pipecat's own collectors find — the same keys,
the same bound methods, the same refusal of duplicates — for workers with and without handlers;
``PipelineWorker`` still wraps the pipeline it is given as ``[_source, _rtvi, pipeline, _sink]`` in
``_pipeline``, and the flattened pipeline holds the same processors, linked in the same order, and
runs frames through them to the end.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
from collections.abc import Callable
from typing import Any

import pytest
from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3
from pipecat.audio.vad.silero import SileroOnnxModel, SileroVADAnalyzer
from pipecat.frames.frames import EndFrame, Frame, TextFrame
from pipecat.observers.base_observer import BaseObserver
from pipecat.pipeline import job_decorator, worker_ready_decorator
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineWorker
from pipecat.pipeline.worker_observer import WorkerObserver
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers import base_worker
from pipecat.workers.base_worker import BaseWorker
from pipecat.workers.runner import WorkerRunner

from gateway.pipeline import pipecatcompat
from gateway.pipeline.pipecatcompat import (
    ORIGINAL_COLLECTORS,
    SessionPipeline,
    cache_worker_handlers,
    flatten_worker_pipeline,
)
from gateway.pipeline.worker import SessionWorker

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]
# Pipecat's decorators are untyped; typed here so the handlers below stay typed.
job: Callable[..., Decorator] = job_decorator.job
worker_ready: Callable[..., Decorator] = worker_ready_decorator.worker_ready


class Helper(PipelineWorker):
    @job(name="research")
    async def on_research(self, message: Any) -> None: ...

    @worker_ready(name="greeter")
    async def on_greeter_ready(self, data: Any) -> None: ...

    @job(name="write", sequential=True)
    async def on_write(self, message: Any) -> None: ...


class Overriding(Helper):
    # Redefined without the decorator: Pipecat takes the first definition along the MRO, unmarked.
    async def on_research(self, message: Any) -> None: ...

    @job(name="summarise")
    async def on_summary(self, message: Any) -> None: ...


class Duplicate(PipelineWorker):
    @job(name="same")
    async def first(self, message: Any) -> None: ...

    @job(name="same")
    async def second(self, message: Any) -> None: ...


def _worker(cls: type[PipelineWorker]) -> PipelineWorker:
    kwargs: dict[str, Any] = {"enable_rtvi": False, "idle_timeout_secs": None, "check_dangling_tasks": False}
    return cls(Pipeline([FrameProcessor()]), **kwargs)


def test_base_worker_still_discovers_handlers_through_the_collectors_we_replace() -> None:
    source = inspect.getsource(BaseWorker.__init__)
    for name in ORIGINAL_COLLECTORS:
        assert f"{name}(self)" in source, f"BaseWorker.__init__ no longer calls {name}(self)"
        assert hasattr(base_worker, name), f"pipecat.workers.base_worker has no {name}"


@pytest.mark.parametrize("cls", [Helper, Overriding, PipelineWorker, SessionWorker])
@pytest.mark.parametrize("name", list(ORIGINAL_COLLECTORS))
def test_per_class_lookup_finds_what_pipecat_finds(cls: type[PipelineWorker], name: str) -> None:
    original, key_of = ORIGINAL_COLLECTORS[name]
    worker = _worker(cls)
    expected = original(worker)
    cached = pipecatcompat._per_class(key_of)
    for _ in range(2):  # computed, then from the cache
        assert cached(worker) == expected
    other = _worker(cls)
    assert cached(other) == original(other)
    assert all(getattr(method, "__self__", None) is other for method in cached(other).values())


def test_the_fixture_workers_have_the_handlers_the_comparison_needs() -> None:
    jobs, ready = (original for original, _ in ORIGINAL_COLLECTORS.values())
    assert set(jobs(_worker(Helper))) == {"research", "write"}
    assert set(ready(_worker(Helper))) == {"greeter"}
    assert set(jobs(_worker(Overriding))) == {"write", "summarise"}


@pytest.mark.parametrize("name", list(ORIGINAL_COLLECTORS)[:1])
def test_duplicate_handlers_are_refused_as_pipecat_refuses_them(name: str) -> None:
    original, key_of = ORIGINAL_COLLECTORS[name]
    with pytest.raises(ValueError, match="same"):
        original(object.__new__(Duplicate))
    with pytest.raises(ValueError, match="same"):
        pipecatcompat._per_class(key_of)(object.__new__(Duplicate))


def test_installed_workers_get_pipecats_handlers_and_installing_twice_changes_nothing() -> None:
    cache_worker_handlers()
    installed = [getattr(base_worker, name) for name in ORIGINAL_COLLECTORS]
    cache_worker_handlers()
    assert [getattr(base_worker, name) for name in ORIGINAL_COLLECTORS] == installed
    worker = _worker(Helper)
    jobs, ready = (original for original, _ in ORIGINAL_COLLECTORS.values())
    assert worker._job_handlers == jobs(worker)
    assert worker._worker_ready_handlers == ready(worker)


class Recording(FrameProcessor):
    def __init__(self, seen: list[tuple[str, str]]) -> None:
        super().__init__()
        self._seen = seen

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, TextFrame):
            self._seen.append((self.name, frame.text))
        await self.push_frame(frame, direction)


def test_pipeline_worker_still_wraps_the_pipeline_it_is_given_between_its_source_and_sink() -> None:
    given = SessionPipeline([FrameProcessor(), FrameProcessor()])
    worker = PipelineWorker(given, idle_timeout_secs=None, check_dangling_tasks=False)

    assert worker._pipeline.processors == [worker._source, worker._rtvi, given, worker._sink]
    assert given.processors[0] is not given.processors[1] and len(given.processors) == 4  # own source, sink


@pytest.mark.parametrize("rtvi", [True, False])
def test_a_session_worker_runs_one_flat_pipeline_of_the_same_processors(rtvi: bool) -> None:
    inner = [FrameProcessor(), FrameProcessor()]
    worker = SessionWorker(
        SessionPipeline(inner), enable_rtvi=rtvi, idle_timeout_secs=None, check_dangling_tasks=False
    )

    middle = [worker._rtvi] if rtvi else []
    assert worker.pipeline.processors == [worker._source, *middle, *inner, worker._sink]
    assert isinstance(worker.pipeline, SessionPipeline)
    chain = worker.pipeline.processors
    assert all(a._next is b and b._prev is a for a, b in itertools.pairwise(chain))


async def test_frames_cross_the_flattened_pipeline_in_order_and_it_ends() -> None:
    seen: list[tuple[str, str]] = []
    first, second = Recording(seen), Recording(seen)
    worker = SessionWorker(
        SessionPipeline([first, second]),
        enable_rtvi=False,
        idle_timeout_secs=None,
        check_dangling_tasks=False,
    )
    runner = WorkerRunner(handle_sigint=False, check_dangling_tasks=False)
    await runner.add_workers(worker)
    await worker.queue_frames([TextFrame("one"), TextFrame("two"), EndFrame()])
    await asyncio.wait_for(runner.run(), 10)

    for processor in (first, second):
        assert [text for name, text in seen if name == processor.name] == ["one", "two"]


def test_a_worker_of_another_shape_is_left_as_pipecat_built_it() -> None:
    worker = PipelineWorker(Pipeline([FrameProcessor()]), idle_timeout_secs=None, check_dangling_tasks=False)
    before = worker._pipeline

    assert not flatten_worker_pipeline(worker, SessionPipeline([FrameProcessor()]), SessionPipeline)
    assert worker._pipeline is before


# --- direct mode, the worker's observers, sequential set-up, shared voice models ---------------------------


class _Recorder(FrameProcessor):
    """Passes frames on, noting the task each text frame was handled on."""

    def __init__(self) -> None:
        super().__init__()
        self.tasks: list[asyncio.Task[Any] | None] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, TextFrame):
            self.tasks.append(asyncio.current_task())
        await self.push_frame(frame, direction)


async def test_enable_direct_mode_is_pipecats_direct_mode_frames_run_on_the_pushing_task() -> None:
    assert FrameProcessor(enable_direct_mode=True)._enable_direct_mode is True, (
        "FrameProcessor no longer keeps direct mode in _enable_direct_mode: "
        "fix pipecatcompat.enable_direct_mode"
    )
    pusher, direct, queued = _Recorder(), _Recorder(), _Recorder()
    pipecatcompat.enable_direct_mode(direct)
    worker = PipelineWorker(
        Pipeline([pusher, direct, queued]),
        enable_rtvi=False,
        idle_timeout_secs=None,
        check_dangling_tasks=False,
    )
    runner = WorkerRunner(handle_sigint=False, check_dangling_tasks=False)
    await runner.add_workers(worker)
    run = asyncio.ensure_future(runner.run())
    await worker.queue_frames([TextFrame("hello"), EndFrame()])
    await asyncio.wait_for(run, 10)
    assert direct.tasks == pusher.tasks, "a direct-mode processor must run on the task that pushed to it"
    assert queued.tasks and queued.tasks[0] is not pusher.tasks[0], (
        "without direct mode it has a task of its own"
    )


def test_a_workers_observers_are_where_the_seam_finds_them() -> None:
    observer = BaseObserver()
    worker = PipelineWorker(Pipeline([FrameProcessor()]), observers=[observer], idle_timeout_secs=None)
    assert isinstance(pipecatcompat.worker_observer(worker), WorkerObserver)
    assert observer in pipecatcompat.worker_observers(worker)
    replacement = WorkerObserver(observers=[observer])
    pipecatcompat.replace_worker_observer(worker, replacement)
    assert pipecatcompat.worker_observer(worker) is replacement


def test_the_pipeline_set_up_hooks_session_pipeline_overrides_are_still_pipecats() -> None:
    for name, params in (
        ("_setup_processors", ["processors", "setup"]),
        ("_cleanup_processors", ["processors"]),
    ):
        method = getattr(Pipeline, name, None)
        assert method is not None, f"Pipeline.{name} is gone: SessionPipeline overrides it"
        assert list(inspect.signature(method).parameters)[1:] == params, (
            f"Pipeline.{name} changed its signature"
        )
    assert callable(getattr(Pipeline, "_setup_processor", None)), "Pipeline._setup_processor is gone"
    for name in ("_setup_started", "_setup_finished"):
        assert callable(getattr(FrameProcessor, name, None)), f"FrameProcessor.{name} is gone"


def _instance_attributes(init: Callable[..., Any]) -> set[str]:
    """The ``self.<name> = …`` attributes a constructor assigns (read from its source)."""
    import ast
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(init)))
    return {
        target.attr
        for node in ast.walk(tree)
        if isinstance(node, (ast.Assign, ast.AnnAssign))
        for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(target, ast.Attribute)
        and isinstance(target.value, ast.Name)
        and target.value.id == "self"
    }


@pytest.mark.parametrize(
    ("stock", "ours"),
    [
        (SileroOnnxModel.__init__, pipecatcompat._SharedSessionSileroModel.__init__),
        (SileroVADAnalyzer.__init__, pipecatcompat.SharedSileroVADAnalyzer.__init__),
        (LocalSmartTurnAnalyzerV3.__init__, pipecatcompat.SharedSmartTurnAnalyzer.__init__),
    ],
    ids=["silero-model", "silero-vad", "smart-turn"],
)
def test_the_shared_voice_models_set_every_attribute_pipecats_constructors_set(
    stock: Callable[..., Any], ours: Callable[..., Any]
) -> None:
    """They skip Pipecat's ``__init__`` (it opens an ONNX session): an attribute Pipecat's sets that
    ours does not would be missing at the first frame."""
    missing = _instance_attributes(stock) - _instance_attributes(ours)
    assert not missing, f"{stock.__qualname__} now sets {sorted(missing)}: mirror them in pipecatcompat"


def test_our_memory_service_sets_every_attribute_pipecats_constructor_sets() -> None:
    """``GatewayMemoryService`` skips ``Mem0MemoryService.__init__`` (it builds a mem0 client per
    instance) and sets what it would; Pipecat's ``get_memories``, ``_enhance_context_with_memories``
    and friends read those attributes."""
    from pipecat.services.mem0.memory import Mem0MemoryService

    from memory.service import GatewayMemoryService

    missing = _instance_attributes(Mem0MemoryService.__init__) - _instance_attributes(
        GatewayMemoryService.__init__
    )
    assert not missing, (
        f"Mem0MemoryService.__init__ now sets {sorted(missing)}: set them in memory/service.py"
    )


@pytest.mark.parametrize("rate", [8000, 16000])
def test_a_batched_silero_run_leaves_each_stream_as_its_own_model_call_would(rate: int) -> None:
    """``score_silero_batch`` reads and writes ``SileroOnnxModel``'s ``_state``, ``_context``,
    ``_last_sr`` and ``_last_batch_size``, and repeats ``__call__``'s resets: three streams scored
    together, one of them reset mid-way (as ``_maybe_reset_model`` does), score as each alone."""
    from importlib.resources import files

    import numpy as np

    from tests.speech import espeak

    samples = pipecatcompat.silero_window_samples(rate)
    speech = np.frombuffer(espeak("Three streams of speech, scored together.", rate), np.int16)
    windows = len(speech) // samples
    audio = speech[: windows * samples].astype(np.float32).reshape(windows, samples) / 32768.0
    streams = [np.roll(audio, shift, axis=0) for shift in (0, 3, 7)]  # each stream its own audio
    path = str(files("pipecat.audio.vad.data").joinpath("silero_vad.onnx"))
    stock = [SileroOnnxModel(path) for _ in streams]
    session = stock[0].session
    ours = [pipecatcompat._SharedSessionSileroModel(session) for _ in streams]
    for w in range(windows):
        if w == windows // 2:
            stock[1].reset_states()
            ours[1].reset_states()
        expected = [float(model(stream[w], rate)[0][0]) for model, stream in zip(stock, streams, strict=True)]
        batch = np.stack([stream[w] for stream in streams])
        got = pipecatcompat.score_silero_batch(session, ours, batch, rate).tolist()
        assert got == pytest.approx(expected, abs=1e-5), f"window {w}"
    for model in ours:
        assert (model._last_sr, model._last_batch_size) == (rate, 1)
        assert model._state.shape == (2, 1, 128)
