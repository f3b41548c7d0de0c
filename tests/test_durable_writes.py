"""An accepted turn survives the database being down *and* the gateway being killed, and lands once.

A real ``memory-gateway serve`` process on a PostgreSQL of its own (``StoppablePostgres``, used as the
external database), stopped under it and started again; the gateway is killed with SIGKILL, so
nothing it held in memory survives — only its outbox (``memory.outbox``) in the data dir.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import psycopg
import pytest

from memory.local import table_name
from tests.conftest import unique
from tests.fake_llm import FakeLLM
from tests.procs import Cluster, GatewayProcess, StoppablePostgres, greeted_session, replicas

TURNS = 20


@pytest.fixture
async def postgres(tmp_root: Path) -> AsyncIterator[StoppablePostgres]:
    root = tmp_root / unique("pg")
    root.mkdir()
    server = StoppablePostgres(root)
    await asyncio.to_thread(server.start)
    yield server
    await asyncio.to_thread(server.close)


def _stored(database_url: str, tenant: str) -> Counter[tuple[str, str]]:
    with psycopg.connect(database_url, connect_timeout=10) as conn:
        rows = conn.execute(
            f"SELECT payload->>'role', payload->>'data' FROM \"{table_name(tenant)}\""
        ).fetchall()
    return Counter((str(r[0]), str(r[1])) for r in rows)


async def _counter(http: aiohttp.ClientSession, gateway: GatewayProcess, name: str) -> float:
    async with http.get(f"{gateway.url}/metrics") as resp:
        text = await resp.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


async def _pending_writes(http: aiohttp.ClientSession, gateway: GatewayProcess) -> float:
    return await _counter(http, gateway, "gateway_memory_pending_writes")


def _outbox_rows(data_dir: Path) -> int:
    with sqlite3.connect(data_dir / "outbox.db") as db:
        return int(db.execute("SELECT count(*) FROM outbox").fetchone()[0])


async def _until_stored(
    url: str, tenant: str, expected: int, timeout: float = 60
) -> Counter[tuple[str, str]]:
    async with asyncio.timeout(timeout):
        while True:
            stored = await asyncio.to_thread(_stored, url, tenant)
            if sum(stored.values()) >= expected:
                await asyncio.sleep(1.0)  # a duplicate, if any, would land right behind
                return await asyncio.to_thread(_stored, url, tenant)
            await asyncio.sleep(0.2)


async def test_turns_answered_while_postgres_is_down_survive_kill_9_and_land_exactly_once(
    tmp_root: Path, postgres: StoppablePostgres, fake_llm: FakeLLM
) -> None:
    cluster = Cluster(
        root=tmp_root / unique("durable"), database_url=postgres.url, llm_base_url=fake_llm.base_url
    )
    cluster.add_tenants({"name": unique("durable")})
    ((tenant, key),) = cluster.tenants.items()
    said = [f"durable sentence number {i}" for i in range(TURNS)]
    expected = Counter([("user", s) for s in said] + [("assistant", f"I heard: {s}") for s in said])

    gateway = cluster.replica("a")
    await gateway.start()
    async with aiohttp.ClientSession() as http:
        try:
            client = await greeted_session(http, gateway, key, "keeper")

            await asyncio.to_thread(postgres.stop)
            for sentence in said:
                assert await client.say(sentence, timeout=20) == f"I heard: {sentence}"
            # Every user turn and every reply is on disk and counted as pending; none reached the table.
            async with asyncio.timeout(10):
                while _outbox_rows(gateway.data_dir) < 2 * TURNS:
                    await asyncio.sleep(0.05)
            assert _outbox_rows(gateway.data_dir) == 2 * TURNS
            assert await _pending_writes(http, gateway) == 2 * TURNS
        finally:
            await gateway.kill()

    # A copy of the outbox as it was at the kill: played back once more below, as if the gateway had
    # died again after the rows landed but before it deleted them.
    snapshot = tmp_root / unique("outbox-copy")
    snapshot.mkdir()
    for part in gateway.data_dir.glob("outbox.db*"):
        shutil.copy2(part, snapshot / part.name)

    await asyncio.to_thread(postgres.start)
    restarted = await cluster.replica("a").start()
    try:
        stored = await _until_stored(postgres.url, tenant, 2 * TURNS)
        assert stored == expected  # all 40 messages, each exactly once
        async with asyncio.timeout(10):
            while _outbox_rows(restarted.data_dir) != 0:
                await asyncio.sleep(0.1)
    finally:
        assert await restarted.terminate() == 0, restarted.log()

    for part in restarted.data_dir.glob("outbox.db*"):
        part.unlink()
    for part in snapshot.iterdir():
        shutil.copy2(part, restarted.data_dir / part.name)
    replayed = await cluster.replica("a").start()
    try:
        async with asyncio.timeout(30):
            while _outbox_rows(replayed.data_dir) != 0:
                await asyncio.sleep(0.1)
        assert await asyncio.to_thread(_stored, postgres.url, tenant) == expected  # still once each
    finally:
        await replayed.terminate()


async def test_a_full_outbox_refuses_rows_counts_them_and_the_conversation_goes_on(
    tmp_root: Path, postgres: StoppablePostgres, fake_llm: FakeLLM
) -> None:
    cluster = Cluster(
        root=tmp_root / unique("full"),
        database_url=postgres.url,
        llm_base_url=fake_llm.base_url,
        env={"GATEWAY_OUTBOX_MAX_BYTES": str(64 * 1024)},
    )
    cluster.add_tenants({"name": unique("full")})
    ((tenant, key),) = cluster.tenants.items()
    # 12 turns of ≈3 KB, each stored twice (the sentence and its echo): ≈72 KB, over the 64 KiB bound.
    said = [f"long sentence {i} " + "x" * 3000 for i in range(12)]
    expected = Counter([("user", s) for s in said] + [("assistant", f"I heard: {s}") for s in said])

    async with aiohttp.ClientSession() as http, replicas(cluster.replica("a")) as (gateway,):
        client = await greeted_session(http, gateway, key, "talker")
        await asyncio.to_thread(postgres.stop)
        for sentence in said:
            assert await client.say(sentence, timeout=20) == f"I heard: {sentence}"
        async with asyncio.timeout(10):
            while await _pending_writes(http, gateway) < 2 * len(said):
                await asyncio.sleep(0.05)
        refused = await _counter(http, gateway, "gateway_memory_outbox_full_total")
        on_disk = _outbox_rows(gateway.data_dir)
        assert refused > 0 and on_disk > 0
        assert refused + on_disk == 2 * len(said)  # every message either on disk or counted as not
        assert "memory.outbox_full" in gateway.log()

        # The process lived: what the outbox refused was still queued, and everything lands.
        await asyncio.to_thread(postgres.start)
        assert await _until_stored(postgres.url, tenant, 2 * len(said)) == expected
