"""Many callers at once: each is greeted with their own memories, nobody else's."""

from __future__ import annotations

import asyncio

from tests.conftest import GatewayFactory, RunningGateway

FAVOURITES = [
    "apricots",
    "bagpipes",
    "canoes",
    "dahlias",
    "espresso",
    "falconry",
    "geodes",
    "harps",
    "iguanas",
    "jazz",
    "kites",
    "lanterns",
    "mangoes",
    "nebulae",
    "origami",
    "pumpkins",
    "quilts",
    "rowing",
    "saffron",
    "tangrams",
]


async def _teach(gateway: RunningGateway, i: int) -> None:
    client = await gateway.connect(user_id=f"crowd-{i}")
    await client.bot_turn()
    await client.say(f"my favourite thing is {FAVOURITES[i]}")
    await client.ws.close()


async def _greeting(gateway: RunningGateway, i: int) -> str:
    client = await gateway.connect(user_id=f"crowd-{i}")
    text = await client.bot_turn(timeout=20)
    await client.ws.close()
    return text


async def test_twenty_concurrent_sessions_each_get_their_own_greeting(gateway: RunningGateway) -> None:
    await asyncio.gather(*(_teach(gateway, i) for i in range(20)))
    await gateway.settle(timeout=60)

    greetings = await asyncio.gather(*(_greeting(gateway, i) for i in range(20)))
    for i, text in enumerate(greetings):
        assert FAVOURITES[i] in text, (i, text)
        others = [f for j, f in enumerate(FAVOURITES) if j != i and f in text]
        assert others == [], (i, text)


async def test_connects_beyond_the_start_concurrency_wait_their_turn_and_keep_their_memories(
    make_gateway: GatewayFactory,
) -> None:
    gateway = await make_gateway(start_concurrency=1)
    await asyncio.gather(*(_teach(gateway, i) for i in range(8)))
    await gateway.settle(timeout=60)

    greetings = await asyncio.gather(*(_greeting(gateway, i) for i in range(8)))
    assert all(FAVOURITES[i] in text for i, text in enumerate(greetings)), greetings
    assert (
        gateway.sample(
            "gateway_greeting_seconds_count", tenant=gateway.tenant, memories="fallback", source="template"
        )
        == 0
    )
