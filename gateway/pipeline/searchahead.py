"""A spoken turn's memory search, started as soon as its words are known rather than when it ends.

A voice turn's text arrives with the STT's transcript, a few milliseconds after the VAD calls the
speech over; the turn itself ends ``speech_timeout_secs`` later (the caller may go on), and only then
does the memory service search before the LLM runs. ``SearchAhead`` sees each transcript as the STT
pushes it and asks the session's memory service to search for the turn's text so far
(``GatewayMemoryService.search_ahead``), exactly as the user aggregator will join it
(``concatenate_aggregated_text``); when the turn ends with that text, its memories are ready (at 20
concurrent calls the search took 15-60 ms on the critical path, ``bench/scenarios/voice_capacity.py``).
A turn that ends with other words (the caller went on) searches for them itself.

An observer, called on the pushing task (``gateway.pipeline.worker.INLINE_OBSERVERS``): it adds no
processor, queue or hop to the frames it watches.
"""

from __future__ import annotations

from pipecat.frames.frames import TranscriptionFrame, UserStoppedSpeakingFrame
from pipecat.observers.base_observer import BaseObserver, FramePushed
from pipecat.processors.frame_processor import FrameDirection
from pipecat.utils.string import TextPartForConcatenation, concatenate_aggregated_text

from memory.service import GatewayMemoryService


class SearchAhead(BaseObserver):
    def __init__(self, memory: GatewayMemoryService) -> None:
        super().__init__(observe_every_push=False)
        self._memory = memory
        self._parts: list[TextPartForConcatenation] = []

    async def on_push_frame(self, data: FramePushed) -> None:
        frame = data.frame
        if data.direction != FrameDirection.DOWNSTREAM:
            return
        if isinstance(frame, TranscriptionFrame):
            if not frame.text.strip():
                return
            # As the user aggregator keeps a turn's transcripts (``_handle_transcription``).
            self._parts.append(
                TextPartForConcatenation(
                    frame.text, includes_inter_part_spaces=frame.includes_inter_frame_spaces
                )
            )
            self._memory.search_ahead(concatenate_aggregated_text(self._parts))
        elif isinstance(frame, UserStoppedSpeakingFrame):
            self._parts = []  # the turn ended; its text went with it
