"""What a session needs of a phone call's media stream, whoever carries the call.

A phone call is a voice session whose socket is a telephony provider's media stream (Twilio's:
``gateway.telephony``). It differs from a browser's in four ways the session cares about, and in
nothing else:

* its wire format is the provider's (8 kHz μ-law in JSON events, for Twilio): ``CallMedia`` is the
  session's ``FrameSerializer``;
* it sends no RTVI ``client-ready``: the session greets once the stream has started (``started``),
  which is also the first moment audio can be sent back;
* its audio is 8 kHz both ways (``SAMPLE_RATE``): the VAD and STT take it as it comes, and the bot's
  speech is resampled once, in the output transport;
* when the session ends first, the call must end too (``hang_up``): a caller should never be left
  on a silent line.
"""

from __future__ import annotations

import abc
import asyncio

from pipecat.serializers.base_serializer import FrameSerializer

# The telephone network's rate: what a phone stream carries both ways.
SAMPLE_RATE = 8000


class CallMedia(FrameSerializer):
    """A provider's media stream, as a Pipecat serializer plus the call's lifecycle."""

    def __init__(self, params: FrameSerializer.InputParams | None = None) -> None:
        super().__init__(params)
        self.started = asyncio.Event()

    @abc.abstractmethod
    async def hang_up(self) -> None:
        """End the call if the caller is still on it (bounded; never raises)."""

    def describe(self) -> dict[str, str]:
        """What a log line may say about the call (no number, no secret)."""
        return {}
