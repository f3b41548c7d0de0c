"""Sessions start at /start (as Pipecat's runner starts the bot), and wait a bounded time for their client."""

from __future__ import annotations

import asyncio

from gateway.keys import registry_key
from tests.clients import WireClient, rtvi_client
from tests.conftest import GatewayFactory, RunningGateway


async def _ws(gateway: RunningGateway, url: str, serializer: str) -> WireClient:
    client = await rtvi_client(await gateway.http.ws_connect(url), serializer)
    gateway.clients.append(client)
    return client


async def test_start_starts_the_session_before_the_client_connects(gateway: RunningGateway) -> None:
    started = await gateway.start(user_id="early", serializer="rtvi")
    registry = gateway.app[registry_key]
    assert len(registry.pending) == 1 and registry.active(gateway.tenant) == 1
    # Not a session yet for the dashboards: nothing is connected.
    assert gateway.sample("gateway_sessions_active", tenant=gateway.tenant) == 0

    client = await _ws(gateway, (await started.json())["wsUrl"], "rtvi")
    assert "nice to meet you" in (await client.bot_turn()).lower()
    assert await client.say("hello there") == "I heard: hello there"
    assert not registry.pending
    assert gateway.sample("gateway_sessions_active", tenant=gateway.tenant) == 1


async def test_an_unclaimed_session_ends_and_frees_its_slot_but_the_token_still_works(
    make_gateway: GatewayFactory,
) -> None:
    gateway = await make_gateway(tenants=[{"name": "late", "max_sessions": 1}], prestart_secs=0.3)
    started = await gateway.start(user_id="slow", serializer="rtvi")
    assert (await gateway.start(user_id="other")).status == 429
    await gateway.settle_sessions(0)  # the started session gave up waiting
    assert gateway.sample("gateway_sessions_total", tenant="late", outcome="completed") == 0

    client = await _ws(gateway, (await started.json())["wsUrl"], "rtvi")  # within the token's TTL
    assert "nice to meet you" in (await client.bot_turn()).lower()
    await client.ws.close()
    await gateway.settle()
    assert gateway.sample("gateway_sessions_total", tenant="late", outcome="completed") == 1


async def test_a_client_choosing_another_serializer_at_connect_gets_a_session_in_it(
    make_gateway: GatewayFactory,
) -> None:
    gateway = await make_gateway(tenants=[{"name": "switch", "max_sessions": 1}])
    started = await gateway.start(user_id="proto-fan", serializer="rtvi")
    url = (await started.json())["wsUrl"].replace("?serializer=rtvi", "?serializer=protobuf")
    client = await _ws(gateway, url, "protobuf")
    assert "nice to meet you" in (await client.bot_turn()).lower()
    assert await client.say("binary please") == "I heard: binary please"
    assert gateway.app[registry_key].active("switch") == 1


async def test_draining_ends_sessions_still_waiting_for_their_client(gateway: RunningGateway) -> None:
    await gateway.start(user_id="never", serializer="rtvi")
    registry = gateway.app[registry_key]
    assert registry.pending
    await gateway.server.close()
    async with asyncio.timeout(5):
        while registry.pending or registry.active(gateway.tenant):
            await asyncio.sleep(0.02)


async def test_a_serializer_chosen_on_the_url_takes_the_started_sessions_slot_over(
    make_gateway: GatewayFactory,
) -> None:
    """One slot per session however the client picks its wire format: sequential users never meet 429."""
    gateway = await make_gateway(tenants=[{"name": "urlpick", "max_sessions": 2}])
    for trial in range(10):
        started = await gateway.start(user_id=f"first-{trial}")  # no serializer in the body: protobuf
        assert started.status == 200, await started.text()
        first = await _ws(gateway, (await started.json())["wsUrl"] + "?serializer=rtvi", "rtvi")
        await first.bot_turn()
        assert gateway.app[registry_key].active("urlpick") == 1
        second = await gateway.start(user_id=f"second-{trial}", serializer="rtvi")
        assert second.status == 200, f"trial {trial}: {await second.text()}"
        client = await _ws(gateway, (await second.json())["wsUrl"], "rtvi")
        await client.bot_turn()
        await first.ws.close()
        await client.ws.close()
        await gateway.settle()
    assert gateway.sample("gateway_rejections_total", tenant="urlpick", reason="session_limit") == 0
