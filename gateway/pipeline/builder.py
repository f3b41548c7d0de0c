"""Assembling one session's Pipecat pipeline from the tenant's settings, its scope and the socket.

Pipeline (text mode)::

    transport.input ─▶ [RTVI, added by the worker] ─▶ user aggregator ─▶ GatewayMemoryService
        ─▶ LLM ─▶ TextOnlyTextProcessor ─▶ transport.output ─▶ assistant aggregator

``TextOnlyTextProcessor`` (Pipecat's ``LLMTextProcessor``, marking text ``skip_tts`` first) turns LLM
tokens into sentence-sized ``AggregatedTextFrame``s; with ``skip_tts`` set (text mode) RTVI then emits
``bot-output`` for them, which is what web clients display. RTVI's own messages are written as the
frames they report on are pushed, or queued to the transport output when the socket is backed up
(``gateway.pipeline.rtvi``).

Voice mode (the tenant's optional ``stt`` / ``tts``, built by ``gateway.pipeline.voice``) adds the STT
after the transport input (with a VAD on the user aggregator) and puts the TTS where
``TextOnlyTextProcessor`` stands::

    transport.input ─▶ [RTVI] ─▶ [STT] ─▶ user aggregator (+VAD) ─▶ GatewayMemoryService ─▶ LLM
        ─▶ [TTS] ─▶ transport.output ─▶ assistant aggregator

Everything a session shares with others (HTTP client, OpenAI clients, ONNX sessions) is built once per
process and passed in (``SessionDeps``); what is built here is the session's own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from openai import DefaultAsyncHttpxClient
from pipecat.observers.base_observer import BaseObserver
from pipecat.pipeline.worker import PipelineParams
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.processors.frame_processor import FrameProcessor
from pipecat.services.mem0.memory import Mem0MemoryService
from pipecat.turns.user_start.transcription_user_turn_start_strategy import TranscriptionUserTurnStartStrategy
from pipecat.turns.user_stop.speech_timeout_user_turn_stop_strategy import SpeechTimeoutUserTurnStopStrategy
from pipecat.turns.user_turn_strategies import UserTurnStrategies
from pipecat.workers.runner import WorkerRunner

from gateway.metrics import GatewayMetrics
from gateway.pipeline.builds import PipelineBuilds
from gateway.pipeline.llm import (
    LLMNotConfigured,
    OpenAIClients,
    TextOnlyTextProcessor,
    create_llm,
    resolve_endpoint,
)
from gateway.pipeline.observers import SessionMetricsObserver, TurnEnd
from gateway.pipeline.pipecatcompat import SessionPipeline, enable_direct_mode
from gateway.pipeline.rtvi import DirectRTVIProcessor
from gateway.pipeline.searchahead import SearchAhead
from gateway.pipeline.transport import (
    AiohttpWebsocketClient,
    AiohttpWebsocketParams,
    AiohttpWebsocketTransport,
    TransportHooks,
)
from gateway.pipeline.voice import Voice, VoiceModels
from gateway.pipeline.worker import SessionWorker
from gateway.settings import Settings
from gateway.tenants import TenantConfig
from memory.conversation import ConversationStore
from memory.service import GatewayMemoryService


@dataclass(frozen=True)
class SessionDeps:
    """Per-process objects every session uses (built once, passed in)."""

    settings: Settings
    metrics: GatewayMetrics
    http_client: DefaultAsyncHttpxClient
    openai_clients: OpenAIClients
    # Voice's ONNX sessions, opened on the first voice session and shared by all (gateway.pipeline.voice).
    voice_models: VoiceModels = field(default_factory=VoiceModels)
    # When text sessions build their pipelines (gateway.pipeline.builds).
    builds: PipelineBuilds = field(default_factory=PipelineBuilds)


@dataclass(frozen=True)
class SessionPipelineParts:
    """One session's running parts: what the session drives once it is built."""

    transport: AiohttpWebsocketTransport
    worker: SessionWorker
    runner: WorkerRunner
    llm: FrameProcessor
    rtvi: DirectRTVIProcessor | None  # None: a phone call (no RTVI client on the other end)
    memory: GatewayMemoryService


def _text_turns() -> UserTurnStrategies:
    # Text mode needs no turn model; the default stop strategy would build an ONNX session per
    # aggregator (≈45 ms, docs/pitfalls.md).
    return UserTurnStrategies(
        start=[TranscriptionUserTurnStartStrategy()], stop=[SpeechTimeoutUserTurnStopStrategy()]
    )


