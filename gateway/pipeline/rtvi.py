"""RTVI on the gateway's side: the handshake and the greeting a session speaks before its pipeline
exists, and the pipeline's RTVI processor writing straight to the socket.

**Before the pipeline.** A text session answers ``client-ready`` and says its greeting itself
(``gateway.pipeline.session``), so the caller is greeted while the Pipecat pipeline that will carry
the conversation is still to be built: ≈1.3 ms of event-loop CPU from ``/start`` to the greeting
against ≈6 ms with the pipeline on the way (``bench/scenarios/setup_cpu.py``). The messages are
Pipecat's own models, filled in as Pipecat fills them in:

* ``answer_client_ready`` is ``RTVIProcessor``'s answer to ``client-ready`` (version negotiation, an
  ``error-response`` for an unknown or incompatible version, ``bot-ready`` with the bot's capabilities,
  echoing a 1.x client's version back);
* ``greeting_messages`` is what ``RTVIObserver`` writes for a response the LLM service pushes in text
  mode (``bot-llm-started``, ``bot-llm-text``, ``bot-transcription``, ``bot-llm-stopped``, then one
  ``bot-output`` per sentence as ``LLMTextProcessor``'s aggregator splits it).

The client's ``client-ready`` is later replayed into the pipeline, so Pipecat's RTVI processor ends up
in the state it would have reached on its own (client version, client ready); the second ``bot-ready``
(and version ``error-response``) it then produces is not written twice: ``DirectRTVIProcessor``
compares it with what the session wrote and drops it, logging ``rtvi.handshake_mismatch`` if Pipecat
would have said something else (``tests/test_rtvi_order.py`` fails on it).

**In the pipeline.** Stock ``RTVIProcessor.push_transport_message`` pushes each RTVI message downstream
from the top of the pipeline, so every message crosses every processor's queue before the output
transport serializes it: nine queue hops and task wake-ups per message, more than the frame it
reports on costs. Nothing between RTVI and the output transport acts on these frames, and the output
transport's handling of an ``OutputTransportMessageUrgentFrame`` is ``send_message(frame)``, ahead of
its data queue. So here the frame goes to the output transport's ``send_message_now``: written on
the producing task (RTVI's observer, which the session's ``ObserverHub`` calls as frames are pushed)
when the socket takes it without waiting, else queued to the output transport, which writes it under
the send timeout from its own task. Frames stay the interface; messages keep their order and urgency.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pipecat.processors.frameworks.rtvi.models as RTVI
from pipecat import version as pipecat_version
from pipecat.frames.frames import AggregatedTextFrame, OutputTransportMessageUrgentFrame
from pipecat.pipeline.capabilities import BotCapabilities
from pipecat.processors.frameworks.rtvi import RTVIProcessor
from pipecat.utils.string import match_endofsentence
from pipecat.utils.text.base_text_aggregator import Aggregation
from pipecat.utils.text.simple_text_aggregator import SimpleTextAggregator
from pydantic import BaseModel, ValidationError

from gateway.logging import get_logger
from gateway.pipeline.transport import AiohttpWebsocketOutputTransport

log = get_logger(__name__)


def _dump(model: BaseModel) -> dict[str, Any]:
    # As RTVIProcessor.push_transport_message and RTVIObserver.send_rtvi_message dump (exclude_none).
    return model.model_dump(exclude_none=True)


def client_ready_id(message: Mapping[str, Any]) -> str | None:
    """The request ID of an RTVI ``client-ready`` message as Pipecat parses it, else None."""
    if message.get("type") != "client-ready":
        return None
    try:
        return RTVI.Message.model_validate(message).id
    except ValidationError:
        return None


def capabilities(*, audio_in: bool, audio_out: bool, metrics: bool = True) -> BotCapabilities:
    """What ``PipelineWorker.capabilities`` derives for a session's transport (no video, metrics on)."""
    derived = BotCapabilities(metrics=metrics)
    derived = derived.combine(BotCapabilities(audio_in=audio_in, video_in=False, screen_in=False))
    return derived.combine(BotCapabilities(audio_out=audio_out, video_out=False))


def answer_client_ready(message: Mapping[str, Any], bot: BotCapabilities) -> list[dict[str, Any]]:
    """The messages ``RTVIProcessor`` (with ``PipelineWorker``'s ``on_client_ready`` → ``set_bot_ready``)
    answers a ``client-ready`` with: an ``error-response`` if the version is missing, malformed or of
    another major, then ``bot-ready``."""
    request_id = RTVI.Message.model_validate(message).id
    raw = message.get("data") or {}
    version = raw.get("version") if isinstance(raw, Mapping) else None
    client_version = [0, 0, 0]
    error: str | None = None
    if isinstance(version, str) and version:
        try:
            parts = [int(v) for v in version.split(".")]
            if len(parts) != 3:
                raise ValueError
            client_version = parts
            major = parts[0]
            if major != int(RTVI.PROTOCOL_VERSION.split(".")[0]) and major != RTVI.LEGACY_SUPPORTED_MAJOR:
                error = (
                    f"RTVI version {version} is not compatible with server protocol {RTVI.PROTOCOL_VERSION}."
                )
        except ValueError:
            error = f"Invalid client version format ({version})."
    else:
        error = "Client version unknown."
    answer: list[dict[str, Any]] = []
    if error:
        error += " Compatibility issues may occur."
        answer.append(_dump(RTVI.ErrorResponse(id=request_id, data=RTVI.ErrorResponseData(error=error))))
    legacy = client_version[0] == RTVI.LEGACY_SUPPORTED_MAJOR
    answer.append(
        _dump(
            RTVI.BotReady(
                id=request_id,
                data=RTVI.BotReadyData(
                    version=".".join(map(str, client_version)) if legacy else RTVI.PROTOCOL_VERSION,
                    about={"library": "pipecat-ai", "library_version": f"{pipecat_version()}"},
                    capabilities=bot,
                ),
            )
        )
    )
    return answer


