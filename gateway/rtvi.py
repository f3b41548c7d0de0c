"""Pipecat's RTVI processor, with its messages handed straight to the output transport.

Stock ``RTVIProcessor.push_transport_message`` pushes each RTVI message (``bot-llm-text`` per LLM token,
``bot-output`` per sentence, ``bot-llm-started``/``-stopped``, ``bot-ready``, errors) downstream from
the top of the pipeline, so every message crosses every processor's queue — input transport, user
aggregator, memory, LLM, … — before the output transport serializes it: nine queue hops and task
wake-ups per message, more than the frame it reports on costs. Nothing between RTVI and the output
transport acts on these frames, so here the same ``OutputTransportMessageUrgentFrame`` is queued into
the output transport directly. Frames stay the only interface; the messages keep their order (one
observer task emits them) and their urgency (system frames jump the output transport's data queue,
as they did at every hop before).
"""

from __future__ import annotations

from typing import Any

from pipecat.frames.frames import OutputTransportMessageUrgentFrame
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.processors.frameworks.rtvi import RTVIProcessor
from pydantic import BaseModel


class DirectRTVIProcessor(RTVIProcessor):
    """An ``RTVIProcessor`` whose outgoing messages go directly to ``output`` (the transport output)."""

    def __init__(self, *, output: FrameProcessor, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._output = output

    async def push_transport_message(self, model: BaseModel, exclude_none: bool = True) -> None:
        frame = OutputTransportMessageUrgentFrame(message=model.model_dump(exclude_none=exclude_none))
        await self._output.queue_frame(frame, FrameDirection.DOWNSTREAM)
