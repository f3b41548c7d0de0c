"""A network blip does not end the conversation: the client connects again with the same ``{wsUrl,
token}`` (all a browser app has) and the session goes on. Real sockets through a TCP proxy that resets
them, as a network that blinks does (no close frame)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest

from gateway import closecodes
from tests.clients import WireClient, refusal_code, rtvi_client
from tests.conftest import GatewayFactory, RunningGateway
from tests.fake_llm import FakeLLM
from tests.faults import TcpProxy, tcp_proxy


@pytest.fixture
async def proxy(gateway: RunningGateway) -> AsyncIterator[TcpProxy]:
    assert gateway.server.port is not None
    async with tcp_proxy(gateway.server.port) as proxy:
        yield proxy


async def _ws_url(gateway: RunningGateway, proxy: TcpProxy, serializer: str = "rtvi", **ids: str) -> str:
    """``POST /start`` through the proxy: the ``wsUrl`` it answers goes through it too."""
    resp = await gateway.http.post(
        f"{proxy.url}/start",
        json={"transport": "websocket", "body": {"serializer": serializer, **ids}},
        headers={"Authorization": f"Bearer {gateway.keys[gateway.tenant]}"},
    )
    assert resp.status == 200, await resp.text()
    return str((await resp.json())["wsUrl"])


async def _connect(gateway: RunningGateway, url: str, serializer: str = "rtvi") -> WireClient:
    client = await rtvi_client(await gateway.http.ws_connect(url), serializer)
    gateway.clients.append(client)
    return client


async def _dropped(client: WireClient) -> None:
    async with asyncio.timeout(5):
        while not client.ws.closed:
            msg = await client.ws.receive()
            if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSE):
                break


@pytest.mark.parametrize("serializer", ["rtvi", "protobuf"])
async def test_the_same_token_resumes_the_session_after_a_drop_with_its_context_and_no_second_greeting(
    gateway: RunningGateway, proxy: TcpProxy, fake_llm: FakeLLM, serializer: str
) -> None:
    url = await _ws_url(gateway, proxy, serializer, user_id="blinker")
    first = await _connect(gateway, url, serializer)
    await first.bot_turn()
    assert await first.say("remember the word marmalade") == "I heard: remember the word marmalade"

    proxy.drop()
    await _dropped(first)
    again = await _connect(gateway, url, serializer)
    await again.ready()  # the pipeline's own RTVI answers the new socket's client-ready
    assert await again.say("what was the word?") == "I heard: what was the word?"
    said = [
        m.get("content") for m in fake_llm.requests[-1]["messages"] if m.get("role") in ("user", "assistant")
    ]
    assert "remember the word marmalade" in said
    greetings = [m for m in again.received if m["type"] == "bot-llm-text" and "meet you" in m["data"]["text"]]
    assert not greetings
    assert gateway.sample("gateway_session_resumptions_total", tenant=gateway.tenant, outcome="resumed") == 1
    assert gateway.sample("gateway_sessions_active", tenant=gateway.tenant) == 1


async def test_what_the_bot_said_while_the_client_was_away_reaches_it_when_it_is_back(
    make_gateway: GatewayFactory, fake_llm: FakeLLM
) -> None:
    gateway = await make_gateway()
    assert gateway.server.port is not None
    fake_llm.delay_secs = 0.5  # the LLM is the session's, shared by the tests: put back below
    try:
        async with tcp_proxy(gateway.server.port) as proxy:
            url = await _ws_url(gateway, proxy, user_id="tunnel")
            first = await _connect(gateway, url)
            await first.bot_turn()
            await first.send(
                {
                    "label": "rtvi-ai",
                    "type": "send-text",
                    "id": "t1",
                    "data": {
                        "content": "tell me when you are out of the tunnel",
                        "options": {"run_immediately": True},
                    },
                }
            )
            await asyncio.sleep(0.1)  # the turn reached the pipeline; its reply is 0.5 s away
            proxy.drop()
            await _dropped(first)
            await asyncio.sleep(1.0)  # the reply was said meanwhile
            again = await _connect(gateway, url)
            # The reply had begun (bot-llm-started) before the drop; the rest of it was held for the client.
            parts = []
            while (message := await again.next("bot-llm-text", "bot-llm-stopped"))[
                "type"
            ] != "bot-llm-stopped":
                parts.append(message["data"]["text"])
            assert "".join(parts) == "I heard: tell me when you are out of the tunnel"
    finally:
        fake_llm.delay_secs = 0.0


async def test_a_second_socket_on_a_session_that_has_one_is_refused(
    gateway: RunningGateway, proxy: TcpProxy
) -> None:
    url = await _ws_url(gateway, proxy, user_id="twin")
    first = await _connect(gateway, url)
    await first.bot_turn()
    assert await refusal_code(gateway.http, url) == closecodes.BAD_TOKEN
    assert await first.say("still mine") == "I heard: still mine"


async def test_after_the_window_the_token_is_refused_and_the_session_has_ended(
    make_gateway: GatewayFactory,
) -> None:
    gateway = await make_gateway(resume_secs=0.5)
    assert gateway.server.port is not None
    async with tcp_proxy(gateway.server.port) as proxy:
        url = await _ws_url(gateway, proxy, user_id="gone-for-good")
        first = await _connect(gateway, url)
        await first.bot_turn()
        await first.say("this will still be remembered")
        proxy.drop()
        await _dropped(first)
        await gateway.settle()  # the window passed: the session ended and stored what it had
        assert await refusal_code(gateway.http, url) == closecodes.BAD_TOKEN
        assert (
            gateway.sample("gateway_session_resumptions_total", tenant=gateway.tenant, outcome="expired") == 1
        )
        returning = await gateway.connect(user_id="gone-for-good")
        assert "this will still be remembered" in await returning.bot_turn()


async def test_a_client_that_says_goodbye_cannot_come_back(gateway: RunningGateway) -> None:
    resp = await gateway.start(user_id="leaver", serializer="rtvi")
    url = (await resp.json())["wsUrl"]
    client = await _connect(gateway, url)
    await client.bot_turn()
    await client.ws.close()  # a close frame: the user left
    await gateway.settle()
    assert await refusal_code(gateway.http, url) == closecodes.BAD_TOKEN
    assert gateway.sample("gateway_session_resumptions_total", tenant=gateway.tenant, outcome="resumed") == 0
