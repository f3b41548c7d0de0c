"""A session's observers sit behind one ``ObserverHub``: each still gets every event it handles, in order."""

from __future__ import annotations

import asyncio

from pipecat.frames.frames import EndFrame, Frame, TextFrame
from pipecat.observers.base_observer import BaseObserver, FrameProcessed, FramePushed
from pipecat.pipeline.pipeline import Pipeline
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

from gateway.pipeline.pipecatcompat import replace_worker_observer, worker_observer
from gateway.pipeline.worker import ObserverHub, SessionWorker


class PassThrough(FrameProcessor):
    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)


class Recorder(BaseObserver):
    def __init__(self, *, every_push: bool, processed: bool) -> None:
        super().__init__(observe_every_push=every_push)
        self.pushes: list[tuple[str, bool]] = []
        self.processed: list[str] = []
        self._wants_processed = processed

    async def on_push_frame(self, data: FramePushed) -> None:
        if isinstance(data.frame, TextFrame):
            self.pushes.append((data.frame.text, data.first_push))

    async def on_process_frame(self, data: FrameProcessed) -> None:
        if self._wants_processed and isinstance(data.frame, TextFrame):
            self.processed.append(data.frame.text)


class PushOnly(BaseObserver):
    """Handles pushes only, as RTVI's observer and the gateway's metrics observer do."""

    def __init__(self) -> None:
        super().__init__(observe_every_push=False)
        self.texts: list[str] = []

    async def on_push_frame(self, data: FramePushed) -> None:
        if isinstance(data.frame, TextFrame):
            self.texts.append(data.frame.text)


async def _run(observers: list[BaseObserver]) -> SessionWorker:
    worker = SessionWorker(
        Pipeline([PassThrough(), PassThrough()]),
        observers=observers,
        enable_rtvi=False,
        enable_turn_tracking=False,
        idle_timeout_secs=None,
        check_dangling_tasks=False,
    )
    runner = WorkerRunner(handle_sigint=False, check_dangling_tasks=False)
    await runner.add_workers(worker)
    await worker.queue_frames([TextFrame("one"), TextFrame("two"), EndFrame()])
    await asyncio.wait_for(runner.run(), 10)
    return worker


async def test_every_observer_gets_the_events_it_handles_in_pipeline_order() -> None:
    first = Recorder(every_push=False, processed=True)
    every = Recorder(every_push=True, processed=False)
    push_only = PushOnly()

    await _run([first, every, push_only])

    assert first.pushes == [("one", True), ("two", True)]
    # The hub queues on_process_frame only for observers that handle it; this one does.
    assert first.processed[0] == "one" and first.processed.count("one") == first.processed.count("two") >= 2
    for text in ("one", "two"):
        hops = [first_push for seen, first_push in every.pushes if seen == text]
        assert len(hops) >= 3 and hops == [True] + [False] * (len(hops) - 1)
    assert push_only.texts == ["one", "two"]


async def test_an_observer_that_raises_does_not_silence_the_others() -> None:
    class Broken(BaseObserver):
        async def on_push_frame(self, data: FramePushed) -> None:
            raise RuntimeError("observer bug")

    healthy = PushOnly()
    await _run([Broken(), healthy])

    assert healthy.texts == ["one", "two"]


def test_the_hub_replaces_pipecats_per_observer_proxies() -> None:
    worker = SessionWorker(Pipeline([PassThrough()]), observers=[PushOnly()], idle_timeout_secs=None)

    assert isinstance(worker_observer(worker), ObserverHub)


async def test_an_inline_observer_sees_a_push_before_the_push_returns() -> None:
    """RTVI's observer is called on the pushing task: its message is out before the frame moves on."""
    inline, queued = PushOnly(), Recorder(every_push=False, processed=False)
    hub = ObserverHub(observers=[inline, queued], inline=(PushOnly,))
    source, destination = PassThrough(), PassThrough()
    for text in ("one", "two"):
        await hub.on_push_frame(
            FramePushed(
                source=source,
                destination=destination,
                frame=TextFrame(text),
                direction=FrameDirection.DOWNSTREAM,
                timestamp=0,
            )
        )

    assert inline.texts == ["one", "two"]
    assert queued.pushes == []  # still waiting in the hub's queue for its task


async def test_an_inline_observer_that_raises_does_not_break_the_pipeline() -> None:
    class BrokenInline(PushOnly):
        async def on_push_frame(self, data: FramePushed) -> None:
            raise RuntimeError("observer bug")

    broken, healthy = BrokenInline(), PushOnly()
    worker = SessionWorker(
        Pipeline([PassThrough(), PassThrough()]),
        observers=[broken, healthy],
        enable_rtvi=False,
        enable_turn_tracking=False,
        idle_timeout_secs=None,
        check_dangling_tasks=False,
    )
    replace_worker_observer(worker, ObserverHub(observers=[broken, healthy], inline=(BrokenInline,)))
    runner = WorkerRunner(handle_sigint=False, check_dangling_tasks=False)
    await runner.add_workers(worker)
    await worker.queue_frames([TextFrame("one"), TextFrame("two"), EndFrame()])
    await asyncio.wait_for(runner.run(), 10)

    assert healthy.texts == ["one", "two"]
