"""One WebSocket connection = one Session = one Pipecat pipeline worker.

The session owns its pipeline from accept to close: it builds the processors (cheap, shared parts are
passed in), greets the caller, runs until the client leaves or the server drains, stores what is left
to store, and reports its outcome. ``close()`` is idempotent and used by every teardown path.

Pipeline (text mode)::

    transport.input ─▶ [RTVI, added by the worker] ─▶ user aggregator ─▶ GatewayMemoryService
        ─▶ LLM ─▶ TextOnlyTextProcessor ─▶ transport.output ─▶ assistant aggregator

``TextOnlyTextProcessor`` (Pipecat's ``LLMTextProcessor``, marking text ``skip_tts`` first) turns LLM
tokens into sentence-sized ``AggregatedTextFrame``s; with ``skip_tts`` set (text mode) RTVI then emits
``bot-output`` for them, which is what web clients display. RTVI's own messages are written as the
frames they report on are pushed, or queued to the transport output when the socket is backed up
(``gateway.pipeline.rtvi``), and the greeting is pushed from the LLM service, like a reply.

A session is usually assembled and started at ``/start``, before its client connects (``ws=None``):
``attach()`` hands it the socket on connect, and ``on_client_connected`` (greeting, metrics) fires then.

Voice mode (the tenant's optional ``stt`` / ``tts``, built by ``gateway.pipeline.voice``) adds the STT
after the transport input (with a VAD on the user aggregator) and puts the TTS where ``TextOnlyTextProcessor``
stands::

    transport.input ─▶ [RTVI] ─▶ [STT] ─▶ user aggregator (+VAD) ─▶ GatewayMemoryService ─▶ LLM
        ─▶ [TTS] ─▶ transport.output ─▶ assistant aggregator
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any, Literal

from aiohttp import WSCloseCode, web
from openai import DefaultAsyncHttpxClient
from pipecat.frames.frames import LLMFullResponseEndFrame, LLMFullResponseStartFrame, LLMTextFrame
from pipecat.observers.base_observer import BaseObserver, FrameProcessed, FramePushed, ProcessorSetUp
from pipecat.pipeline.base_pipeline import BasePipeline
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.pipeline.worker_observer import WorkerObserver
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.processors.frame_processor import FrameProcessor, FrameProcessorSetup
from pipecat.processors.frameworks.rtvi.observer import RTVIObserver
from pipecat.services.mem0.memory import Mem0MemoryService
from pipecat.turns.user_start.transcription_user_turn_start_strategy import TranscriptionUserTurnStartStrategy
from pipecat.turns.user_stop.speech_timeout_user_turn_stop_strategy import SpeechTimeoutUserTurnStopStrategy
from pipecat.turns.user_turn_strategies import UserTurnStrategies
from pipecat.utils.asyncio.task_manager import BaseTaskManager
from pipecat.workers.runner import WorkerRunner

from gateway import closecodes
from gateway.logging import get_logger
from gateway.metrics import GatewayMetrics
from gateway.pipeline import greeting as greetings
from gateway.pipeline.llm import (
    LLMNotConfigured,
    OpenAIClients,
    TextOnlyTextProcessor,
    create_llm,
    resolve_endpoint,
)
from gateway.pipeline.observers import SessionMetricsObserver, TurnEnd
from gateway.pipeline.pipecatcompat import flatten_worker_pipeline
from gateway.pipeline.rtvi import DirectRTVIProcessor
from gateway.pipeline.serializers import create_serializer
from gateway.pipeline.transport import AiohttpWebsocketParams, AiohttpWebsocketTransport
from gateway.pipeline.voice import VoiceModels, build_voice
from gateway.settings import Settings
from gateway.tenants import TenantConfig
from gateway.tokens import SessionClaims
from memory.backends import TenantMemory
from memory.scope import MemoryScope
from memory.service import GatewayMemoryService

log = get_logger(__name__)

# Written after the greeting's whole text went out as bot-llm-text (what Pipecat's Python RTVI client
# reads); the sentence-wise bot-output messages (what web clients display) follow within the same turn.
_GREETING_WRITTEN = frozenset({"bot-llm-stopped"})


@dataclass(frozen=True)
class SessionDeps:
    """Per-process objects every session uses (built once, passed in)."""

    settings: Settings
    metrics: GatewayMetrics
    http_client: DefaultAsyncHttpxClient
    openai_clients: OpenAIClients
    # Voice's ONNX sessions, opened on the first voice session and shared by all (gateway.pipeline.voice).
    voice_models: VoiceModels = field(default_factory=VoiceModels)


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
    def replacing(
        cls, worker_observer: WorkerObserver, inline: tuple[type[BaseObserver], ...] = ()
    ) -> ObserverHub:
        """A hub for the observers ``PipelineWorker`` handed its own ``WorkerObserver`` (RTVI's too)."""
        return cls(observers=list(worker_observer._observers), inline=inline)

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


# Observers a session's hub calls on the pushing task (``ObserverHub``): they only read the frame and
# write a client message (RTVI's) or update a metric (ours), never wait.
INLINE_OBSERVERS: tuple[type[BaseObserver], ...] = (RTVIObserver, SessionMetricsObserver)


class SessionWorker(PipelineWorker):
    """``PipelineWorker`` with the session's observers behind one ``ObserverHub``; a
    ``SessionPipeline`` it runs is flattened into the worker's own (``gateway.pipeline.pipecatcompat``), so
    frames don't cross the nested pipeline's three pass-through processors."""

    def __init__(self, pipeline: BasePipeline, **kwargs: Any) -> None:
        super().__init__(pipeline, **kwargs)
        self._observer = ObserverHub.replacing(self._observer, inline=INLINE_OBSERVERS)
        if isinstance(pipeline, SessionPipeline):
            flatten_worker_pipeline(self, pipeline, SessionPipeline)


def _text_output() -> list[FrameProcessor]:
    """Text mode's stand-in for a TTS: mark text not-to-be-spoken, then aggregate it into sentences.

    In Pipecat's direct mode: it never waits on anything, so a frame goes straight through it on
    the pushing task instead of through two more queues and two more tasks per session.
    """
    return [TextOnlyTextProcessor(enable_direct_mode=True)]


def _run_inline(*processors: FrameProcessor) -> None:
    """Pipecat's direct mode for processors built by ``LLMContextAggregatorPair`` (which takes no
    processor arguments): a frame is handled on the pushing task instead of through two queues and
    two tasks of the processor's own. For processors that only update the context and pass frames on:
    the assistant aggregator, and the user aggregator in text mode (with voice it runs turn-taking
    timers around the VAD and keeps its queues). Must run before the pipeline is set up."""
    for processor in processors:
        processor._enable_direct_mode = True


def _outcome(close_code: int | None, failed: bool) -> str:
    if failed or close_code == closecodes.INTERNAL_ERROR:
        return "error"
    if close_code == closecodes.GOING_AWAY:
        return "shutdown"
    if close_code == closecodes.IDLE_TIMEOUT:
        return "idle_timeout"
    if close_code in (
        closecodes.INVALID_PAYLOAD,
        closecodes.MESSAGE_TOO_BIG,
        closecodes.POLICY_VIOLATION,
        1002,
    ):
        return "client_error"
    return "completed"


class Session:
    def __init__(
        self,
        *,
        ws: web.WebSocketResponse | None,
        claims: SessionClaims,
        tenant: TenantConfig,
        backend: TenantMemory,
        deps: SessionDeps,
        serializer: str,
        prefetch: asyncio.Task[Any] | None,
        accepted_at: float | None,
        abort: Callable[[], None] = lambda: None,
        write_room: Callable[[], int] = lambda: 0,
    ) -> None:
        """``ws=None`` (with ``accepted_at=None``) assembles a session ahead of its client, at
        ``/start``: ``run()`` starts the pipeline at once, ``attach()`` hands it the socket later."""
        self.id = claims.session_id
        self.tenant = tenant
        self._deps = deps
        self._backend = backend
        self._prefetch = prefetch
        self._accepted_at = accepted_at or 0.0
        self._connected = False
        self._prestarted = ws is None
        self._started_at = perf_counter()
        self._greeting: greetings.Greeting | None = None
        self._greeting_queued = False
        self._greeted = False
        self._farewell: asyncio.Event | None = None
        self._closed = False
        self._serializer = serializer
        # What the client typed, as received: RTVI handles send-text on a task of its own, which a
        # disconnect right after it cancels before the text reaches the context (gateway.pipeline.transport).
        self._typed: deque[str] = deque(maxlen=32)
        self.scope = MemoryScope(claims.tenant, claims.user_id, claims.agent_id, claims.run_id)

        metrics = deps.metrics
        name = tenant.name
        ws_in = metrics.ws_messages_total.labels(name, "in")
        ws_out = metrics.ws_messages_total.labels(name, "out")
        bad_frames = metrics.rejections_total.labels(name, "undecodable_frame")
        settings = deps.settings
        voice = build_voice(tenant, deps.voice_models, deps.http_client)

        self.transport = AiohttpWebsocketTransport(
            ws,
            AiohttpWebsocketParams(
                serializer=create_serializer(serializer),
                max_bad_frames=settings.max_bad_frames,
                send_timeout=settings.send_timeout_secs,
                idle_timeout=settings.idle_timeout_secs,
                attach_timeout=settings.prestart_secs or 10.0,
                audio_in_enabled=voice.audio_in,
                audio_out_enabled=voice.audio_out,
            ),
            count_in=ws_in.inc,
            count_out=ws_out.inc,
            on_bad_frame=bad_frames.inc,
            on_reject=self._on_reject,
            abort=abort,
            write_room=write_room,
            on_message=self._on_message_sent,
            on_client_message=self._on_client_message,
        )
        self.context = LLMContext()
        # Text mode needs no turn model; the default stop strategy would build an ONNX session per
        # aggregator (≈45 ms, PITFALLS.md).
        turn_strategies = UserTurnStrategies(
            start=[TranscriptionUserTurnStartStrategy()], stop=[SpeechTimeoutUserTurnStopStrategy()]
        )
        aggregators = LLMContextAggregatorPair(
            self.context,
            user_params=LLMUserAggregatorParams(
                user_turn_strategies=voice.turn_strategies or turn_strategies, vad_analyzer=voice.vad_analyzer
            ),
        )
        _run_inline(aggregators.assistant(), *([] if voice.audio_in else [aggregators.user()]))
        mem = tenant.memory
        self.memory = GatewayMemoryService(
            backend=backend,
            scope=self.scope,
            params=Mem0MemoryService.InputParams(**mem.params.model_dump()),
            search_timeout=mem.search_timeout_secs,
            session_id=self.id,
        )
        # The reply is made durable as soon as the aggregator has added it to the context, not with the
        # next user turn: a process killed between turns would otherwise lose the last reply.
        aggregators.assistant().add_event_handler("on_assistant_turn_stopped", self._on_reply)
        endpoint = resolve_endpoint(tenant, settings)
        self._llm = llm = (
            create_llm(endpoint, tenant.system_prompt, deps.openai_clients)
            if endpoint is not None
            else LLMNotConfigured()
        )
        pipeline = SessionPipeline(
            [
                self.transport.input(),
                *voice.input_processors(),
                aggregators.user(),
                self.memory,
                llm,
                *([voice.tts] if voice.tts is not None else _text_output()),
                self.transport.output(),
                aggregators.assistant(),
            ]
        )
        services = {llm.name: "llm"} if endpoint is not None else {}
        services.update(
            {p.name: kind for kind, p in (("stt", voice.stt), ("tts", voice.tts)) if p is not None}
        )
        # Voice in and out: Pipecat's own VAD-stop → bot-speech observer; otherwise turn end → first text.
        turn_end: TurnEnd = ("pipecat" if voice.audio_out else "spoken") if voice.audio_in else "typed"
        observer = SessionMetricsObserver(metrics=metrics, tenant=name, services=services, turn_end=turn_end)
        observers: list[BaseObserver] = [observer]
        if turn_end == "pipecat":
            observers.append(observer.voice_latency_observer())
        self.worker = SessionWorker(
            pipeline,
            observers=observers,
            params=PipelineParams(
                enable_metrics=True,
                enable_usage_metrics=True,
                audio_in_sample_rate=voice.audio_in_sample_rate,
                audio_out_sample_rate=voice.audio_out_sample_rate,
            ),
            idle_timeout_secs=None,
            # Direct mode too: it answers client messages from a task of its own and only passes
            # pipeline frames on.
            rtvi_processor=DirectRTVIProcessor(output=self.transport.output(), enable_direct_mode=True),
            # Pipecat's turn tracking feeds its tracing and audio recording, neither used here; it
            # would be one more observer on every frame.
            enable_turn_tracking=False,
            check_dangling_tasks=False,
            conversation_id=self.id,
        )
        self.runner = WorkerRunner(handle_sigint=False, check_dangling_tasks=False)

        self.transport.add_event_handler("on_client_connected", self._on_client_connected)
        self.transport.add_event_handler("on_client_disconnected", self._on_client_disconnected)

    def attach(
        self,
        ws: web.WebSocketResponse,
        accepted_at: float,
        abort: Callable[[], None],
        write_room: Callable[[], int],
    ) -> None:
        """The client of a session started at ``/start`` connected: hand over its socket."""
        self._accepted_at = accepted_at
        self.transport.client.attach(ws, abort, write_room)

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def serializer(self) -> str:
        """The wire format this session speaks (``rtvi`` or ``protobuf``)."""
        return self._serializer

    @property
    def closed(self) -> bool:
        return self._closed

    async def started(self) -> None:
        """Return once the pipeline is up (its StartFrame reached the transport output)."""
        await self.transport.output().started.wait()

    async def _on_client_connected(self, _transport: Any, _ws: Any) -> None:
        self._connected = True
        self._started_at = perf_counter()
        self._deps.metrics.sessions_active.labels(self.tenant.name).inc()
        setup = asyncio.get_running_loop().time() - self._accepted_at
        log.info(
            "session.start",
            serializer=self._serializer,
            prestarted=self._prestarted,
            setup_seconds=round(setup, 4),
        )
        self.worker.create_task(self._greet(), name="greeting")

    async def _on_client_disconnected(self, _transport: Any, _ws: Any) -> None:
        await self.worker.cancel(reason="client disconnected")

    async def _greet(self) -> None:
        settings = self.tenant.greeting
        deadline = self._accepted_at + (settings.deadline_secs or self._deps.settings.greeting_deadline_secs)
        prefetch = self._prefetch or greetings.start_prefetch(self._backend, self.scope, settings)
        self._greeting = greeting = await greetings.collect(prefetch, settings, deadline)
        self.memory.exclude_from_storage(greeting.text)
        # Said where the LLM speaks: from the LLM service on, exactly like a reply (RTVI's bot-llm-*
        # and bot-output, the TTS in voice mode, the assistant aggregator appending it to the context),
        # without first crossing the transport input, RTVI, user aggregator and memory queues — about
        # a third of the connect→greeting time. Once StartFrame has reached the transport output,
        # i.e. has passed every processor the greeting will (Pipecat requires it of any frame).
        await self.transport.output().started.wait()
        self._greeting_queued = True
        for frame in (LLMFullResponseStartFrame(), LLMTextFrame(greeting.text), LLMFullResponseEndFrame()):
            await self._llm.push_frame(frame)

    def _on_reject(self, reason: str, code: int) -> None:
        self._deps.metrics.reject(self.tenant.name, reason)
        log.info("ws.rejected", reason=reason, close_code=code)

    def _on_client_message(self, message: dict[str, Any]) -> None:
        if message.get("type") == "send-text" and isinstance(message.get("data"), dict):
            content = message["data"].get("content")
            if isinstance(content, str):
                self._typed.append(content)

    def _on_message_sent(self, message: dict[str, Any]) -> None:
        if self._farewell is not None and message.get("type") in _GREETING_WRITTEN:
            self._farewell.set()
        if self._greeting_queued and not self._greeted and message.get("type") in _GREETING_WRITTEN:
            self._greeted = True
            greeting = self._greeting
            elapsed = asyncio.get_running_loop().time() - self._accepted_at
            outcome = greeting.outcome if greeting else "fallback"
            self._deps.metrics.greeting_seconds.labels(self.tenant.name, outcome).observe(elapsed)
            log.info(
                "session.greeted",
                seconds=round(elapsed, 4),
                memories=greeting.memories if greeting else 0,
                outcome=outcome,
            )

    async def run(self) -> str:
        """Run the pipeline until the connection ends; returns the outcome label.

        A session started at ``/start`` whose client never connected ends as ``unclaimed``: it is
        logged but not counted as a session (it never had a connection).
        """
        metrics = self._deps.metrics
        name = self.tenant.name
        failed = False
        try:
            await self.runner.add_workers(self.worker)
            await self.runner.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            failed = True
            log.exception("session.failed")
            await self.transport.client.close(WSCloseCode.INTERNAL_ERROR, "internal error")
        finally:
            await self._finish()
            if self._connected:
                metrics.sessions_active.labels(name).dec()
        if self._prestarted and not self._connected and not failed:
            log.info("session.unclaimed", seconds=round(perf_counter() - self._started_at, 3))
            return "unclaimed"
        outcome = _outcome(self.transport.client.close_code, failed)
        metrics.sessions_total.labels(name, outcome).inc()
        log.info(
            "session.end",
            outcome=outcome,
            seconds=round(perf_counter() - self._started_at, 3),
            close_code=self.transport.client.close_code,
        )
        return outcome

    async def _on_reply(self, _aggregator: object, _message: object) -> None:
        try:
            await self.memory.store_turn(self.context)
        except Exception:
            log.exception("session.store_failed")

    async def _finish(self) -> None:
        """Store the last turn's reply and wait (bounded) for this session's memory writes."""
        if self._prefetch is not None and not self._prefetch.done():
            self._prefetch.cancel()
        try:
            await self.memory.store_final(self.context, typed=list(self._typed))
            if not await self.memory.flush(self._deps.settings.shutdown_grace_secs):
                log.warning("session.writes_pending")
        except Exception:
            log.exception("session.store_failed")
        await self.transport.client.close(WSCloseCode.OK, "session ended")

    async def close(
        self,
        code: int = WSCloseCode.GOING_AWAY,
        reason: str = "server shutting down",
        *,
        farewell: str | None = None,
        farewell_timeout: float = 2.0,
    ) -> None:
        """Close the socket with ``code`` and stop the pipeline; safe to call from any path, repeatedly.

        ``farewell``: first say this, like a reply (not stored as a memory), and wait up to
        ``farewell_timeout`` for it to be written — a drain's "please call back" line.
        """
        if self._closed:
            return
        if farewell and self._connected:
            self._farewell = asyncio.Event()
            self.memory.exclude_from_storage(farewell)
            for frame in (LLMFullResponseStartFrame(), LLMTextFrame(farewell), LLMFullResponseEndFrame()):
                await self._llm.push_frame(frame)
            try:
                await asyncio.wait_for(self._farewell.wait(), farewell_timeout)
            except TimeoutError:
                log.info("session.farewell_unsent")
        if self._closed:
            return
        self._closed = True
        await self.transport.client.close(code, reason)
        await self.worker.cancel(reason=reason)
