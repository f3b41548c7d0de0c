"""Concurrent checks against the shared session state share round trips and still hold every limit,
in Redis and in PostgreSQL (real servers)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.cluster import SessionRegistry
from gateway.cluster.postgres import PostgresRegistry
from gateway.cluster.redis import RedisRegistry
from gateway.cluster.registry import Lease
from gateway.metrics import GatewayMetrics
from gateway.tenants import RateLimit, TenantConfig
from gateway.tokens import SessionClaims
from tests.conftest import unique
from tests.procs import RedisServer, fresh_database


class CountingRedis(RedisRegistry):
    """The real registry, counting its round trips for leases."""

    acquire_calls = 0

    async def _acquire_all(self, tenant: TenantConfig, leases: list[Lease]) -> list[bool]:
        self.acquire_calls += 1
        return await super()._acquire_all(tenant, leases)


class CountingPostgres(PostgresRegistry):
    acquire_calls = 0

    async def _acquire_all(self, tenant: TenantConfig, leases: list[Lease]) -> list[bool]:
        self.acquire_calls += 1
        return await super()._acquire_all(tenant, leases)


@pytest.fixture(params=["redis", "postgres"])
async def registry(
    request: pytest.FixtureRequest, tmp_root: Path, database_url: str
) -> AsyncIterator[SessionRegistry]:
    redis: RedisServer | None = None
    reg: SessionRegistry
    if request.param == "redis":
        redis = RedisServer(tmp_root / unique("redis"))
        redis.start()
        reg = CountingRedis(url=redis.url, prefix=unique("b"), metrics=GatewayMetrics())
    else:
        reg = CountingPostgres(database_url=fresh_database(database_url), metrics=GatewayMetrics())
    await reg.start()
    yield reg
    await reg.close()
    if redis is not None:
        redis.stop()


def _claims(jti: str) -> SessionClaims:
    return SessionClaims(
        tenant="t",
        user_id="u",
        agent_id=None,
        run_id=None,
        session_id=jti,
        serializer=None,
        expires_at=time.time() + 60,
    )


async def test_a_burst_of_reserves_grants_exactly_the_limit_in_arrival_order_in_few_round_trips(
    registry: SessionRegistry,
) -> None:
    tenant = TenantConfig(name=unique("burst"), max_sessions=40)
    leases = await asyncio.gather(*(registry.reserve(tenant, f"s{i}") for i in range(200)))
    granted = [i for i, lease in enumerate(leases) if lease is not None]
    assert granted == list(range(40))
    calls = registry.acquire_calls  # type: ignore[attr-defined]
    assert calls < 200 / 4, f"{calls} round trips for 200 reserves"
    # A session ID that holds a lease takes it over instead of taking a second slot.
    assert await registry.reserve(tenant, "s0") is not None


async def test_a_token_presented_twice_in_one_batch_is_fresh_once(registry: SessionRegistry) -> None:
    jtis = [unique("jti") for _ in range(20)]
    claims = [_claims(j) for j in jtis] + [_claims(jtis[3]), _claims(jtis[7])]
    fresh = await asyncio.gather(*(registry.spend_token(c) for c in claims))
    assert fresh == [True] * 20 + [False, False]
    assert not await registry.spend_token(_claims(jtis[0]))


async def test_a_burst_of_starts_is_held_to_the_bucket(registry: SessionRegistry) -> None:
    tenant = TenantConfig(name=unique("rate"), start_rate=RateLimit(per_second=0.5, burst=25))
    waits = await asyncio.gather(*(registry.allow_start(tenant) for _ in range(100)))
    assert waits[:25] == [0] * 25
    assert all(w >= 1 for w in waits[25:])
