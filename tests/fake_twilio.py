"""Twilio's side of a phone call, played locally: the voice webhook, the Media Stream, the REST API.

* ``TwilioCall`` is what Twilio does when a number rings: it POSTs the number's webhook (form params
  ``CallSid``, ``AccountSid``, ``From``, …) signed with ``X-Twilio-Signature`` by the ``twilio``
  package's own ``RequestValidator.compute_signature``, reads the TwiML, opens the ``<Stream>``
  WebSocket (signed over its URL), says ``connected`` and ``start``, then streams the caller's audio:
  a ``media`` event every 20 ms, in real time, silence when the caller says nothing (as Twilio does).
  The audio both ways goes through Pipecat's own ``TwilioFrameSerializer`` (8 kHz μ-law in JSON): what
  the caller says is serialised by it, what the bot says is deserialised by it. ``clear`` and ``mark``
  events are kept with their arrival times.
* ``FakeTwilioAPI`` answers the REST call a hang-up makes (``POST /2010-04-01/Accounts/{AccountSid}/
  Calls/{CallSid}.json``, ``Status=completed``, HTTP basic auth) and records it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, cast
from xml.etree import ElementTree

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer
from pipecat.frames.frames import InputAudioRawFrame, OutputAudioRawFrame
from pipecat.processors.frame_processor import FrameProcessorSetup
from pipecat.serializers.twilio import TwilioFrameSerializer
from twilio.request_validator import RequestValidator

RATE = 8000
FRAME_BYTES = RATE // 50 * 2  # 20 ms of 16-bit PCM: one media event


def sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


@dataclass(frozen=True)
class HangUp:
    account_sid: str
    call_sid: str
    status: str
    authorization: str | None


@dataclass
class FakeTwilioAPI:
    hang_ups: list[HangUp] = field(default_factory=list)
    server: TestServer | None = None

    @property
    def base_url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/2010-04-01/Accounts/{account}/Calls/{call}.json", self._update_call)
        self.server = TestServer(app, host="127.0.0.1", port=0)
        await self.server.start_server()

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()

    async def _update_call(self, request: web.Request) -> web.Response:
        form = await request.post()
        call = request.match_info["call"]
        self.hang_ups.append(
            HangUp(
                account_sid=request.match_info["account"],
                call_sid=call,
                status=str(form.get("Status")),
                authorization=request.headers.get("Authorization"),
            )
        )
        return web.json_response({"sid": call, "status": "completed"})

    async def wait_for_hang_up(self, call_sid: str, timeout: float = 10.0) -> HangUp:
        async with asyncio.timeout(timeout):
            while True:
                for hang_up in self.hang_ups:
                    if hang_up.call_sid == call_sid:
                        return hang_up
                await asyncio.sleep(0.02)


def basic_auth(account_sid: str, auth_token: str) -> str:
    return "Basic " + base64.b64encode(f"{account_sid}:{auth_token}".encode()).decode()


@dataclass
class TwilioCall:
    """One inbound call to ``webhook_url`` from ``caller`` (None: a withheld number)."""

    http: aiohttp.ClientSession
    webhook_url: str
    auth_token: str
    caller: str | None = "+15551234567"
    call_sid: str = field(default_factory=lambda: sid("CA"))
    account_sid: str = field(default_factory=lambda: sid("AC"))
    stream_sid: str = field(default_factory=lambda: sid("MZ"))
    ws: aiohttp.ClientWebSocketResponse | None = None
    stream_url: str = ""
    # What the bot said: (arrival time, 8 kHz PCM) per media event; and the clears it sent.
    heard: list[tuple[float, bytes]] = field(default_factory=list)
    clears: list[float] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    started_at: float = 0.0  # when the ``start`` event was sent (monotonic)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    _outgoing: bytearray = field(default_factory=bytearray)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _serializer: TwilioFrameSerializer | None = None
    _said_until: float = 0.0

    def params(self) -> dict[str, str]:
        params = {
            "AccountSid": self.account_sid,
            "ApiVersion": "2010-04-01",
            "CallSid": self.call_sid,
            "CallStatus": "ringing",
            "Direction": "inbound",
            "From": self.caller or "anonymous",
            "To": "+15557654321",
        }
        return params

    def sign(self, url: str, params: dict[str, str] | None = None) -> str:
        return cast(str, RequestValidator(self.auth_token).compute_signature(url, params or {}))

    async def ring(self, *, signature: str | None = "valid") -> tuple[int, str]:
        """POST the webhook as Twilio does; ``signature``: "valid", None (no header) or a literal."""
        params = self.params()
        headers = {}
        if signature == "valid":
            headers["X-Twilio-Signature"] = self.sign(self.webhook_url, params)
        elif signature is not None:
            headers["X-Twilio-Signature"] = signature
        async with self.http.post(self.webhook_url, data=params, headers=headers) as resp:
            body = await resp.text()
            if resp.status == 200 and "<Stream" in body:
                stream = ElementTree.fromstring(body).find("./Connect/Stream")
                assert stream is not None
                self.stream_url = stream.attrib["url"]
            return resp.status, body

    async def open_stream(self, *, signature: str | None = "valid") -> int:
        """Open the ``<Stream>`` WebSocket; the HTTP status of a refused upgrade, or 101."""
        headers = {}
        if signature == "valid":
            headers["X-Twilio-Signature"] = self.sign(self.stream_url)
        elif signature is not None:
            headers["X-Twilio-Signature"] = signature
        try:
            self.ws = await self.http.ws_connect(self.stream_url, headers=headers, heartbeat=None)
        except aiohttp.WSServerHandshakeError as e:
            return e.status
        return 101

    async def start(self) -> None:
        """``connected`` and ``start``, then 20 ms media events in real time until the call ends."""
        assert self.ws is not None
        self._serializer = TwilioFrameSerializer(
            self.stream_sid,
            params=TwilioFrameSerializer.InputParams(sample_rate=RATE, auto_hang_up=False),
        )
        # With ``sample_rate`` given, setup reads nothing else from its argument.
        await self._serializer.setup(cast(FrameProcessorSetup, None))
        await self.ws.send_str(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        start = {
            "event": "start",
            "sequenceNumber": "1",
            "start": {
                "accountSid": self.account_sid,
                "streamSid": self.stream_sid,
                "callSid": self.call_sid,
                "tracks": ["inbound"],
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": RATE, "channels": 1},
                "customParameters": {},
            },
            "streamSid": self.stream_sid,
        }
        self.started_at = time.monotonic()
        await self.ws.send_str(json.dumps(start))
        self._tasks = [
            asyncio.create_task(self._listen(), name="twilio-listen"),
            asyncio.create_task(self._stream(), name="twilio-stream"),
        ]

    async def call(self) -> None:
        """Ring, open the stream and start it (the usual path)."""
        status, body = await self.ring()
        assert status == 200, body
        assert await self.open_stream() == 101
        await self.start()

    def say(self, pcm: bytes) -> float:
        """Queue the caller's speech (8 kHz PCM) behind what is queued; returns the monotonic time at
        which its last sample will have been sent."""
        now = time.monotonic()
        self._said_until = max(self._said_until, now) + len(pcm) / 2 / RATE
        self._outgoing += pcm
        return self._said_until

    async def _stream(self) -> None:
        assert self.ws is not None and self._serializer is not None
        silence = bytes(FRAME_BYTES)
        loop = asyncio.get_running_loop()
        began = loop.time()
        n = 0
        while not self.ws.closed:
            n += 1
            await asyncio.sleep(max(0.0, began + n * 0.02 - loop.time()))
            chunk = bytes(self._outgoing[:FRAME_BYTES])
            del self._outgoing[:FRAME_BYTES]
            chunk += silence[len(chunk) :]
            payload = await self._serializer.serialize(OutputAudioRawFrame(chunk, RATE, 1))
            try:
                await self.ws.send_str(cast(str, payload))
            except ConnectionError:
                return

    async def _listen(self) -> None:
        assert self.ws is not None and self._serializer is not None
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            event = json.loads(msg.data)
            now = time.monotonic()
            if event.get("event") == "media":
                assert event.get("streamSid") == self.stream_sid
                frame = await self._serializer.deserialize(msg.data)
                assert isinstance(frame, InputAudioRawFrame) and frame.sample_rate == RATE
                self.heard.append((now, frame.audio))
            else:
                self.events.append(event)
                if event.get("event") == "clear":
                    self.clears.append(now)
        self.closed.set()

    async def first_audio(self, timeout: float = 10.0) -> float:
        """When the bot's first audio arrived (monotonic)."""
        async with asyncio.timeout(timeout):
            while not self.heard:
                await asyncio.sleep(0.005)
        return self.heard[0][0]

    def heard_seconds(self, after: float = 0.0) -> float:
        return sum(len(pcm) for at, pcm in self.heard if at >= after) / 2 / RATE

    async def quiet(self, seconds: float = 0.3, timeout: float = 15.0) -> None:
        """Until no bot audio has arrived for ``seconds``."""
        async with asyncio.timeout(timeout):
            while not self.heard or time.monotonic() - self.heard[-1][0] < seconds:
                await asyncio.sleep(0.02)

    async def hang_up(self) -> None:
        """The caller hangs up: Twilio says ``stop`` and closes the stream."""
        if self.ws is not None and not self.ws.closed:
            stop = {"event": "stop", "streamSid": self.stream_sid, "stop": {"callSid": self.call_sid}}
            await self.ws.send_str(json.dumps(stop))
            await self.ws.close()
        await self.finish()

    async def finish(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, ConnectionError):
                pass
        if self.ws is not None and not self.ws.closed:
            await self.ws.close()
