"""One WebSocket connection = one Session: its lifecycle, from assembled to stored.

A session is usually assembled at ``/start``, before its client connects, and handed the socket on
connect (``attach``). From then on it goes through these steps, each bounded:

1. **Handshake.** The client's socket is read from the moment it is attached
   (``AiohttpWebsocketClient``); a ``client-ready`` is answered at once with ``bot-ready``, exactly as
   Pipecat's RTVI processor would answer it (``gateway.pipeline.rtvi``).
2. **Greeting.** By default in RTVI's order — right after ``bot-ready``, or after
   ``GATEWAY_CLIENT_READY_TIMEOUT_SECS`` for a client that never sends ``client-ready`` — or, when the
   tenant opts in (``greeting.after: connect``), as soon as the socket is attached. Memories were
   fetched from ``/start`` on (``gateway.pipeline.greeting``). A phone call (``call``,
   ``gateway.pipeline.phone``) sends no ``client-ready``: it is greeted when its media stream starts,
   with the audio synthesised while the provider was connecting it (``gateway.pipeline.pregreeting``).
3. **Pipeline.** A text session says its greeting itself and only then builds its Pipecat pipeline
   (``gateway.pipeline.builder``), when no other caller of this process is still owed a greeting
   (``gateway.pipeline.builds``) or at once if its client has said something. A session with speech
   out needs its pipeline to speak, so it builds first (at ``/start``) and the greeting goes through
   the LLM service, TTS and all, like a reply.
4. **Conversation.** What the client sent meanwhile (``client-ready`` included, so Pipecat's RTVI
   processor reaches the state it would have reached on its own) is replayed into the pipeline, in
   order, and the pipeline reads the socket from then on, until the client leaves, the server drains
   or the socket fails.
5. **End.** What is left to store is stored (``memory.conversation.ConversationStore``: the last reply,
   and anything typed that never reached the pipeline), and the outcome reported. ``close()`` is
   idempotent and used by every teardown path.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field, replace
from time import perf_counter
from typing import Any

import pipecat.processors.frameworks.rtvi.models as RTVI
from pipecat.frames.frames import (
    Frame,
    InputTransportMessageFrame,
    LLMAssistantPushAggregationFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.pipeline.capabilities import BotCapabilities
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.utils.text.base_text_aggregator import TextType

from gateway import closecodes
from gateway.logging import get_logger
from gateway.pipeline import greeting as greetings
from gateway.pipeline.builder import SessionDeps, SessionPipelineParts, build_pipeline
from gateway.pipeline.llm import resolve_endpoint
from gateway.pipeline.phone import CallMedia
from gateway.pipeline.pregreeting import PreparedGreeting
from gateway.pipeline.rtvi import (
    LineRenderer,
    answer_client_ready,
    capabilities,
    client_ready_id,
    greeting_messages,
)
from gateway.pipeline.serializers import create_serializer
from gateway.pipeline.transport import (
    AiohttpWebsocketClient,
    AiohttpWebsocketInputTransport,
    AiohttpWebsocketParams,
    SocketHandle,
    TransportHooks,
)
from gateway.pipeline.voice import build_voice
from gateway.tenants import TenantConfig
from gateway.tokens import SessionClaims
from memory.conversation import ConversationStore
from memory.scope import MemoryScope
from memory.tenant import TenantMemory

log = get_logger(__name__)

__all__ = ["Session", "SessionDeps"]

# Frames a session keeps for its pipeline while it has none: a few typed turns and client messages,
# or 2.5 s of 20 ms audio frames; a fuller inbox holds the socket's reader back (and TCP the client).
INBOX_FRAMES = 128


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
        closecodes.PROTOCOL_ERROR,
    ):
        return "client_error"
    return "completed"


@dataclass
class _Inbox:
    """What the client sent before the session had a pipeline to give it to."""

    frames: deque[Frame] = field(default_factory=deque)
    room: asyncio.Event = field(default_factory=asyncio.Event)
    # The client said client-ready, or something else first: the greeting may go (RTVI's order).
    spoke: asyncio.Event = field(default_factory=asyncio.Event)
    # The client said something besides client-ready: its pipeline is wanted now.
    urgent: asyncio.Event = field(default_factory=asyncio.Event)

    async def put(self, frame: Frame) -> None:
        while len(self.frames) >= INBOX_FRAMES:
            self.room.clear()
            await self.room.wait()
        self.frames.append(frame)


class _Hooks(TransportHooks):
    """The session's side of its transport: metric children resolved once, and what it keeps."""

    def __init__(self, session: Session) -> None:
        metrics = session.deps.metrics
        name = session.tenant.name
        self._session = session
        self._in = metrics.ws_messages_total.labels(name, "in")
        self._out = metrics.ws_messages_total.labels(name, "out")
        self._bad = metrics.rejections_total.labels(name, "undecodable_frame")

    def count_in(self) -> None:
        self._in.inc()

    def count_out(self) -> None:
        self._out.inc()

    def bad_frame(self) -> None:
        self._bad.inc()

    def rejected(self, reason: str, code: int) -> None:
        self._session.deps.metrics.reject(self._session.tenant.name, reason)
        log.info("ws.rejected", reason=reason, close_code=code)

    def response_written(self) -> None:
        self._session._bot_line_written()

    def audio_written(self) -> None:
        if self._session._awaiting_first_audio:
            self._session._first_audio()

    def interrupted(self) -> None:
        self._session._barged_in = True

    def client_message(self, message: dict[str, Any]) -> None:
        # What the client typed, as received: a disconnect may cut RTVI's handling of it short, or
        # come before the session has a pipeline; ``ConversationStore.store_final`` stores it then.
        if message.get("type") == "send-text" and isinstance(message.get("data"), dict):
            content = message["data"].get("content")
            if isinstance(content, str):
                self._session._typed.append(content)


