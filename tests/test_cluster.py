"""Two real gateway processes on one PostgreSQL and one Redis behave as one gateway.

Each test starts its own ``redis-server`` and its replicas (``memory-gateway serve`` in processes of
their own, sharing the token secret, the tenants file and the database), and talks to them only over
loopback sockets, as clients and an operator would. The limits are checked with the session state in
Redis and, as ``serve --workers`` keeps it without Redis, in PostgreSQL.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway import closecodes
from tests.clients import WireClient, refusal_code, rtvi_client
from tests.conftest import unique
from tests.fake_llm import FakeLLM
from tests.procs import Cluster, GatewayProcess, RedisServer, redis_available, replicas

pytestmark = pytest.mark.skipif(
    not redis_available(), reason="redis-server not installed (.ci/run installs it)"
)

LEASE_TTL = 3.0


@pytest.fixture
async def redis_server(tmp_root: Path) -> AsyncIterator[RedisServer]:
    server = RedisServer(tmp_root / unique("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


ClusterFactory = Callable[..., Cluster]


@pytest.fixture(params=["redis", "postgres"])
def state(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_cluster(
    tmp_root: Path, database_url: str, fake_llm: FakeLLM, redis_server: RedisServer, state: str
) -> ClusterFactory:
    def factory(*tenants: dict[str, Any], **env: str) -> Cluster:
        cluster = Cluster(
            root=tmp_root / unique("cluster"),
            database_url=database_url,
            llm_base_url=fake_llm.base_url,
            redis_url=redis_server.url if state == "redis" else None,
            env={"GATEWAY_LEASE_TTL_SECS": str(LEASE_TTL), "GATEWAY_SESSION_STATE": state, **env},
        )
        cluster.add_tenants(*tenants)
        return cluster

    return factory


async def start(
    http: aiohttp.ClientSession, replica: GatewayProcess, key: str, **body: Any
) -> aiohttp.ClientResponse:
    return await http.post(
        f"{replica.url}/start",
        json={"transport": "websocket", "body": {"serializer": "rtvi", **body}},
        headers={"Authorization": f"Bearer {key}"},
    )


async def started_url(http: aiohttp.ClientSession, replica: GatewayProcess, key: str, **body: Any) -> str:
    resp = await start(http, replica, key, **body)
    assert resp.status == 200, await resp.text()
    return str((await resp.json())["wsUrl"])


def on(replica: GatewayProcess, ws_url: str) -> str:
    """The same ``wsUrl`` pointed at another replica (what a load balancer without affinity does)."""
    return re.sub(r"^ws://[^/]+", f"ws://127.0.0.1:{replica.port}", ws_url)


async def session(http: aiohttp.ClientSession, ws_url: str) -> WireClient:
    client = await rtvi_client(await http.ws_connect(ws_url), "rtvi")
    await client.bot_turn()  # greeted: the session is live
    return client


async def metric(http: aiohttp.ClientSession, replica: GatewayProcess, name: str, **labels: str) -> float:
    async with http.get(f"{replica.url}/metrics") as resp:
        text = await resp.text()
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line[len(name) : len(name) + 1] not in ("{", " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float, every: float = 0.1) -> float:
    """Seconds until ``check()`` held (fails after ``timeout``)."""
    began = time.monotonic()
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(every)
    return time.monotonic() - began


async def test_a_memory_written_through_one_replica_greets_the_user_through_the_other(
    make_cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    cluster = make_cluster({"name": unique("shared")})
    ((_, key),) = cluster.tenants.items()
    async with replicas(cluster.replica("a"), cluster.replica("b")) as (a, b):
        client = await session(http, await started_url(http, a, key, user_id="wanderer"))
        assert await client.say("my cat is called Miso") == "I heard: my cat is called Miso"
        await client.ws.close()

        async def greeted_with_miso() -> bool:
            again = await rtvi_client(
                await http.ws_connect(await started_url(http, b, key, user_id="wanderer")), "rtvi"
            )
            greeting = await again.bot_turn()
            await again.ws.close()
            return "Miso" in greeting

        await eventually(greeted_with_miso, timeout=20, every=0.3)


async def test_a_token_used_on_one_replica_is_refused_on_the_other(
    make_cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    cluster = make_cluster({"name": unique("replay")})
    ((tenant, key),) = cluster.tenants.items()
    async with replicas(cluster.replica("a"), cluster.replica("b")) as (a, b):
        url = await started_url(http, a, key, user_id="once")
        first = await session(http, url)

        assert await refusal_code(http, on(b, url)) == closecodes.BAD_TOKEN
        assert await refusal_code(http, url) == closecodes.BAD_TOKEN  # and on A itself
        assert await metric(http, b, "gateway_rejections_total", tenant=tenant, reason="bad_token") == 1
        assert await first.say("still here") == "I heard: still here"


async def test_the_concurrent_session_limit_holds_across_replicas(
    make_cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    cluster = make_cluster({"name": unique("capped"), "max_sessions": 3})
    ((tenant, key),) = cluster.tenants.items()
    async with replicas(cluster.replica("a"), cluster.replica("b")) as (a, b):
        one = await session(http, await started_url(http, a, key, user_id="u1"))
        two = await session(http, await started_url(http, b, key, user_id="u2"))
        # Started on A, connected through B: B builds the session and takes A's slot over (one slot).
        three = await session(http, on(b, await started_url(http, a, key, user_id="u3")))

        for replica in (a, b):
            refused = await start(http, replica, key, user_id="u4")
            assert refused.status == 429 and refused.headers["Retry-After"]
            assert (await refused.json()) == {"error": "tenant is at its concurrent-session limit"}
        refusals = [
            await metric(http, r, "gateway_rejections_total", tenant=tenant, reason="session_limit")
            for r in (a, b)
        ]
        assert refusals == [1, 1]

        await two.ws.close()  # a slot comes back, whichever replica held it
        client = None

        async def admitted() -> bool:
            nonlocal client
            resp = await start(http, a, key, user_id="u4")
            if resp.status != 200:
                return False
            client = await session(http, str((await resp.json())["wsUrl"]))
            return True

        await eventually(admitted, timeout=10)
        assert client is not None and await client.say("in at last") == "I heard: in at last"
        assert (await start(http, b, key, user_id="u5")).status == 429
        for c in (one, three, client):
            await c.ws.close()


async def test_the_start_rate_holds_across_replicas(
    make_cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    cluster = make_cluster({"name": unique("bursty"), "start_rate": {"per_second": 0.01, "burst": 4}})
    ((tenant, key),) = cluster.tenants.items()
    async with replicas(cluster.replica("a"), cluster.replica("b")) as (a, b):
        statuses = [
            (await start(http, r, key, user_id=f"u{i}")).status for i, r in enumerate([a, b, a, b, a, b])
        ]
        assert statuses == [200, 200, 200, 200, 429, 429]
        limited = [
            await metric(http, r, "gateway_rejections_total", tenant=tenant, reason="rate_limited")
            for r in (a, b)
        ]
        assert limited == [1, 1]


async def test_a_killed_replicas_sessions_give_their_slots_back_within_the_lease_ttl(
    make_cluster: ClusterFactory, http: aiohttp.ClientSession
) -> None:
    cluster = make_cluster({"name": unique("orphans"), "max_sessions": 5})
    ((_, key),) = cluster.tenants.items()
    async with replicas(cluster.replica("a"), cluster.replica("b")) as (a, b):
        clients = [await session(http, await started_url(http, a, key, user_id=f"u{i}")) for i in range(5)]
        assert (await start(http, b, key, user_id="late")).status == 429

        await a.kill()  # kill -9: nothing released, no drain
        killed_at = time.monotonic()
        # Still leased: a kill frees nothing, the leases lapse.
        assert (await start(http, b, key, user_id="late")).status == 429

        admitted: list[WireClient] = []

        async def all_capacity_back() -> bool:
            resp = await start(http, b, key, user_id=f"late-{len(admitted)}")
            if resp.status == 200:
                admitted.append(await session(http, str((await resp.json())["wsUrl"])))
            return len(admitted) == 5

        await eventually(all_capacity_back, timeout=LEASE_TTL * 3 + 5)
        print(f"5 slots back {time.monotonic() - killed_at:.2f} s after kill -9, lease TTL {LEASE_TTL} s")
        assert (await start(http, b, key, user_id="one-too-many")).status == 429
        for c in clients + admitted:
            await c.ws.close()


@pytest.mark.parametrize("state", ["redis"])
async def test_with_redis_down_live_sessions_continue_and_new_ones_are_refused_until_it_returns(
    make_cluster: ClusterFactory, http: aiohttp.ClientSession, redis_server: RedisServer
) -> None:
    cluster = make_cluster({"name": unique("outage")})
    ((tenant, key),) = cluster.tenants.items()
    async with replicas(cluster.replica("a")) as (a,):
        live = await session(http, await started_url(http, a, key, user_id="talker"))
        issued = await started_url(http, a, key, user_id="connects-later")

        redis_server.stop()
        assert await live.say("are you still there") == "I heard: are you still there"

        refused = await start(http, a, key, user_id="newcomer")
        assert refused.status == 503 and refused.headers["Retry-After"] == "5"
        assert (
            await refusal_code(http, issued) == closecodes.TRY_AGAIN_LATER
        )  # its token cannot be marked spent: fails closed
        assert (
            await metric(http, a, "gateway_rejections_total", tenant=tenant, reason="cluster_unavailable")
            == 2
        )
        assert await metric(http, a, "gateway_session_state_up", backend="redis") == 0
        errors = "gateway_session_state_errors_total"
        assert await metric(http, a, errors, backend="redis", operation="acquire") >= 1
        assert await metric(http, a, errors, backend="redis", operation="spend_token") >= 1
        async with http.get(f"{a.url}/readyz") as ready:
            assert ready.status == 200 and (await ready.json())["sessions"] == "redis_unavailable"
        assert await live.say("still talking") == "I heard: still talking"

        redis_server.start()

        async def admitted() -> bool:
            return (await start(http, a, key, user_id="newcomer")).status == 200

        await eventually(admitted, timeout=10)
        assert await metric(http, a, "gateway_session_state_up", backend="redis") == 1
        assert await live.say("back to normal") == "I heard: back to normal"
        await live.ws.close()
