"""Pipecat's own signals, turned into the gateway's Prometheus metrics for one session.

* TTFB and LLM token usage arrive as ``MetricsFrame``s (``enable_metrics`` / ``enable_usage_metrics``);
  a processor name is mapped to its service kind (llm, stt, tts) once, when the session is built.
* User→bot latency with voice in and out is Pipecat's ``UserBotLatencyObserver``: from the moment
  the user really stopped speaking (the VAD's verdict minus its ``stop_secs``) to the bot starting to
  speak. Without speech out it never fires, so there the turn's end is timed to the first LLM text out:
  a typed turn ends when RTVI's ``send-text`` appends the message and runs the LLM
  (``LLMMessagesAppendFrame``); a spoken one where the user really stopped speaking, as Pipecat's
  observer counts it (``VADUserStoppedSpeakingFrame``'s time minus its ``stop_secs``), not when the
  turn was released.

Label children are resolved once per session, so a frame costs a dict lookup, never a label lookup.
"""

from __future__ import annotations

import time
from typing import Literal

from pipecat.frames.frames import (
    LLMMessagesAppendFrame,
    LLMTextFrame,
    MetricsFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.metrics.metrics import LLMUsageMetricsData, TTFBMetricsData
from pipecat.observers.base_observer import BaseObserver, FramePushed
from pipecat.observers.user_bot_latency_observer import UserBotLatencyObserver
from pipecat.processors.frame_processor import FrameDirection

from gateway.metrics import GatewayMetrics

TurnEnd = Literal["typed", "spoken", "pipecat"]


class SessionMetricsObserver(BaseObserver):
    def __init__(
        self,
        *,
        metrics: GatewayMetrics,
        tenant: str,
        services: dict[str, str],
        turn_end: TurnEnd,
    ) -> None:
        super().__init__(observe_every_push=False)
        self._ttfb = {name: metrics.ttfb_seconds.labels(tenant, kind) for name, kind in services.items()}
        self._prompt_tokens = metrics.llm_tokens_total.labels(tenant, "prompt")
        self._completion_tokens = metrics.llm_tokens_total.labels(tenant, "completion")
        self._latency = metrics.user_bot_latency_seconds.labels(tenant)
        self._turn_end = turn_end
        self._turn_ended_at: float | None = None

    async def on_push_frame(self, data: FramePushed) -> None:
        frame = data.frame
        if isinstance(frame, MetricsFrame):
            for item in frame.data:
                if isinstance(item, TTFBMetricsData):
                    histogram = self._ttfb.get(item.processor)
                    if histogram is not None and item.value > 0:
                        histogram.observe(item.value)
                elif isinstance(item, LLMUsageMetricsData):
                    self._prompt_tokens.inc(item.value.prompt_tokens)
                    self._completion_tokens.inc(item.value.completion_tokens)
            return
        if self._turn_end == "pipecat" or data.direction != FrameDirection.DOWNSTREAM:
            return
        if self._turn_end == "typed":
            if isinstance(frame, LLMMessagesAppendFrame) and frame.run_llm:
                self._turn_ended_at = time.monotonic()
        elif isinstance(frame, VADUserStoppedSpeakingFrame):
            # On the monotonic clock: the frame's wall-clock verdict, less the silence it waited out.
            self._turn_ended_at = time.monotonic() - (time.time() - frame.timestamp) - frame.stop_secs
        elif isinstance(frame, VADUserStartedSpeakingFrame):
            self._turn_ended_at = None  # a pause, not the end: the turn ends at the next stop
        if isinstance(frame, LLMTextFrame) and self._turn_ended_at is not None:
            self._latency.observe(time.monotonic() - self._turn_ended_at)
            self._turn_ended_at = None

    def voice_latency_observer(self) -> UserBotLatencyObserver:
        """Pipecat's VAD-stop → bot-speech observer, reporting into this session's histogram."""
        observer = UserBotLatencyObserver()
        observer.add_event_handler("on_latency_measured", self._voice_latency)
        return observer

    async def _voice_latency(self, _observer: UserBotLatencyObserver, seconds: float) -> None:
        self._latency.observe(seconds)