def build_pipeline(
    *,
    session_id: str,
    tenant: TenantConfig,
    deps: SessionDeps,
    client: AiohttpWebsocketClient,
    params: AiohttpWebsocketParams,
    hooks: TransportHooks,
    context: LLMContext,
    store: ConversationStore,
    voice: Voice,
    on_reply: Callable[[object, object], Awaitable[None]],
    rtvi: bool = True,
) -> SessionPipelineParts:
    """The session's pipeline, worker and runner, over ``client``'s socket, ready to run.

    ``rtvi=False`` (a phone call: its provider's stream carries audio only) leaves RTVI out: no
    processor, and no observer turning every frame into a message nobody would read."""
    transport = AiohttpWebsocketTransport(client, params, hooks)
    aggregators = LLMContextAggregatorPair(
        context,
        user_params=LLMUserAggregatorParams(
            user_turn_strategies=voice.turn_strategies or _text_turns(),
            vad_analyzer=voice.vad_analyzer,
            user_mute_strategies=voice.mute_strategies(),
        ),
    )
    # Direct mode for processors that only update the context and pass frames on: the assistant
    # aggregator, and the user aggregator in text mode (with voice it runs turn-taking timers around
    # the VAD and keeps its queues).
    enable_direct_mode(aggregators.assistant(), *([] if voice.audio_in else [aggregators.user()]))
    mem = tenant.memory
    memory = GatewayMemoryService(
        store=store,
        params=Mem0MemoryService.InputParams(**mem.params.model_dump()),
        search_timeout=mem.search_timeout_secs,
        # Direct mode: a user turn's context frame is stored and enhanced on the task that pushed it
        # (the user aggregator's), bounded by the search deadline, and then queued to the LLM; its own
        # two queues and tasks would only hand frames on.
        enable_direct_mode=True,
    )
    # The reply is made durable as soon as the aggregator has added it to the context, not with the
    # next user turn: a process killed between turns would otherwise lose the last reply.
    aggregators.assistant().add_event_handler("on_assistant_turn_stopped", on_reply)
    endpoint = resolve_endpoint(tenant, deps.settings)
    llm = (
        create_llm(endpoint, tenant.system_prompt, deps.openai_clients)
        if endpoint is not None
        else LLMNotConfigured()
    )
    # Text mode's stand-in for a TTS: mark text not-to-be-spoken, then aggregate it into sentences;
    # in direct mode (it never waits), so a frame goes straight through it on the pushing task.
    speech = voice.tts if voice.tts is not None else TextOnlyTextProcessor(enable_direct_mode=True)
    pipeline = SessionPipeline(
        [
            transport.input(),
            *voice.input_processors(),
            aggregators.user(),
            memory,
            llm,
            speech,
            transport.output(),
            aggregators.assistant(),
        ]
    )
    services = {llm.name: "llm"} if endpoint is not None else {}
    services.update({p.name: kind for kind, p in (("stt", voice.stt), ("tts", voice.tts)) if p is not None})
    # Voice in and out: Pipecat's own VAD-stop → bot-speech observer; otherwise turn end → first text.
    turn_end: TurnEnd = ("pipecat" if voice.audio_out else "spoken") if voice.audio_in else "typed"
    observer = SessionMetricsObserver(
        metrics=deps.metrics, tenant=tenant.name, services=services, turn_end=turn_end
    )
    observers: list[BaseObserver] = [observer]
    if turn_end == "pipecat":
        observers.append(observer.voice_latency_observer())
    if voice.audio_in:
        observers.append(SearchAhead(memory))
    # Direct mode too: it answers client messages from a task of its own and only passes frames on.
    processor = DirectRTVIProcessor(output=transport.output(), enable_direct_mode=True) if rtvi else None
    worker = SessionWorker(
        pipeline,
        observers=observers,
        params=PipelineParams(
            enable_metrics=True,
            enable_usage_metrics=True,
            audio_in_sample_rate=voice.audio_in_sample_rate,
            audio_out_sample_rate=voice.audio_out_sample_rate,
        ),
        idle_timeout_secs=None,
        enable_rtvi=rtvi,
        rtvi_processor=processor,
        # Pipecat's turn tracking feeds its tracing and audio recording, neither used here; it
        # would be one more observer on every frame.
        enable_turn_tracking=False,
        check_dangling_tasks=False,
        conversation_id=session_id,
    )
    runner = WorkerRunner(handle_sigint=False, check_dangling_tasks=False)
    return SessionPipelineParts(
        transport=transport, worker=worker, runner=runner, llm=llm, rtvi=processor, memory=memory
    )
