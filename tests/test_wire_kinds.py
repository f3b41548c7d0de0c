"""What the gateway writes to a protobuf client is only what ``@pipecat-ai/websocket-transport`` decodes.

The JS transport 1.7.x (``ProtobufFrameSerializer.deserialize`` in its ``dist/index.module.js``) decodes
the ``audio`` and ``message`` kinds of Pipecat's ``Frame`` and throws ``Unknown frame kind`` for any
other, which its browser console shows as an error. Pipecat 1.14's serializer writes ``interruption``
too, once per user turn.
"""

from __future__ import annotations

import asyncio

import aiohttp
from pipecat.frames.protobufs import frames_pb2

from tests.clients import send_text
from tests.conftest import RunningGateway

JS_CLIENT_KINDS = {"audio", "message"}


async def test_a_protobuf_client_gets_only_frame_kinds_the_js_transport_decodes(
    gateway: RunningGateway,
) -> None:
    """A greeting and a user turn (which interrupts the bot) bring only audio and message frames."""
    client = await gateway.connect(serializer="protobuf", user_id="u1")
    await client.bot_turn()
    await client.send(send_text("hello there"))
    kinds: list[str | None] = []
    async with asyncio.timeout(10):
        while True:
            msg = await client.ws.receive()
            assert msg.type == aiohttp.WSMsgType.BINARY, msg
            frame = frames_pb2.Frame.FromString(msg.data)  # type: ignore[attr-defined]
            kinds.append(frame.WhichOneof("frame"))
            if kinds[-1] == "message" and '"bot-llm-stopped"' in frame.message.data:
                break
    assert set(kinds) <= JS_CLIENT_KINDS, kinds
