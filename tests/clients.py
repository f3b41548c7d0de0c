"""Real WebSocket clients for tests: RTVI JSON text and Pipecat protobuf, over aiohttp."""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from pipecat.frames.frames import InputTransportMessageFrame, OutputTransportMessageFrame
from pipecat.serializers.protobuf import ProtobufFrameSerializer

LABEL = "rtvi-ai"


def rtvi(type_: str, data: Any = None, id_: str | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"label": LABEL, "type": type_, "id": id_ or type_}
    if data is not None:
        message["data"] = data
    return message


CLIENT_READY = {"version": "2.0.0", "about": {"library": "tests"}}


def send_text(text: str) -> dict[str, Any]:
    return rtvi("send-text", {"content": text, "options": {"run_immediately": True, "audio_response": False}})


@dataclass
class WireClient:
    """One RTVI conversation over a real WebSocket, in either wire format."""

    ws: aiohttp.ClientWebSocketResponse
    serializer: str = "rtvi"
    received: list[dict[str, Any]] = field(default_factory=list)
    on_say: Callable[[str], None] | None = None
    _backlog: deque[dict[str, Any]] = field(default_factory=deque)
    _proto: ProtobufFrameSerializer = field(default_factory=ProtobufFrameSerializer)
    _hello_sent: bool = False

    async def hello(self) -> None:
        """``client-ready``, once: what every RTVI client sends as soon as its socket is open (the
        gateway greets after answering it with ``bot-ready``)."""
        if not self._hello_sent:
            self._hello_sent = True
            await self.send(rtvi("client-ready", CLIENT_READY))

    async def send(self, message: dict[str, Any]) -> None:
        if self.on_say is not None and message.get("type") == "send-text":
            self.on_say(str(message["data"]["content"]))
        if self.serializer == "rtvi":
            await self.ws.send_str(json.dumps(message))
        else:
            data = await self._proto.serialize(OutputTransportMessageFrame(message=message))
            assert isinstance(data, bytes)
            await self.ws.send_bytes(data)

    async def _decode(self, msg: aiohttp.WSMessage) -> dict[str, Any] | None:
        if msg.type == aiohttp.WSMsgType.TEXT:
            decoded: dict[str, Any] = json.loads(msg.data)
            return decoded
        if msg.type == aiohttp.WSMsgType.BINARY:
            frame = await self._proto.deserialize(msg.data)
            if isinstance(frame, InputTransportMessageFrame):
                return dict(frame.message)
            return None
        raise ConnectionError(f"socket closed: {msg.type.name} code={self.ws.close_code}")

    async def _read(self) -> dict[str, Any]:
        while (message := await self._decode(await self.ws.receive())) is None:
            pass
        return message

    async def next(self, *types: str, timeout: float = 10.0) -> dict[str, Any]:
        """The next message whose type is one of ``types`` (all messages are kept in ``received``)."""
        async with asyncio.timeout(timeout):
            while True:
                message = self._backlog.popleft() if self._backlog else await self._read()
                self.received.append(message)
                if not types or message.get("type") in types:
                    return message

    async def bot_turn(self, timeout: float = 10.0) -> str:
        """Text of the next bot response, assembled from ``bot-llm-text`` up to ``bot-llm-stopped``."""
        parts: list[str] = []
        await self.next("bot-llm-started", timeout=timeout)
        while True:
            message = await self.next("bot-llm-text", "bot-llm-stopped", timeout=timeout)
            if message["type"] == "bot-llm-stopped":
                return "".join(parts)
            parts.append(message["data"]["text"])

    async def ready(self, timeout: float = 10.0) -> dict[str, Any]:
        """``client-ready`` (unless sent already) → ``bot-ready``. Messages before it (a greeting sent
        on connect, ``greeting.after: connect``) are left, in order, for the next reads."""
        await self.hello()
        async with asyncio.timeout(timeout):
            while (message := await self._read()).get("type") != "bot-ready":
                self._backlog.append(message)
        self.received.append(message)
        return message

    async def say(self, text: str, timeout: float = 10.0) -> str:
        await self.send(send_text(text))
        return await self.bot_turn(timeout)

    async def closed(self, timeout: float = 10.0) -> int | None:
        """Drain until the server closes the socket; return its close code."""
        self.received.extend(self._backlog)
        self._backlog.clear()
        async with asyncio.timeout(timeout):
            while True:
                msg = await self.ws.receive()
                if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                    return self.ws.close_code
                if msg.type == aiohttp.WSMsgType.ERROR:
                    return self.ws.close_code
                decoded = await self._decode(msg)
                if decoded is not None:
                    self.received.append(decoded)


async def rtvi_client(
    ws: aiohttp.ClientWebSocketResponse, serializer: str = "rtvi", **kwargs: Any
) -> WireClient:
    """A client on an open socket that has said ``client-ready``, as Pipecat's clients do on connect."""
    client = WireClient(ws, serializer, **kwargs)
    await client.hello()
    return client


async def refusal_code(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> int | None:
    """Open ``url`` and return the close code the server ends it with straight away."""
    async with http.ws_connect(url, headers=headers) as ws:
        msg = await ws.receive(timeout=5)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), msg
        return ws.close_code
