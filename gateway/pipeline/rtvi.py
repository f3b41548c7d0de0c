"""Pipecat's RTVI processor, with its messages written by the output transport straight away.

Stock ``RTVIProcessor.push_transport_message`` pushes each RTVI message (``bot-llm-text`` per LLM token,
``bot-output`` per sentence, ``bot-llm-started``/``-stopped``, ``bot-ready``, errors) downstream from
the top of the pipeline, so every message crosses every processor's queue — input transport, user
aggregator, memory, LLM, … — before the output transport serializes it: nine queue hops and task
wake-ups per message, more than the frame it reports on costs. Nothing between RTVI and the output
transport acts on these frames, and the output transport's handling of an
``OutputTransportMessageUrgentFrame`` is ``send_message(frame)``, ahead of its data queue. So here the
frame goes to the output transport's ``send_message_now``: written on the producing task (RTVI's
observer, which the session's ``ObserverHub`` calls as frames are pushed) when the socket takes it
without waiting, else queued to the output transport, which writes it under the send timeout from its
own task. Frames stay the interface; messages keep their order and their urgency. Together: the
greeting's four messages are written while the greeting is pushed, with no task hop; floor scenario
(connect → greeting / bare echo) 2.93x and 2.95x against 3.02x and 3.19x without, alternated runs.
"""

from __future__ import annotations

from typing import Any

from pipecat.frames.frames import OutputTransportMessageUrgentFrame
from pipecat.processors.frameworks.rtvi import RTVIProcessor
from pydantic import BaseModel

from gateway.pipeline.transport import AiohttpWebsocketOutputTransport


class DirectRTVIProcessor(RTVIProcessor):
    """An ``RTVIProcessor`` whose outgoing messages go directly to ``output`` (the transport output)."""

    def __init__(self, *, output: AiohttpWebsocketOutputTransport, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._output = output

    async def push_transport_message(self, model: BaseModel, exclude_none: bool = True) -> None:
        frame = OutputTransportMessageUrgentFrame(message=model.model_dump(exclude_none=exclude_none))
        await self._output.send_message_now(frame)
