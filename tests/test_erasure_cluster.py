"""``DELETE /v1/memories`` through one replica erases the user everywhere, including what another
replica still held: its outbox on disk, its write queue, mem0's history — searched in every table and
every file, not through the API.

Replica A reaches PostgreSQL through a TCP proxy the test can cut (a network partition); replica B
reaches it directly. A holds a sentence it could not store yet when B erases the user.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import unique
from tests.fake_llm import FakeLLM
from tests.faults import PostgresProxy, unix_socket_of
from tests.procs import Cluster, greeted_session, replicas
from tests.stores import where_in_database, where_on_disk

KEPT = "I keep my savings under the blue floorboard"
QUEUED = "the spare key is inside the garden gnome"
LATE = "and my bicycle lock code is four four seven"
AFTER = "I just moved to a lighthouse in Maine"


@pytest.fixture
async def proxy(database_url: str) -> AsyncIterator[PostgresProxy]:
    proxy = PostgresProxy(unix_socket_of(database_url))
    await proxy.start()
    yield proxy
    await proxy.close()


async def _until(check: object, timeout: float, what: str) -> None:
    assert callable(check)
    try:
        async with asyncio.timeout(timeout):
            while not await check():
                await asyncio.sleep(0.2)
    except TimeoutError:
        raise AssertionError(f"not within {timeout} s: {what}") from None


async def test_an_erasure_through_one_replica_removes_what_another_still_held(
    tmp_root: Path, database_url: str, fake_llm: FakeLLM, proxy: PostgresProxy
) -> None:
    cluster = Cluster(
        root=tmp_root / unique("erasure"), database_url=database_url, llm_base_url=fake_llm.base_url
    )
    cluster.add_tenants({"name": unique("erased")})
    ((tenant, key),) = cluster.tenants.items()
    user = unique("subject")

    def in_database(text: str) -> list[str]:
        return where_in_database(database_url, tenant, text)

    a_proc = cluster.replica("a", GATEWAY_DATABASE_URL=proxy.url())
    b_proc = cluster.replica("b")
    async with replicas(a_proc, b_proc) as (a, b), aiohttp.ClientSession() as http:
        client = await greeted_session(http, a, key, user)
        await client.say(KEPT)

        async def kept_stored() -> bool:
            stored = await asyncio.to_thread(in_database, f"I heard: {KEPT}")  # the reply lands last
            return bool(stored and await asyncio.to_thread(in_database, KEPT))

        await _until(kept_stored, 20, "the first sentence and its reply stored")

        proxy.cut()  # A can no longer reach PostgreSQL; B still can
        assert await client.say(QUEUED, timeout=20) == f"I heard: {QUEUED}"

        async def queued_on_disk() -> bool:
            return bool(where_on_disk(a.data_dir, QUEUED))

        await _until(queued_on_disk, 10, "A's outbox holding the sentence it could not store")
        assert await asyncio.to_thread(in_database, QUEUED) == []

        async with http.delete(
            f"{b.url}/v1/memories", params={"user_id": user}, headers={"Authorization": f"Bearer {key}"}
        ) as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["deleted"] >= 2

        proxy.restore()  # A hears of the erasure (or finds its tombstone) and drops what it held

        async def a_holds_nothing() -> bool:
            return not where_on_disk(a.data_dir, QUEUED) and not where_on_disk(a.data_dir, KEPT)

        await _until(a_holds_nothing, 30, "A's data dir free of the erased user's words")
        # The session that started before the erasure goes on talking: what it says now is dropped.
        assert await client.say(LATE, timeout=20) == f"I heard: {LATE}"
        await client.ws.close()
        # A session that starts after the erasure is stored as usual; it also shows A's writes flow.
        fresh = await greeted_session(http, a, key, user)
        await fresh.say(AFTER)
        await fresh.ws.close()

        async def after_stored() -> bool:
            return bool(await asyncio.to_thread(in_database, AFTER))

        await _until(after_stored, 30, "a sentence of a session started after the erasure stored")
        for text in (KEPT, QUEUED, LATE):
            assert await asyncio.to_thread(in_database, text) == [], text
            for replica in (a, b):
                assert where_on_disk(replica.data_dir, text) == [], (replica.name, text)
                assert text not in replica.log(), (replica.name, text)
