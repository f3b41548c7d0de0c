"""Graceful shutdown: live sessions are told why (1001) and what they said is stored first."""

from __future__ import annotations

import asyncio

import psycopg

from gateway import closecodes
from gateway.keys import registry_key
from memory.local import table_name
from tests.conftest import RunningGateway


async def test_shutdown_closes_live_sessions_with_1001_and_keeps_their_words(
    gateway: RunningGateway, database_url: str
) -> None:
    client = await gateway.connect(user_id="leaver")
    await client.bot_turn()
    assert await client.say("please remember my boat is called Nautilus") == (
        "I heard: please remember my boat is called Nautilus"
    )

    shutdown = asyncio.create_task(gateway.server.close())  # the client keeps reading meanwhile
    assert await client.closed() == closecodes.GOING_AWAY
    await shutdown
    assert gateway.sample("gateway_sessions_total", tenant=gateway.tenant, outcome="shutdown") == 1
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            f"SELECT payload->>'data' FROM \"{table_name(gateway.tenant)}\" WHERE payload->>'user_id' = %s",
            (f"{gateway.tenant}/leaver",),
        ).fetchall()
    assert sorted(r[0] for r in rows) == [
        "I heard: please remember my boat is called Nautilus",
        "please remember my boat is called Nautilus",
    ]


async def test_draining_gateway_refuses_new_sessions_with_503(gateway: RunningGateway) -> None:
    gateway.app[registry_key].begin_drain()
    resp = await gateway.start(user_id="late")
    assert resp.status == 503
    async with gateway.http.get(f"{gateway.url}/readyz") as ready:
        assert ready.status == 503
