"""Wire formats for the WebSocket.

``protobuf`` is Pipecat's ``ProtobufFrameSerializer`` (what ``@pipecat-ai/websocket-transport`` and
Pipecat's ``WebsocketClientTransport`` speak). ``rtvi`` is RTVI JSON text as spoken by Pipecat's
``RTVIClientTransport`` — Pipecat ships only the *client* side of that, so the server side is here.

Both raise ``UndecodableFrame`` instead of quietly returning ``None`` for garbage, so the transport can
answer with an RTVI ``error`` message, count it, and close with 1007 after repeated abuse.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import pipecat.processors.frameworks.rtvi.models as RTVI
from pipecat.frames.frames import (
    Frame,
    InputAudioRawFrame,
    InputTransportMessageFrame,
    OutputAudioRawFrame,
    OutputTransportMessageFrame,
    OutputTransportMessageUrgentFrame,
)
from pipecat.serializers.base_serializer import FrameSerializer
from pipecat.serializers.protobuf import ProtobufFrameSerializer

SERIALIZERS = ("protobuf", "rtvi")


class UndecodableFrame(ValueError):
    """A client message that is not a frame of the negotiated protocol."""


class RTVIJsonSerializer(FrameSerializer):
    """Server side of RTVI over a JSON text WebSocket: RTVI messages out, client messages in."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(params=FrameSerializer.InputParams(ignore_rtvi_messages=False), **kwargs)
        self._next_id = 0

    async def serialize(self, frame: Frame) -> str | bytes | None:
        if isinstance(frame, (OutputTransportMessageFrame, OutputTransportMessageUrgentFrame)):
            message = frame.message
            if isinstance(message, dict) and message.get("label") == RTVI.MESSAGE_LABEL:
                return json.dumps(message)
            return None
        if isinstance(frame, OutputAudioRawFrame):
            self._next_id += 1
            return json.dumps(
                {
                    "label": RTVI.MESSAGE_LABEL,
                    "type": "raw-audio",
                    "id": str(self._next_id),
                    "data": {
                        "base64Audio": base64.b64encode(frame.audio).decode("ascii"),
                        "sampleRate": frame.sample_rate,
                        "numChannels": frame.num_channels,
                    },
                }
            )
        return None

    async def deserialize(self, data: str | bytes) -> Frame | None:
        try:
            message = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as e:
            raise UndecodableFrame("not JSON") from e
        if not isinstance(message, dict) or message.get("label") != RTVI.MESSAGE_LABEL:
            raise UndecodableFrame("not an RTVI message")
        if not isinstance(message.get("type"), str):
            raise UndecodableFrame("RTVI message without a type")
        if message["type"] == "raw-audio":
            payload = message.get("data")
            if not isinstance(payload, dict):
                raise UndecodableFrame("raw-audio without data")
            try:
                audio = base64.b64decode(str(payload.get("base64Audio", "")), validate=True)
                return InputAudioRawFrame(
                    audio=audio,
                    sample_rate=int(payload.get("sampleRate", 16000)),
                    num_channels=int(payload.get("numChannels", 1)),
                )
            except (binascii.Error, ValueError, TypeError) as e:
                raise UndecodableFrame("bad raw-audio") from e
        return InputTransportMessageFrame(message=message)


class StrictProtobufSerializer(ProtobufFrameSerializer):
    """Pipecat's protobuf serializer, reporting garbage instead of raising DecodeError or logging."""

    async def deserialize(self, data: str | bytes) -> Frame | None:
        if not isinstance(data, (bytes, bytearray)):
            raise UndecodableFrame("protobuf frames are binary")
        try:
            frame = await super().deserialize(bytes(data))
        except Exception as e:
            raise UndecodableFrame("not a protobuf frame") from e
        if frame is None:
            raise UndecodableFrame("unsupported protobuf frame")
        return frame


def create_serializer(name: str) -> FrameSerializer:
    if name == "rtvi":
        return RTVIJsonSerializer()
    if name == "protobuf":
        return StrictProtobufSerializer()
    raise ValueError(f"unknown serializer {name!r}; expected one of {', '.join(SERIALIZERS)}")
