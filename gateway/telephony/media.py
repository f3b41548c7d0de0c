"""A Twilio Media Stream as a session's wire format: Pipecat's ``TwilioFrameSerializer``, once the
stream has said who it is.

``TwilioFrameSerializer`` needs the stream's SID to address what it sends, and Twilio only tells it in
the stream's ``start`` event, after the WebSocket opened; the session's pipeline is built before that
(at the webhook, so the greeting is ready). So ``TwilioMedia`` is the session's serializer from the
start and builds Pipecat's from the ``start`` event on (``streamSid``, ``callSid``, ``accountSid``),
handing it every frame from then on: μ-law 8 kHz ``media`` both ways, ``dtmf`` in, ``clear`` out on an
interruption (barge-in).

Ending a call: the session calls ``hang_up`` when it ends, which sets the call's status to
``completed`` through Twilio's REST API (what Pipecat's ``auto_hang_up`` does on an ``EndFrame``), over
the process's shared HTTP client and bounded by a timeout, and not at all when Twilio said the stream
stopped (the caller hung up first: nothing to end). Pipecat's own hang-up is left off: it opens an
``aiohttp.ClientSession`` per call with no timeout, and its ``aiohttp.BasicAuth`` is deprecated in the
aiohttp the gateway runs (docs/pitfalls.md, "Telephony (Twilio)").
"""

from __future__ import annotations

import re
from typing import Any

import httpx2
from pipecat.frames.frames import CancelFrame, EndFrame, Frame
from pipecat.processors.frame_processor import FrameProcessorSetup
from pipecat.serializers.twilio import TwilioFrameSerializer

from gateway.logging import get_logger
from gateway.pipeline.phone import SAMPLE_RATE, CallMedia
from gateway.pipeline.serializers import UndecodableFrame, decode_json

log = get_logger(__name__)

SID = re.compile(r"^[A-Z]{2}[0-9a-f]{32}$")
# How a media event starts, as Twilio writes it and as Pipecat's json.dumps does.
MEDIA_PREFIXES = ('{"event":"media"', '{"event": "media"')
HANG_UP_TIMEOUT_SECS = 5.0
TWILIO_API = "https://api.twilio.com"


class TwilioMedia(CallMedia):
    """One call's media stream (``call_sid`` is the call the webhook answered: a stream that says it
    carries another call is refused)."""

    def __init__(
        self,
        *,
        call_sid: str,
        auth_token: str | None,
        http_client: httpx2.AsyncClient,
        api_base_url: str | None = None,
        hang_up: bool = True,
        hang_up_timeout: float = HANG_UP_TIMEOUT_SECS,
    ) -> None:
        super().__init__()
        self._call_sid = call_sid
        self._auth_token = auth_token
        self._http = http_client
        self._api_base_url = (api_base_url or TWILIO_API).rstrip("/")
        self._hang_up = hang_up and bool(auth_token)
        self._hang_up_timeout = hang_up_timeout
        self._setup: FrameProcessorSetup | None = None
        self._twilio: TwilioFrameSerializer | None = None
        self._account_sid: str | None = None
        # Twilio's ``stop``: the stream (and, with <Connect>, the call) is over on Twilio's side.
        self.stopped = False

    async def setup(self, setup: FrameProcessorSetup) -> None:  # type: ignore[override]
        self._setup = setup
        if self._twilio is not None:
            await self._twilio.setup(setup)

    async def serialize(self, frame: Frame) -> str | bytes | None:
        # Nothing can be addressed before the stream's start; an end is ``hang_up``'s business.
        if self._twilio is None or isinstance(frame, (EndFrame, CancelFrame)):
            return None
        return await self._twilio.serialize(frame)

    async def deserialize(self, data: str | bytes) -> Frame | None:
        twilio = self._twilio
        if twilio is not None and isinstance(data, str) and data.startswith(MEDIA_PREFIXES):
            # The common case (50 a second), parsed once, by Pipecat.
            frame = await self._media(twilio, data)
            if frame is not None:
                return frame
        message = decode_json(data)
        if not isinstance(message, dict) or not isinstance(event := message.get("event"), str):
            raise UndecodableFrame("not a Twilio Media Streams event")
        if event in ("media", "dtmf"):
            if twilio is None:
                raise UndecodableFrame(f"{event} before the stream's start")
            return await self._media(twilio, data)
        if event == "start":
            await self._start(message)
        elif event == "stop":
            self.stopped = True
        elif event not in ("connected", "mark"):
            raise UndecodableFrame(f"unknown Twilio event {event!r}")
        return None

    @staticmethod
    async def _media(twilio: TwilioFrameSerializer, data: str | bytes) -> Frame | None:
        try:
            return await twilio.deserialize(data)
        except (ValueError, TypeError) as e:  # a payload that is not base64, a field of the wrong type
            raise UndecodableFrame("malformed media event") from e

    async def _start(self, message: dict[str, Any]) -> None:
        if self._twilio is not None:
            raise UndecodableFrame("a second start")
        start = message.get("start")
        if not isinstance(start, dict):
            raise UndecodableFrame("start without its details")
        stream_sid, call_sid, account_sid = (start.get(k) for k in ("streamSid", "callSid", "accountSid"))
        stream_sid = stream_sid or message.get("streamSid")
        for name, sid in (("streamSid", stream_sid), ("callSid", call_sid), ("accountSid", account_sid)):
            if not isinstance(sid, str) or not SID.fullmatch(sid):
                raise UndecodableFrame(f"start with a malformed {name}")
        if call_sid != self._call_sid:
            raise UndecodableFrame("a stream for another call")
        assert isinstance(stream_sid, str) and isinstance(account_sid, str)
        self._account_sid = account_sid
        params = TwilioFrameSerializer.InputParams(twilio_sample_rate=SAMPLE_RATE, auto_hang_up=False)
        twilio = TwilioFrameSerializer(stream_sid, call_sid=call_sid, account_sid=account_sid, params=params)
        if self._setup is not None:
            await twilio.setup(self._setup)
        self._twilio = twilio
        self.started.set()

    async def hang_up(self) -> None:
        account_sid, token = self._account_sid, self._auth_token
        if account_sid is None or token is None or self.stopped or not self._hang_up:
            return
        self.stopped = True
        url = f"{self._api_base_url}/2010-04-01/Accounts/{account_sid}/Calls/{self._call_sid}.json"
        try:
            response = await self._http.post(
                url, data={"Status": "completed"}, auth=(account_sid, token), timeout=self._hang_up_timeout
            )
        except httpx2.HTTPError as e:
            log.warning("telephony.hang_up_failed", error=type(e).__name__)
            return
        # 404: the call had ended already (Twilio error 20404).
        if response.status_code not in (200, 404):
            log.warning("telephony.hang_up_failed", status=response.status_code)

    def describe(self) -> dict[str, str]:
        return {"provider": "twilio"}