class Session:
    def __init__(
        self,
        *,
        claims: SessionClaims,
        tenant: TenantConfig,
        backend: TenantMemory,
        deps: SessionDeps,
        serializer: str,
        prefetch: asyncio.Task[Any] | None,
        prestarted: bool = False,
        call: CallMedia | None = None,
    ) -> None:
        """``prestarted``: assembled at ``/start``, ahead of its client (``attach`` follows).
        ``call``: a phone call's media stream (``gateway.pipeline.phone``), the session's wire format:
        it greets when the stream starts, with the greeting prepared meanwhile (``PreparedGreeting``)."""
        self.id = claims.session_id
        self.tenant = tenant
        self.deps = deps
        self.scope = MemoryScope(claims.tenant, claims.user_id, claims.agent_id, claims.run_id)
        self._backend = backend
        self._prefetch = prefetch
        self._prestarted = prestarted
        self._serializer = serializer
        self._accepted_at = 0.0
        self._started_at = perf_counter()
        settings = deps.settings
        self._call = call
        self._voice = build_voice(tenant, deps.voice_models, deps.http_client, phone=call is not None)
        # Speech out needs the pipeline (TTS) to greet; text is greeted before it exists.
        self._greets_first = tenant.tts is None
        self._hooks = _Hooks(self)
        self._params = AiohttpWebsocketParams(
            serializer=call if call is not None else create_serializer(serializer),
            max_bad_frames=settings.max_bad_frames,
            send_timeout=settings.send_timeout_secs,
            idle_timeout=settings.idle_timeout_secs,
            audio_in_enabled=self._voice.audio_in,
            audio_out_enabled=self._voice.audio_out,
        )
        self.client = AiohttpWebsocketClient(self._params, self._hooks)
        self.context = LLMContext()
        self.store = ConversationStore(backend=backend, scope=self.scope, session_id=self.id)
        self._typed: deque[str] = deque(maxlen=32)
        self._inbox = _Inbox()
        self._input: AiohttpWebsocketInputTransport | None = None
        self._parts: SessionPipelineParts | None = None
        self._pipeline_run: asyncio.Future[None] | None = None
        self._conversation: asyncio.Task[None] | None = None
        self._writing = asyncio.Lock()  # one group of bot messages at a time (greeting, bot-ready)
        self._answer: list[dict[str, Any]] = []
        self._greeting: greetings.Greeting | None = None
        self._greeting_pushed = False
        self._prepared: PreparedGreeting | None = None
        self._speaking: asyncio.Task[None] | None = None
        # Voice out: the greeting counts as said at its first audio byte (gateway_greeting_seconds).
        self._awaiting_first_audio = False
        self._barged_in = False
        self._line_written: asyncio.Event | None = None
        self._connected = False
        self._unclaimed = False
        self._closed = False
        self._owes_greeting = True
        self._expiry: asyncio.Task[None] | None = None
        self._replies = 0
        deps.builds.greeting_owed()

    # -- what the registry and routes use ------------------------------------------------------------

    @property
    def serializer(self) -> str:
        """The wire format this session speaks (``rtvi`` or ``protobuf``)."""
        return self._serializer

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def live(self) -> bool:
        """Its pipeline runs and has the conversation (a greeted text session before its build: not)."""
        return self._input is not None and self._pipeline_run is not None and not self._pipeline_run.done()

    def attach(self, socket: SocketHandle, accepted_at: float) -> None:
        """The client connected: hand over its socket."""
        self._accepted_at = accepted_at
        self.client.attach(socket)

    async def run(self) -> str:
        """Run the session until the connection ends; returns the outcome label.

        A session started at ``/start`` whose client never connected ends as ``unclaimed``: it is
        logged but not counted as a session (it never had a connection).
        """
        metrics = self.deps.metrics
        name = self.tenant.name
        failed = False
        conversation = self._conversation = asyncio.ensure_future(self._converse())
        try:
            await conversation
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not conversation.cancelled() or (task is not None and task.cancelling()):
                conversation.cancel()
                raise
            # Cancelled by close() or the client's leaving before the pipeline had the conversation.
        except Exception:
            failed = True
            log.exception("session.failed")
            await self.client.close(closecodes.INTERNAL_ERROR, "internal error")
        finally:
            await self._finish()
            if self._connected:
                metrics.sessions_active.labels(name).dec()
        if self._unclaimed:
            log.info("session.unclaimed", seconds=round(perf_counter() - self._started_at, 3))
            return "unclaimed"
        outcome = _outcome(self.client.close_code, failed)
        metrics.sessions_total.labels(name, outcome).inc()
        log.info(
            "session.end",
            outcome=outcome,
            seconds=round(perf_counter() - self._started_at, 3),
            close_code=self.client.close_code,
        )
        return outcome

    async def close(
        self,
        code: int = closecodes.GOING_AWAY,
        reason: str = "server shutting down",
        *,
        farewell: str | None = None,
        farewell_timeout: float = 2.0,
    ) -> None:
        """Close the socket with ``code`` and stop the session; safe to call from any path, repeatedly.

        ``farewell``: first say this, like a reply (not stored as a memory), and wait up to
        ``farewell_timeout`` for it to be written — a drain's "please call back" line.
        """
        if self._closed:
            return
        if farewell and self._connected:
            try:
                async with asyncio.timeout(farewell_timeout):
                    await self._say(farewell)
            except TimeoutError:
                log.info("session.farewell_unsent")
        if self._closed:
            return
        self._closed = True
        await self.client.close(code, reason)
        await self._stop(reason)

    # -- the steps -----------------------------------------------------------------------------------

    async def _converse(self) -> None:
        if not self._greets_first:
            async with self.deps.builds.turn(now=True):
                await self._build()  # the greeting is spoken: it needs the TTS
            if self._call is not None and self._voice.tts is not None:
                self._prepare_greeting()  # while the provider connects the media stream
        if not await self.client.wait_attached(self.deps.settings.prestart_secs or 10.0):
            self._unclaimed = self._prestarted
            return
        self._on_connected()
        self.client.start_reading(self._on_frame, self._on_client_gone)
        if not await self._greet():
            return
        if self._parts is None:
            async with self.deps.builds.turn(self._inbox.urgent):
                await self._build()
                await self._hand_over()
        else:
            await self._hand_over()
        assert self._pipeline_run is not None
        await self._pipeline_run

    def _on_connected(self) -> None:
        self._connected = True
        self._started_at = perf_counter()
        self.deps.metrics.sessions_active.labels(self.tenant.name).inc()
        log.info(
            "session.start",
            serializer=self._serializer,
            prestarted=self._prestarted,
            setup_seconds=round(asyncio.get_running_loop().time() - self._accepted_at, 4),
        )

    async def _on_frame(self, frame: Frame) -> None:
        """Every frame the client sends, in order: the pipeline's once it has the conversation;
        until then a ``client-ready`` is answered here, and everything is kept for the pipeline."""
        if self._input is not None:
            await self._input.deliver(frame)
            return
        if (
            not self._answer
            and isinstance(frame, InputTransportMessageFrame)
            and client_ready_id(frame.message) is not None
        ):
            await self._answer_client_ready(frame.message)
        else:
            self._inbox.urgent.set()
        self._inbox.spoke.set()
        await self._inbox.put(frame)

    async def _answer_client_ready(self, message: dict[str, Any]) -> None:
        self._answer = answer_client_ready(message, self._capabilities())
        if self._parts is not None and self._parts.rtvi is not None:
            self._parts.rtvi.answered(self._answer)
        async with self._writing:
            for reply in self._answer:
                await self.client.send_message(reply)

    def _capabilities(self) -> BotCapabilities:
        return capabilities(audio_in=self._voice.audio_in, audio_out=self._voice.audio_out)

    def _prepare_greeting(self) -> None:
        settings = self.tenant.greeting
        deadline = asyncio.get_running_loop().time() + (
            settings.deadline_secs or self.deps.settings.greeting_deadline_secs
        )
        prefetch = self._prefetch or greetings.start_prefetch(self._backend, self.scope, self.tenant)
        self._prepared = PreparedGreeting(prefetch, settings, deadline)
        assert self._voice.tts is not None
        self._prepared.start(self._voice.tts)

    async def _stream_started(self) -> bool:
        """A phone call's media stream said who it is (no client-ready on a phone): greet now."""
        assert self._call is not None
        try:
            async with asyncio.timeout(self.deps.settings.client_ready_timeout_secs):
                await self._call.started.wait()
        except TimeoutError:
            return False
        return True

    async def _greet(self) -> bool:
        """Greet the caller; False if the session ended instead (a phone stream that never started)."""
        settings = self.tenant.greeting
        if self._call is not None:
            if not await self._stream_started():
                self._hooks.rejected("idle_timeout", closecodes.IDLE_TIMEOUT)
                await self.client.close(closecodes.IDLE_TIMEOUT, "the media stream did not start")
                return False
        elif settings.after == "bot_ready" and not self._inbox.spoke.is_set():
            try:
                async with asyncio.timeout(self.deps.settings.client_ready_timeout_secs):
                    await self._inbox.spoke.wait()
            except TimeoutError:
                log.info("session.no_client_ready")
        for unavailable in self._voice.unavailable:  # which half of voice is off, and why (non-fatal)
            error = RTVI.Error(data=RTVI.ErrorData(error=unavailable, fatal=False))
            await self.client.send_message(error.model_dump(exclude_none=True))
        if self._prepared is not None:
            # A phone call's greeting was recalled and synthesised while Twilio connected: it is the
            # template line (greeting.mode "llm" would put an LLM round trip before the first audio).
            greeting = await self._prepared.greeting()
        else:
            wait = settings.deadline_secs or self.deps.settings.greeting_deadline_secs
            deadline = self._accepted_at + wait
            prefetch = self._prefetch or greetings.start_prefetch(self._backend, self.scope, self.tenant)
            greeting = await greetings.collect(prefetch, settings, deadline)
            if settings.mode == "llm" and greeting.outcome == "recalled":
                if await self._greet_with_llm(greeting):
                    return True
                greeting = replace(greeting, source="fallback")
        self._greeting = greeting
        self.store.exclude(greeting.text)
        if self._parts is None:
            await self._write_line(greeting.text)
            self.context.add_message({"role": "assistant", "content": greeting.text})
            self._greeted()
            return True
        self._greeting_pushed = True
        self._awaiting_first_audio = self._voice.audio_out
        prepared = self._prepared
        if prepared is not None and not (prepared.done and not prepared.has_audio):
            self._speaking = asyncio.create_task(self._speak_prepared(prepared), name="greeting-speech")
        else:
            await self._push_line(greeting.text)
        return True

    async def _speak_prepared(self, prepared: PreparedGreeting) -> None:
        """Push the greeting's audio, synthesised ahead, from where the TTS service pushes its own:
        the output transport paces it and the assistant aggregator adds its text once spoken, as for
        any reply. A barge-in stops it (what was queued is cleared by Pipecat's interruption)."""
        assert self._voice.tts is not None and self._greeting is not None
        tts, context_id = self._voice.tts, prepared.context_id
        await tts.push_frame(TTSStartedFrame(context_id=context_id))
        async for audio in prepared.frames():
            if self._barged_in:
                return
            await tts.push_frame(audio)
        if self._barged_in:
            return
        if not prepared.has_audio:  # the synthesis failed before its first audio: say it the usual way
            await tts.push_frame(TTSStoppedFrame(context_id=context_id))
            await self._push_line(self._greeting.text)
            return
        text = TTSTextFrame(self._greeting.text, text_type=TextType.SENTENCE)
        text.context_id = context_id
        for frame in (text, TTSStoppedFrame(context_id=context_id), LLMAssistantPushAggregationFrame()):
            await tts.push_frame(frame)

    async def _greet_with_llm(self, greeting: greetings.Greeting) -> bool:
        """``greeting.mode: llm``: the tenant's LLM writes the greeting from its facts, streamed as the
        first bot output — written here in text mode (the messages the pipeline would write), pushed
        from the LLM service on (TTS and all) with speech out. False, nothing said, if the LLM gave
        no first token in time (the caller then says the template)."""
        endpoint = resolve_endpoint(self.tenant, self.deps.settings)
        if endpoint is None:
            return False
        client = self.deps.openai_clients.get(api_key=endpoint.api_key, base_url=endpoint.base_url)
        tokens = greetings.stream_llm(
            client,
            model=endpoint.model,
            messages=greetings.llm_messages(greeting, self.tenant),
            settings=self.tenant.greeting,
            temperature=endpoint.temperature,
        )
        try:
            token = await anext(tokens)
        except greetings.LLMGreetingFailed as e:
            log.info("greeting.llm_fallback", reason=str(e))
            return False
        line = LineRenderer()
        pushing = self._parts is not None
        if pushing:
            assert self._parts is not None
            await self._parts.llm.push_frame(LLMFullResponseStartFrame())
        else:
            await self._send_all(line.started())
        while True:
            if pushing:
                assert self._parts is not None
                line.text += token
                await self._parts.llm.push_frame(LLMTextFrame(token))
            else:
                await self._send_all([*await line.token(token), *line.outputs()])
            try:
                token = await anext(tokens)
            except StopAsyncIteration:
                break
        text = line.text
        self._greeting = replace(greeting, text=text, source="llm")
        self.store.exclude(text)
        if pushing:
            assert self._parts is not None
            self._greeting_pushed = True
            await self._parts.llm.push_frame(LLMFullResponseEndFrame())
        else:
            await self._send_all([*await line.stopped(), *line.outputs()])
            self.context.add_message({"role": "assistant", "content": text})
            self._greeted()
        return True

    async def _send_all(self, messages: list[dict[str, Any]]) -> None:
        async with self._writing:
            for message in messages:
                await self.client.send_message(message)

    async def _write_line(self, text: str) -> None:
        """Say ``text`` as the LLM service would, written by the session itself (no pipeline)."""
        await self._send_all(await greeting_messages(text))

    async def _push_line(self, text: str) -> None:
        """Say ``text`` where the LLM speaks: from the LLM service on, exactly like a reply (RTVI's
        bot-llm-* and bot-output, the TTS in voice mode, the assistant aggregator appending it to the
        context), without first crossing the input transport, RTVI, user aggregator and memory."""
        assert self._parts is not None
        for frame in (LLMFullResponseStartFrame(), LLMTextFrame(text), LLMFullResponseEndFrame()):
            await self._parts.llm.push_frame(frame)

    async def _say(self, text: str) -> None:
        """A line outside the conversation (a farewell), not stored; returns once it was written."""
        self.store.exclude(text)
        if self._input is None:
            await self._write_line(text)
            return
        self._line_written = written = asyncio.Event()
        await self._push_line(text)
        await written.wait()

    def _bot_line_written(self) -> None:
        """The pipeline wrote the whole of a response (the greeting's, a farewell's, a reply's)."""
        if self._line_written is not None:
            self._line_written.set()
        if self._greeting_pushed and self._owes_greeting:
            self._greeted()

    def _first_audio(self) -> None:
        """The greeting's first audio byte was written (voice out): the caller hears it now."""
        self._awaiting_first_audio = False
        if self._owes_greeting:
            self._greeted()

    def _greeted(self) -> None:
        self._paid()
        greeting = self._greeting
        elapsed = asyncio.get_running_loop().time() - self._accepted_at
        outcome = greeting.outcome if greeting else "fallback"
        source = greeting.source if greeting else "template"
        self.deps.metrics.greeting_seconds.labels(self.tenant.name, outcome, source).observe(elapsed)
        log.info(
            "session.greeted",
            seconds=round(elapsed, 4),
            memories=greeting.memories if greeting else 0,
            outcome=outcome,
            source=source,
        )

    def _paid(self) -> None:
        if self._owes_greeting:
            self._owes_greeting = False
            self.deps.builds.greeting_paid()

    async def _build(self) -> None:
        """Build the pipeline and start it (its ``StartFrame`` through every processor); the caller
        holds a build turn (``PipelineBuilds.turn``)."""
        parts = build_pipeline(
            session_id=self.id,
            tenant=self.tenant,
            deps=self.deps,
            client=self.client,
            params=self._params,
            hooks=self._hooks,
            context=self.context,
            store=self.store,
            voice=self._voice,
            on_reply=self._on_reply,
            rtvi=self._call is None,
        )
        if self._answer and parts.rtvi is not None:
            parts.rtvi.answered(self._answer)
        self._parts = parts
        await parts.runner.add_workers(parts.worker)
        run = self._pipeline_run = asyncio.ensure_future(parts.runner.run())
        started = asyncio.ensure_future(parts.transport.output().started.wait())
        try:
            await asyncio.wait({run, started}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            started.cancel()
        if run.done():
            run.result()  # ended before it started: its error, if any, is the session's
            raise RuntimeError("pipeline ended before it started")

    async def _hand_over(self) -> None:
        """Give the pipeline the conversation: what the client sent so far, then the socket itself."""
        assert self._parts is not None
        pipeline_input = self._parts.transport.input()
        if self._voice.audio_out:
            # Pipecat's user→bot latency observer (voice in and out) times from it; nothing else in a
            # session's pipeline reads it, and in text mode it would only cross every processor.
            await pipeline_input.connected()
        inbox = self._inbox
        while inbox.frames:
            await pipeline_input.deliver(inbox.frames.popleft())
            inbox.room.set()
        # No await since the inbox was found empty: every later frame goes to the pipeline directly.
        self._input = pipeline_input

    async def _on_reply(self, _aggregator: object, _message: object) -> None:
        try:
            await self.store.store_new(self.context)
        except Exception:
            log.exception("session.store_failed")
        self._replies += 1
        every = self._backend.settings.consolidation.after_turns
        if every and self._replies % every == 0:
            # Its turns so far are queued; consolidation runs elsewhere (memory.consolidation).
            await self._backend.request_consolidation(self.scope)

    async def _on_client_gone(self) -> None:
        """The socket ended. A client that said goodbye (or was closed) is gone; one whose network
        dropped may come back with the same token within ``GATEWAY_RESUME_SECS`` (``resume``)."""
        window = self.deps.settings.resume_secs
        # A phone stream is never reopened: a dropped one ends the session (and the call).
        resumable = self._call is None and not self._owes_greeting
        if self.client.dropped and window > 0 and not self._closed and resumable:
            self.client.detach()
            log.info("session.detached", resume_secs=window)
            self._expiry = asyncio.create_task(self._expire(window), name="resume-window")
            return
        await self._stop("client disconnected")

    @property
    def detached(self) -> bool:
        """Its client's network dropped; it waits for the client to come back (``resume``)."""
        return self.client.detached and not self._closed

    async def resume(self, socket: SocketHandle, accepted_at: float) -> bool:
        """The client came back on a new socket: it gets what was said meanwhile, then the
        conversation goes on where it was (no second greeting). False if the session is not waiting."""
        if not self.detached:
            return False
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        self._accepted_at = accepted_at
        await self.client.reattach(socket)
        self.client.start_reading(self._on_frame, self._on_client_gone)
        self.deps.metrics.resumptions_total.labels(self.tenant.name, "resumed").inc()
        log.info("session.resumed")
        return True

    async def _expire(self, window: float) -> None:
        await asyncio.sleep(window)
        if self.detached:
            self.deps.metrics.resumptions_total.labels(self.tenant.name, "expired").inc()
            log.info("session.not_resumed", resume_secs=window)
            await self._stop("client did not come back")

    async def _stop(self, reason: str) -> None:
        """End the session: the pipeline's worker if it has the conversation, else the steps."""
        if self._parts is not None and self._input is not None:
            await self._parts.worker.cancel(reason=reason)
        elif self._conversation is not None and self._conversation is not asyncio.current_task():
            self._conversation.cancel()

    async def _finish(self) -> None:
        """Stop what still runs, store the last turn's reply (and what was typed but never reached
        the pipeline), and wait (bounded) for this session's memory writes."""
        self._paid()
        if self._speaking is not None:
            self._speaking.cancel()
        if self._prepared is not None:
            await self._prepared.close()
        if self._expiry is not None:
            self._expiry.cancel()
        if self._prefetch is not None and not self._prefetch.done():
            self._prefetch.cancel()
        run = self._pipeline_run
        if self._parts is not None and run is not None and not run.done():
            await self._parts.worker.cancel(reason="session ended")
            await asyncio.wait({run}, timeout=self.deps.settings.shutdown_grace_secs)
            if not run.done():
                log.warning("session.pipeline_stop_timeout")
                run.cancel()
            elif not run.cancelled() and run.exception() is not None:
                log.error("session.pipeline_failed", exc_info=run.exception())
        try:
            await self.store.store_final(self.context, typed=list(self._typed))
            if not await self.store.flush(self.deps.settings.shutdown_grace_secs):
                log.warning("session.writes_pending")
        except Exception:
            log.exception("session.store_failed")
        if self._call is not None:
            await self._call.hang_up()  # a caller is never left on a silent line
        if self._connected and self.store.stored:
            # Off this session's path: one queued job, whose worker may run on any replica.
            await self._backend.request_consolidation(self.scope)
        await self.client.close(closecodes.NORMAL, "session ended")
        await self.client.stop_reading()
