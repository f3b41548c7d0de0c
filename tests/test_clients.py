"""The same conversation through Pipecat's own clients: RTVI JSON and protobuf."""

from __future__ import annotations

import pytest

from tests.clients import rtvi, send_text
from tests.conftest import RunningGateway
from tests.pipecat_clients import PipecatClient


async def _converse(gateway: RunningGateway, serializer: str, user_id: str) -> list[str]:
    resp = await gateway.start(user_id=user_id, serializer=serializer)
    ws_url = (await resp.json())["wsUrl"]
    client = PipecatClient.rtvi(ws_url) if serializer == "rtvi" else PipecatClient.protobuf(ws_url)
    await client.start()
    try:
        if serializer == "protobuf":
            await client.send(rtvi("client-ready", {"version": "2.0.0", "about": {"library": "tests"}}))
        await client.transcript.wait_for(1)
        await client.send(send_text("My name is Ada and I sail on weekends"))
        return await client.transcript.wait_for(2)
    finally:
        await client.stop()


@pytest.mark.parametrize("serializer", ["rtvi", "protobuf"])
async def test_pipecat_client_hears_greeting_reply_and_is_remembered(
    gateway: RunningGateway, serializer: str
) -> None:
    greeting, reply = await _converse(gateway, serializer, "sailor")
    assert "nice to meet you" in greeting.lower()
    assert reply == "I heard: My name is Ada and I sail on weekends"
    await gateway.settle()

    (again, _) = await _converse(gateway, serializer, "sailor")
    assert "Ada" in again and "sail" in again
