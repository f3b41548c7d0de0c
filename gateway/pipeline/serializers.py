"""Wire formats for the WebSocket.

``protobuf`` is Pipecat's ``ProtobufFrameSerializer`` (what ``@pipecat-ai/websocket-transport`` and
Pipecat's ``WebsocketClientTransport`` speak). ``rtvi`` is RTVI JSON text as spoken by Pipecat's
``RTVIClientTransport`` — Pipecat ships only the *client* side of that, so the server side is here.

Both raise ``UndecodableFrame`` instead of quietly returning ``None`` for garbage, so the transport can
answer with an RTVI ``error`` message, count it, and close with 1007 after repeated abuse. Both hold
RTVI messages to what Pipecat's handlers can take (``check_message``): a message that would make a
handler raise deep in the pipeline is refused at the door instead, and the few errors Pipecat does
send back are scrubbed of Python exception text on the way out (``public_message``).
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
# The frames a protobuf client is sent: the kinds ``@pipecat-ai/websocket-transport`` 1.7.x decodes
# (``audio`` and ``message``; its deserializer throws "Unknown frame kind" for any other, and the browser
# console shows it). Pipecat 1.14 also writes an ``interruption`` on every user turn; clients learn of
# interruptions from RTVI messages instead. Its end and cancel frames have no wire form at all.
CLIENT_FRAMES = (OutputAudioRawFrame, OutputTransportMessageFrame, OutputTransportMessageUrgentFrame)
MAX_DEPTH = 32
SAMPLE_RATES = range(8000, 48001)
CHANNELS = (1, 2)


class UndecodableFrame(ValueError):
    """A client message that is not a frame of the negotiated protocol."""


def _check_value(value: Any, depth: int = 0) -> None:
    """Bounded nesting, and text that is real Unicode (JSON can escape lone surrogates into a string)."""
    if depth > MAX_DEPTH:
        raise UndecodableFrame("message nested too deeply")
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise UndecodableFrame("text is not valid Unicode") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_value(key, depth + 1)
            _check_value(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_value(item, depth + 1)


def decode_json(data: str | bytes) -> Any:
    """A client's JSON document, or ``UndecodableFrame``: whatever the decoder fails with is the client's.

    Not only ``JSONDecodeError``: bytes in no Unicode encoding raise ``UnicodeDecodeError``, an integer
    with more digits than ``sys.get_int_max_str_digits()`` (4,300) a plain ``ValueError``, and nesting
    deeper than the interpreter recurses ``RecursionError``. Each once closed the session with 1011.
    """
    try:
        return json.loads(data)
    except (ValueError, TypeError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError included
        raise UndecodableFrame("not JSON") from e


def _audio_format(data: dict[str, Any]) -> tuple[int, int]:
    rate, channels = data.get("sampleRate", 16000), data.get("numChannels", 1)
    if type(rate) is not int or rate not in SAMPLE_RATES:
        raise UndecodableFrame("sampleRate must be an integer from 8000 to 48000")
    if type(channels) is not int or channels not in CHANNELS:
        raise UndecodableFrame("numChannels must be 1 or 2")
    return rate, channels


def check_message(message: Any) -> dict[str, Any]:
    """An RTVI client message Pipecat's RTVI processor can handle without raising, or ``UndecodableFrame``."""
    if not isinstance(message, dict) or message.get("label") != RTVI.MESSAGE_LABEL:
        raise UndecodableFrame("not an RTVI message")
    if not isinstance(message.get("type"), str):
        raise UndecodableFrame("RTVI message without a type")
    _check_value(message)
    kind, data = message["type"], message.get("data")
    if kind in ("raw-audio", "raw-audio-batch"):
        if not isinstance(data, dict):
            raise UndecodableFrame(f"{kind} without data")
        _audio_format(data)
        field = "base64Audio" if kind == "raw-audio" else "base64AudioBatch"
        chunks = data.get(field)
        if not isinstance(chunks, list if kind == "raw-audio-batch" else str):
            raise UndecodableFrame(f"{kind} needs {field}")
    return message


