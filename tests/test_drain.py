"""SIGTERM drains a real ``memory-gateway serve`` process: no new sessions, live ones get
``GATEWAY_DRAIN_SECS`` and a closing line, then 1001; their words are kept; exit 0. A second signal
cuts the wait short."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import aiohttp
import psycopg
import pytest

from gateway import closecodes
from memory.local import table_name
from tests.clients import refusal_code, rtvi_client
from tests.conftest import unique
from tests.fake_llm import FakeLLM
from tests.procs import Cluster

FAREWELL = "We are restarting now, please call back in a minute."


def _cluster(tmp_root: Path, database_url: str, fake_llm: FakeLLM, **env: str) -> Cluster:
    cluster = Cluster(
        root=tmp_root / unique("drain"), database_url=database_url, llm_base_url=fake_llm.base_url, env=env
    )
    cluster.add_tenants({"name": unique("drained"), "max_sessions": 50})
    return cluster


async def _start(http: aiohttp.ClientSession, url: str, key: str, user: str) -> aiohttp.ClientResponse:
    return await http.post(
        f"{url}/start",
        json={"transport": "websocket", "body": {"user_id": user, "serializer": "rtvi"}},
        headers={"Authorization": f"Bearer {key}"},
    )


@pytest.mark.parametrize("workers", [1, 2], ids=["one worker", "two workers"])
async def test_sigterm_gives_live_sessions_the_drain_time_a_farewell_and_1001_and_keeps_their_words(
    tmp_root: Path, database_url: str, fake_llm: FakeLLM, workers: int
) -> None:
    cluster = _cluster(
        tmp_root,
        database_url,
        fake_llm,
        GATEWAY_DRAIN_SECS="2",
        GATEWAY_DRAIN_MESSAGE=FAREWELL,
        GATEWAY_WORKERS=str(workers),
    )
    ((tenant, key),) = cluster.tenants.items()
    gateway = await cluster.replica("a").start()
    async with aiohttp.ClientSession() as http:
        try:
            clients = []
            for i in range(20):
                resp = await _start(http, gateway.url, key, f"caller-{i}")
                client = await rtvi_client(await http.ws_connect((await resp.json())["wsUrl"]), "rtvi")
                await client.bot_turn()
                assert await client.say(f"note number {i} for later") == f"I heard: note number {i} for later"
                clients.append(client)
            unused = (await (await _start(http, gateway.url, key, "too-late")).json())["wsUrl"]

            assert gateway.proc is not None
            gateway.proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(5):
                while True:
                    async with http.get(f"{gateway.url}/readyz") as ready:
                        if ready.status == 503:
                            break
                    await asyncio.sleep(0.05)
            assert (await _start(http, gateway.url, key, "newcomer")).status == 503
            assert await refusal_code(http, unused) == closecodes.GOING_AWAY
            # Still live and talking during the drain time.
            assert await clients[0].say("one more thing") == "I heard: one more thing"

            farewells = await asyncio.gather(*(c.bot_turn(timeout=15) for c in clients))
            assert farewells == [FAREWELL] * 20
            codes = await asyncio.gather(*(c.closed(timeout=15) for c in clients))
            assert codes == [closecodes.GOING_AWAY] * 20
            assert await asyncio.wait_for(gateway.proc.wait(), 30) == 0, gateway.log()
        finally:
            await gateway.kill()

    with psycopg.connect(database_url) as conn:
        said = {
            r[0]
            for r in conn.execute(
                f"SELECT payload->>'data' FROM \"{table_name(tenant)}\" WHERE payload->>'role' = 'user'"
            ).fetchall()
        }
        farewells_stored = conn.execute(
            f"SELECT count(*) FROM \"{table_name(tenant)}\" WHERE payload->>'data' = %s", (FAREWELL,)
        ).fetchone()
    assert said == {f"note number {i} for later" for i in range(20)} | {"one more thing"}
    assert farewells_stored == (0,)  # a closing line is not a memory


@pytest.mark.parametrize("workers", [1, 2], ids=["one worker", "two workers"])
async def test_a_second_sigterm_ends_the_drain_at_once(
    tmp_root: Path, database_url: str, fake_llm: FakeLLM, workers: int
) -> None:
    cluster = _cluster(
        tmp_root, database_url, fake_llm, GATEWAY_DRAIN_SECS="600", GATEWAY_WORKERS=str(workers)
    )
    ((_, key),) = cluster.tenants.items()
    gateway = await cluster.replica("a").start()
    async with aiohttp.ClientSession() as http:
        try:
            resp = await _start(http, gateway.url, key, "lingerer")
            client = await rtvi_client(await http.ws_connect((await resp.json())["wsUrl"]), "rtvi")
            await client.bot_turn()
            assert gateway.proc is not None
            gateway.proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(5):
                while (await http.get(f"{gateway.url}/readyz")).status != 503:
                    await asyncio.sleep(0.05)
            gateway.proc.send_signal(signal.SIGTERM)
            assert await client.closed(timeout=15) == closecodes.GOING_AWAY
            assert await asyncio.wait_for(gateway.proc.wait(), 30) == 1, gateway.log()
        finally:
            await gateway.kill()
