"""RTVI's order — client-ready, bot-ready, then the greeting — and a text session that greets before its
pipeline exists, saying exactly what Pipecat's pipeline would have said."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pipecat.frames.frames import InputTransportMessageFrame, OutputTransportMessageUrgentFrame
from pipecat.serializers.protobuf import ProtobufFrameSerializer

from gateway.keys import registry_key
from gateway.pipeline.session import Session
from tests.clients import CLIENT_READY, WireClient, rtvi, send_text
from tests.conftest import GatewayFactory, RunningGateway

pytestmark = pytest.mark.parametrize("serializer", ["rtvi", "protobuf"])

GREETING = ("bot-llm-started", "bot-llm-text", "bot-transcription", "bot-llm-stopped", "bot-output")


def _session(gateway: RunningGateway) -> Session:
    sessions = list(gateway.app[registry_key].sessions)
    assert len(sessions) == 1
    return sessions[0]


async def _live(gateway: RunningGateway, timeout: float = 10.0) -> Session:
    session = _session(gateway)
    async with asyncio.timeout(timeout):
        while not session.live:
            await asyncio.sleep(0.01)
    return session


def _types(messages: list[dict[str, Any]]) -> list[str]:
    return [m["type"] for m in messages if m.get("type") != "metrics"]


async def _greeting(client: WireClient) -> list[dict[str, Any]]:
    """Every message up to and including the greeting's last bot-output (the one after bot-llm-stopped
    whose text ends the greeting)."""
    text = await client.bot_turn()
    while True:
        message = await client.next("bot-output")
        if text.endswith(message["data"]["text"]):
            return client.received


async def test_bot_ready_comes_before_the_greeting(gateway: RunningGateway, serializer: str) -> None:
    client = await gateway.connect(serializer=serializer, user_id="ordered")
    received = await _greeting(client)
    types = _types(received)
    assert types[0] == "bot-ready", types
    assert types.index("bot-ready") < types.index("bot-llm-started")
    assert types.count("bot-ready") == 1


async def test_the_pipeline_agrees_with_the_handshake_and_never_answers_twice(
    gateway: RunningGateway, serializer: str
) -> None:
    """The client's client-ready is replayed into the pipeline once it is built; Pipecat's own answer
    must be what the session already wrote, and must not reach the client a second time."""
    client = await gateway.connect(serializer=serializer, user_id="agreed")
    await _greeting(client)
    session = await _live(gateway)
    assert await client.say("are you there") == "I heard: are you there"
    parts = session._parts
    assert parts is not None and parts.rtvi is not None and parts.rtvi.mismatches == 0
    assert not parts.rtvi._answered, "Pipecat never produced the bot-ready the session answered for it"
    assert _types(client.received).count("bot-ready") == 1


@pytest.mark.parametrize(
    "data",
    [
        {"version": "1.4.0", "about": {"library": "legacy"}},  # a 1.x client: its version echoed
        {"version": "9.0.0"},  # another major: error-response, then bot-ready
        {"version": "two"},  # malformed: error-response, then bot-ready
        {},  # no version: error-response, then bot-ready
    ],
)
async def test_every_client_ready_gets_pipecats_own_answer(
    make_gateway: GatewayFactory, serializer: str, data: dict[str, Any]
) -> None:
    gateway = await make_gateway()
    resp = await gateway.start(user_id="versions", serializer=serializer)
    ws = await gateway.http.ws_connect((await resp.json())["wsUrl"])
    client = WireClient(ws, serializer)
    gateway.clients.append(client)
    await client.send(rtvi("client-ready", data, "hello-1"))
    ready = await client.next("bot-ready")
    assert ready["id"] == "hello-1"
    await client.bot_turn()  # the greeting
    session = await _live(gateway)
    assert await client.say("still here") == "I heard: still here"
    assert session._parts is not None and session._parts.rtvi is not None
    assert session._parts.rtvi.mismatches == 0
    errors = [m for m in client.received if m["type"] == "error-response"]
    assert len(errors) == (0 if data.get("version") == "1.4.0" else 1)
    if data.get("version") == "1.4.0":
        assert ready["data"]["version"] == "1.4.0"


async def test_a_line_the_session_says_itself_is_what_the_pipeline_says(
    gateway: RunningGateway, serializer: str
) -> None:
    """The greeting is written before the pipeline exists; a drain's farewell once it has the
    conversation goes through the LLM service, text processor and RTVI's observer. Same line, same
    messages (segment IDs aside: they are frame IDs)."""
    client = await gateway.connect(serializer=serializer, user_id="same-words")
    await _greeting(client)
    greeting = next(m["data"]["text"] for m in client.received if m["type"] == "bot-llm-text")
    session = await _live(gateway)
    early = [m for m in client.received if m["type"] in GREETING]

    client.received.clear()
    await session.close(farewell=greeting)
    await client.closed()
    late = [m for m in client.received if m["type"] in GREETING]

    def shape(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for m in messages:
            m = dict(m)
            if "data" in m and "segment_id" in m["data"]:
                m["data"] = {**m["data"], "segment_id": 0}
            out.append(m)
        return out

    assert shape(early) == shape(late)
    assert sum(1 for m in early if m["type"] == "bot-output") >= 2  # the greeting's sentences


async def test_greet_on_connect_is_an_opt_in(make_gateway: GatewayFactory, serializer: str) -> None:
    gateway = await make_gateway(tenants=[{"name": "eager", "greeting": {"after": "connect"}}])
    resp = await gateway.start(tenant="eager", user_id="early-bird", serializer=serializer)
    client = WireClient(await gateway.http.ws_connect((await resp.json())["wsUrl"]), serializer)
    gateway.clients.append(client)
    assert "nice to meet you" in (await client.bot_turn()).lower()  # before it said client-ready
    assert "bot-ready" not in _types(client.received)
    await client.ready()
    assert _types(client.received).count("bot-ready") == 1


async def test_a_client_that_never_says_client_ready_is_greeted_after_the_timeout(
    make_gateway: GatewayFactory, serializer: str
) -> None:
    gateway = await make_gateway(client_ready_timeout_secs=0.3)
    resp = await gateway.start(user_id="silent", serializer=serializer)
    client = WireClient(await gateway.http.ws_connect((await resp.json())["wsUrl"]), serializer)
    gateway.clients.append(client)
    started = asyncio.get_running_loop().time()
    assert "nice to meet you" in (await client.bot_turn()).lower()
    assert asyncio.get_running_loop().time() - started >= 0.25
    assert "bot-ready" not in _types(client.received)


async def test_a_turn_typed_before_the_pipeline_exists_is_answered_in_order(
    make_gateway: GatewayFactory, serializer: str
) -> None:
    """The pipeline is built after the greeting; what the client sends meanwhile waits for it, in order,
    and makes it be built at once."""
    gateway = await make_gateway(build_defer_secs=30)
    other = await gateway.start(user_id="holds-the-builds-back", serializer=serializer)
    assert other.status == 200  # owed a greeting until it connects: builds wait (up to 30 s)
    client = await gateway.connect(serializer=serializer, user_id="hasty")
    await client.send(send_text("first"))
    await client.send(send_text("second"))
    assert await client.bot_turn() != ""  # the greeting
    assert await client.bot_turn() == "I heard: first"
    assert await client.bot_turn() == "I heard: second"


async def test_a_turn_typed_by_a_client_that_leaves_before_the_pipeline_exists_is_stored(
    make_gateway: GatewayFactory, serializer: str
) -> None:
    gateway = await make_gateway(build_defer_secs=30)
    await gateway.start(user_id="holds-the-builds-back", serializer=serializer)
    client = await gateway.connect(serializer=serializer, user_id="in-a-hurry")
    await client.bot_turn()
    await client.send(send_text("remember my locker is number 42"))
    await client.ws.close()
    await gateway.settle_sessions(1)  # the other one, never connected, still holds its slot

    again = await gateway.connect(serializer=serializer, user_id="in-a-hurry")
    assert "locker is number 42" in await again.bot_turn()


async def test_protobuf_greeting_is_rtvi_messages_only(gateway: RunningGateway, serializer: str) -> None:
    """What a protobuf client gets for the greeting is RTVI messages inside message frames (decoded here
    with Pipecat's own serializer), nothing the JS transport cannot read."""
    if serializer != "protobuf":
        pytest.skip("protobuf only")
    resp = await gateway.start(user_id="frames", serializer=serializer)
    ws = await gateway.http.ws_connect((await resp.json())["wsUrl"])
    proto = ProtobufFrameSerializer()
    hello = await proto.serialize(
        OutputTransportMessageUrgentFrame(message=rtvi("client-ready", CLIENT_READY))
    )
    assert isinstance(hello, bytes)
    await ws.send_bytes(hello)
    kinds = []
    async with asyncio.timeout(10):
        while "bot-llm-stopped" not in kinds:
            frame = await proto.deserialize((await ws.receive()).data)
            kinds.append(
                frame.message["type"] if isinstance(frame, InputTransportMessageFrame) else "undecodable"
            )
    await ws.close()
    assert "undecodable" not in kinds