def public_message(message: dict[str, Any]) -> dict[str, Any]:
    """An outgoing RTVI message with any Python exception or validation text replaced.

    Pipecat's RTVI processor answers a failing handler with ``Exception processing message: <str(e)>``
    and invalid data with pydantic's error text (model names, the input, a docs link with the library
    version); a client needs to know its message was refused, not our internals.
    """
    if message.get("type") not in ("error", "error-response"):
        return message
    data = message.get("data")
    if not isinstance(data, dict) or not isinstance(text := data.get("error"), str):
        return message
    if text.startswith("Exception processing message"):
        public = "could not process the message"
    elif "validation error" in text or "errors.pydantic.dev" in text:
        public = "invalid message data"
    else:
        return message
    return {**message, "data": {**data, "error": public}}


class RTVIJsonSerializer(FrameSerializer):
    """Server side of RTVI over a JSON text WebSocket: RTVI messages out, client messages in."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(params=FrameSerializer.InputParams(ignore_rtvi_messages=False), **kwargs)
        self._next_id = 0

    async def serialize(self, frame: Frame) -> str | bytes | None:
        if isinstance(frame, (OutputTransportMessageFrame, OutputTransportMessageUrgentFrame)):
            message = frame.message
            if isinstance(message, dict) and message.get("label") == RTVI.MESSAGE_LABEL:
                return json.dumps(public_message(message))
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
        message = check_message(decode_json(data))
        if message["type"] == "raw-audio":
            payload = message["data"]
            rate, channels = _audio_format(payload)
            try:
                audio = base64.b64decode(payload["base64Audio"], validate=True)
            except (binascii.Error, ValueError) as e:
                raise UndecodableFrame("raw-audio is not base64") from e
            if len(audio) % (2 * channels):
                raise UndecodableFrame("raw-audio must be whole 16-bit samples")
            return InputAudioRawFrame(audio=audio, sample_rate=rate, num_channels=channels)
        return InputTransportMessageFrame(message=message)


class StrictProtobufSerializer(ProtobufFrameSerializer):
    """Pipecat's protobuf serializer, reporting garbage instead of raising DecodeError or logging, and
    writing only the frame kinds browser clients decode (``CLIENT_FRAMES``)."""

    async def deserialize(self, data: str | bytes) -> Frame | None:
        if not isinstance(data, (bytes, bytearray)):
            raise UndecodableFrame("protobuf frames are binary")
        try:
            frame = await super().deserialize(bytes(data))
        except Exception as e:
            raise UndecodableFrame("not a protobuf frame") from e
        if frame is None:
            raise UndecodableFrame("unsupported protobuf frame")
        if isinstance(frame, InputTransportMessageFrame):
            check_message(frame.message)
        elif isinstance(frame, InputAudioRawFrame):
            if frame.sample_rate not in SAMPLE_RATES or frame.num_channels not in CHANNELS:
                raise UndecodableFrame("audio must be 8000-48000 Hz, 1 or 2 channels")
        return frame

    async def serialize(self, frame: Frame) -> str | bytes | None:
        if not isinstance(frame, CLIENT_FRAMES):
            return None
        if isinstance(frame, (OutputTransportMessageFrame, OutputTransportMessageUrgentFrame)) and isinstance(
            frame.message, dict
        ):
            scrubbed = public_message(frame.message)
            if scrubbed is not frame.message:
                frame = type(frame)(message=scrubbed)
        return await super().serialize(frame)


# The wire formats by the name a client asks for (``/start``'s ``serializer``, ``?serializer=``); the
# first is the default. A new format is one class and one entry here.
SERIALIZER_CLASSES: dict[str, type[FrameSerializer]] = {
    "protobuf": StrictProtobufSerializer,
    "rtvi": RTVIJsonSerializer,
}
assert tuple(SERIALIZER_CLASSES) == SERIALIZERS


def create_serializer(name: str) -> FrameSerializer:
    try:
        return SERIALIZER_CLASSES[name]()
    except KeyError:
        raise ValueError(f"unknown serializer {name!r}; expected one of {', '.join(SERIALIZERS)}") from None