class LineRenderer:
    """The RTVI messages of one response the LLM service streams in text mode, token by token, as
    ``RTVIObserver`` and ``LLMTextProcessor`` (Pipecat's ``SimpleTextAggregator``) produce them:
    ``bot-llm-started``; per token ``bot-llm-text`` and, when the text so far ends a sentence,
    ``bot-transcription``; ``bot-llm-stopped``; one ``bot-output`` per sentence, as the aggregator
    completes it (``outputs``), the rest when the response ends.

    In the pipeline a sentence's ``bot-output`` is written when its frame leaves the output transport,
    after the ``bot-llm-text`` that completed it; a caller streaming tokens writes ``outputs()`` after
    each token's messages, as the pipeline does when tokens come slower than its processors run.
    """

    def __init__(self) -> None:
        self._aggregator = SimpleTextAggregator()
        self._transcription = ""
        self._outputs: list[dict[str, Any]] = []
        self.text = ""

    def started(self) -> list[dict[str, Any]]:
        return [_dump(RTVI.BotLLMStartedMessage())]

    async def token(self, text: str) -> list[dict[str, Any]]:
        """``bot-llm-text`` (and ``bot-transcription``) for one token; its sentences wait in ``outputs``."""
        self.text += text
        messages = [_dump(RTVI.BotLLMTextMessage(data=RTVI.TextMessageData(text=text)))]
        self._transcription += text
        if self._transcription and match_endofsentence(self._transcription):
            messages.append(
                _dump(RTVI.BotTranscriptionMessage(data=RTVI.TextMessageData(text=self._transcription)))
            )
            self._transcription = ""
        async for aggregation in self._aggregator.aggregate(text):
            self._outputs.append(_output(aggregation))
        return messages

    async def stopped(self) -> list[dict[str, Any]]:
        """``bot-llm-stopped``; the last sentence goes to ``outputs``."""
        if (rest := await self._aggregator.flush()) is not None:
            self._outputs.append(_output(rest))
        return [_dump(RTVI.BotLLMStoppedMessage())]

    def outputs(self) -> list[dict[str, Any]]:
        """The ``bot-output`` of each sentence completed since the last call."""
        outputs, self._outputs = self._outputs, []
        return outputs


def _output(aggregation: Aggregation) -> dict[str, Any]:
    # A frame, as LLMTextProcessor makes one: its ID is the segment's.
    frame = AggregatedTextFrame(text=aggregation.text, text_type=aggregation.type)
    frame.skip_tts = True
    data = RTVI.BotOutputMessageData(
        text=frame.text,
        spoken=False,
        will_be_spoken=frame.will_be_spoken,
        output_type=frame.text_type,
        segment_id=frame.id,
        spoken_status="new",
        spoken_progress=None,
    )
    return _dump(RTVI.BotOutputMessage(data=data))


async def greeting_messages(text: str) -> list[dict[str, Any]]:
    """What RTVI's observer writes for ``text`` said by the LLM service in text mode, in order (one
    frame: its sentences' ``bot-output`` come after ``bot-llm-stopped``)."""
    line = LineRenderer()
    messages = line.started()
    messages += await line.token(text)
    messages += await line.stopped()
    return messages + line.outputs()


class DirectRTVIProcessor(RTVIProcessor):
    """An ``RTVIProcessor`` whose outgoing messages go directly to ``output`` (the transport output),
    which does not repeat what the session already answered to ``client-ready``."""

    def __init__(self, *, output: AiohttpWebsocketOutputTransport, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._output = output
        self._answered: dict[str, dict[str, Any]] = {}
        self.mismatches = 0

    def answered(self, messages: list[dict[str, Any]]) -> None:
        """The session already wrote these (``answer_client_ready``): Pipecat's own are dropped."""
        self._answered = {m["type"]: m for m in messages}

    async def push_transport_message(self, model: BaseModel, exclude_none: bool = True) -> None:
        message = model.model_dump(exclude_none=exclude_none)
        said = self._answered.get(message.get("type", ""))
        if said is not None and message.get("id") == said.get("id"):
            del self._answered[message["type"]]
            if message != said:
                self.mismatches += 1
                log.warning("rtvi.handshake_mismatch", type=message["type"], pipecat=message, gateway=said)
            return
        await self._output.send_message_now(OutputTransportMessageUrgentFrame(message=message))
