"""Pipecat's pipeline worker, shaped for one connection: fewer tasks, hops and queues per session.

``SessionWorker`` is a ``PipelineWorker`` whose observers sit behind one ``ObserverHub`` and whose
``SessionPipeline`` is flattened into the worker's own (``gateway.pipeline.pipecatcompat``); a
``SessionPipeline`` (``gateway.pipeline.pipecatcompat``) sets its processors up one after another
instead of a task each. What a session's pipeline holds is assembled in ``gateway.pipeline.builder``.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any, Literal

from pipecat.observers.base_observer import BaseObserver, FrameProcessed, FramePushed, ProcessorSetUp
from pipecat.observers.user_bot_latency_observer import UserBotLatencyObserver
from pipecat.pipeline.base_pipeline import BasePipeline
from pipecat.pipeline.worker import PipelineWorker
from pipecat.pipeline.worker_observer import WorkerObserver
from pipecat.processors.frameworks.rtvi.observer import RTVIObserver
from pipecat.utils.asyncio.task_manager import BaseTaskManager

from gateway.logging import get_logger
from gateway.pipeline.observers import SessionMetricsObserver
from gateway.pipeline.pipecatcompat import (
    SessionPipeline,
    flatten_worker_pipeline,
    replace_worker_observer,
    worker_observers,
)
from gateway.pipeline.searchahead import SearchAhead

log = get_logger(__name__)

_Event = Literal["process", "push", "setup", "started"]
_HOOKS: dict[_Event, str] = {
    "process": "on_process_frame",
    "push": "on_push_frame",
    "setup": "on_processor_setup",
    "started": "on_pipeline_started",
}


def _handles(observer: BaseObserver, hook: str) -> bool:
    return getattr(type(observer), hook) is not getattr(BaseObserver, hook)


class ObserverHub(WorkerObserver):
    """A session's observers behind one queue and one task, sent only the events they handle.

    Pipecat's ``WorkerObserver`` gives every observer a queue and a task of its own and queues every
    frame *processed* and every frame *pushed* to each of them, though none of a session's observers
    (RTVI's, ours, Pipecat's turn tracker) handles ``on_process_frame``: six queue puts and six task
    wake-ups for every frame at every processor, about a sixth of the event loop's time in a
    profile of concurrent turns. Here a push goes once into one queue and an event nobody handles is
    not queued at all. Each observer still sees its events in pipeline order, off the pipeline's own
    tasks, as before; one that raises is logged and the others carry on.

    Observers of the ``inline`` types are instead told of a push on the pushing task, as it happens:
    RTVI's observer only turns frames into client messages (``gateway.pipeline.rtvi``), and a message that
    waits for the hub's task reaches the client after whatever else the loop had queued meanwhile.
    The hub's task is started only once some observer needs the queue: a text session's observers
    (RTVI's and the metrics one) are all inline, so it has neither the task nor a queued event.
    """

    def __init__(
        self, *, observers: list[BaseObserver] | None = None, inline: tuple[type[BaseObserver], ...] = ()
    ) -> None:
        super().__init__(observers=observers)
        self._hub: list[BaseObserver] = list(observers or [])
        self._inline_types = inline
        self._inline: list[BaseObserver] = []
        self._listeners: dict[_Event, list[BaseObserver]] = {}
        self._every_push: list[BaseObserver] = []
        self._seen: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()
        self._queue: asyncio.Queue[tuple[_Event, Any]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._set_up = False
        self._index()

    @classmethod
    def replacing(cls, worker: PipelineWorker, inline: tuple[type[BaseObserver], ...] = ()) -> ObserverHub:
        """A hub for the observers ``PipelineWorker`` handed its own ``WorkerObserver`` (RTVI's too)."""
        return cls(observers=worker_observers(worker), inline=inline)

    def _index(self) -> None:
        self._listeners = {
            event: [o for o in self._hub if _handles(o, hook)] for event, hook in _HOOKS.items()
        }
        self._inline = [o for o in self._listeners["push"] if isinstance(o, self._inline_types)]
        self._listeners["push"] = [o for o in self._listeners["push"] if o not in self._inline]
        self._every_push = [o for o in self._listeners["push"] if o.observe_every_push]
        if self._set_up and self._task is None and any(self._listeners.values()):
            self._task = self.create_task(self._deliver(), name="observer_hub")

    def add_observer(self, observer: BaseObserver) -> None:
        self._hub.append(observer)
        self._index()

    async def remove_observer(self, observer: BaseObserver) -> None:
        if observer not in self._hub:
            return
        self._hub.remove(observer)
        self._index()
        if self._set_up:
            await observer.cleanup()

    async def setup(self, task_manager: BaseTaskManager) -> None:
        await BaseObserver.setup(self, task_manager)
        self._set_up = True
        if any(self._listeners.values()):
            self._task = self.create_task(self._deliver(), name="observer_hub")
        for observer in list(self._hub):
            await observer.setup(task_manager)

    async def cleanup(self) -> None:
        await BaseObserver.cleanup(self)
        if self._task is not None:
            await self.cancel_task(self._task)
            self._task = None
        for observer in list(self._hub):
            try:
                await observer.cleanup()
            except Exception:
                log.exception("observer.cleanup_failed", observer=type(observer).__name__)

    async def on_pipeline_started(self) -> None:
        if self._listeners["started"]:
            self._queue.put_nowait(("started", None))

    async def on_process_frame(self, data: FrameProcessed) -> None:
        if self._listeners["process"]:
            self._queue.put_nowait(("process", data))

    async def on_processor_setup(self, data: ProcessorSetUp) -> None:
        if self._listeners["setup"]:
            self._queue.put_nowait(("setup", data))

    async def on_push_frame(self, data: FramePushed) -> None:
        frame = data.frame
        data.first_push = frame.id not in self._seen
        if data.first_push:
            self._seen[frame.id] = frame
        for observer in self._inline:
            if data.first_push or observer.observe_every_push:
                await _notify(observer, "push", data)
        if data.first_push:
            if self._listeners["push"]:
                self._queue.put_nowait(("push", data))
        elif self._every_push:
            self._queue.put_nowait(("push", data))

    async def _deliver(self) -> None:
        while True:
            event, data = await self._queue.get()
            for observer in self._listeners[event]:
                if event == "push" and not data.first_push and not observer.observe_every_push:
                    continue
                await _notify(observer, event, data)


async def _notify(observer: BaseObserver, event: _Event, data: Any) -> None:
    """One event to one observer; an observer that raises is logged, never the pipeline's problem."""
    try:
        if event == "push":
            await observer.on_push_frame(data)
        elif event == "process":
            await observer.on_process_frame(data)
        elif event == "setup":
            await observer.on_processor_setup(data)
        else:
            await observer.on_pipeline_started()
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("observer.failed", observer=type(observer).__name__)


# Observers a session's hub calls on the pushing task (``ObserverHub``): they only read the frame and
# write a client message (RTVI's), update a metric (ours, Pipecat's user→bot latency) or start a task
# (a search ahead), never wait. A voice session's frames are mostly 20 ms of audio: queued, each would
# wake the hub's task once more.
INLINE_OBSERVERS: tuple[type[BaseObserver], ...] = (
    RTVIObserver,
    SessionMetricsObserver,
    SearchAhead,
    UserBotLatencyObserver,
)


class SessionWorker(PipelineWorker):
    """``PipelineWorker`` with the session's observers behind one ``ObserverHub``; a
    ``SessionPipeline`` it runs is flattened into the worker's own (``gateway.pipeline.pipecatcompat``), so
    frames don't cross the nested pipeline's three pass-through processors."""

    def __init__(self, pipeline: BasePipeline, **kwargs: Any) -> None:
        super().__init__(pipeline, **kwargs)
        replace_worker_observer(self, ObserverHub.replacing(self, inline=INLINE_OBSERVERS))
        if isinstance(pipeline, SessionPipeline):
            flatten_worker_pipeline(self, pipeline, SessionPipeline)
