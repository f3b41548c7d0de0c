"""Retention: a tenant's turns and facts expire after their time; expired rows are never recalled and the
purge deletes them, with their history, in bounded batches, one process per table at a time."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from pydantic import ValidationError

from gateway.keys import backends_key, tenants_key
from memory import locks, mem0compat
from memory.config import MemorySettings
from memory.local import table_name
from memory.outbox import OutboxEntry
from memory.retention import RetentionJob
from memory.scope import MemoryScope
from memory.tenant import TenantMemory
from tests.conftest import GatewayFactory, RunningGateway, unique

OLD = datetime.now(UTC) - timedelta(days=40)
RECENT = datetime.now(UTC) - timedelta(days=2)


async def _backend(gateway: RunningGateway) -> TenantMemory:
    config = gateway.app[tenants_key].require(gateway.tenant)
    return await gateway.app[backends_key].for_tenant(config.name, config.memory)


async def _said(
    backend: TenantMemory, scope: MemoryScope, text: str, when: datetime, role: str = "user"
) -> None:
    """A memory written ``when`` (``role`` "" for a fact), through the backend's own write."""
    await backend.add_entry(
        OutboxEntry(
            key=unique("k"),
            tenant=backend.tenant,
            ids=scope.storage_ids(),
            role=role,
            content=text,
            infer=False,
            session_start=datetime.now(UTC).isoformat(),
            metadata={"created_at": when.isoformat()},
        )
    )


async def _retained(make_gateway: GatewayFactory, **retention: float) -> tuple[RunningGateway, TenantMemory]:
    gateway = await make_gateway(
        tenants=[{"name": unique("ret"), "memory": {"retention": retention}}], retention_interval_secs=0
    )
    return gateway, await _backend(gateway)


async def test_expired_turns_are_never_recalled(make_gateway: GatewayFactory) -> None:
    gateway, backend = await _retained(make_gateway, turns_days=30)
    scope = MemoryScope(gateway.tenant, user_id="ada")
    await _said(backend, scope, "my old dog was called Zanzibar", OLD)
    await _said(backend, scope, "my new dog is called Biscuit", RECENT)

    assert [m["memory"] for m in await backend.recall(scope, 10)] == ["my new dog is called Biscuit"]
    found = await backend.search(scope, "what was Zanzibar like?", limit=10, threshold=0.0)
    assert [m["memory"] for m in found] == ["my new dog is called Biscuit"]
    # mem0's own listing (longer listings than the greeting's take that path) leaves it out too.
    assert [m["memory"] for m in await backend.recent(scope, 500)] == ["my new dog is called Biscuit"]
    headers = {"Authorization": f"Bearer {gateway.keys[gateway.tenant]}"}
    async with gateway.http.get(f"{gateway.url}/v1/memories?user_id=ada", headers=headers) as resp:
        listed = await resp.json()
    assert [m["memory"] for m in listed["results"]] == ["my new dog is called Biscuit"]


async def test_turns_and_facts_keep_for_their_own_times(make_gateway: GatewayFactory) -> None:
    gateway, backend = await _retained(make_gateway, turns_days=1, facts_days=365)
    scope = MemoryScope(gateway.tenant, user_id="ada")
    await _said(backend, scope, "i said this ten days ago", datetime.now(UTC) - timedelta(days=10))
    await _said(backend, scope, "Ada's sister is Ingrid", datetime.now(UTC) - timedelta(days=10), role="")
    await _said(backend, scope, "Ada lived in Lyon", datetime.now(UTC) - timedelta(days=400), role="")
    assert [m["memory"] for m in await backend.recent(scope, 10)] == ["Ada's sister is Ingrid"]


async def test_the_purge_deletes_expired_rows_with_their_history_and_counts_them(
    make_gateway: GatewayFactory, database_url: str
) -> None:
    gateway, backend = await _retained(make_gateway, turns_days=30, facts_days=30)
    scope = MemoryScope(gateway.tenant, user_id="ada")
    for i in range(3):
        await _said(backend, scope, f"an old thing number {i}", OLD)
    await _said(backend, scope, "an old fact", OLD, role="")
    await _said(backend, scope, "a recent thing", RECENT)
    table = table_name(gateway.tenant)
    history, _ = mem0compat.history_tables(table)

    purged = await backend.purge_expired(batch=500, max_batches=10)

    assert purged is not None and (purged.turns, purged.facts, purged.more) == (3, 1, False)
    with psycopg.connect(database_url) as conn:
        left = [r[0] for r in conn.execute(f"SELECT payload->>'data' FROM \"{table}\"").fetchall()]
        texts = [r[0] for r in conn.execute(f'SELECT new_memory FROM "{history}"').fetchall()]
    assert left == ["a recent thing"]
    assert texts == ["a recent thing"]  # the purged memories' history (their text) went with them
    assert gateway.sample("gateway_memory_purged_total", tenant=gateway.tenant, kind="turn") == 3
    assert gateway.sample("gateway_memory_purged_total", tenant=gateway.tenant, kind="fact") == 1


async def test_a_purge_round_is_bounded_and_the_next_goes_on(make_gateway: GatewayFactory) -> None:
    gateway, backend = await _retained(make_gateway, turns_days=30)
    scope = MemoryScope(gateway.tenant, user_id="ada")
    for i in range(5):
        await _said(backend, scope, f"old {i}", OLD)
    first = await backend.purge_expired(batch=2, max_batches=2)
    assert first is not None and (first.turns, first.more) == (4, True)
    second = await backend.purge_expired(batch=2, max_batches=2)
    assert second is not None and (second.turns, second.more) == (1, False)


async def test_only_one_process_purges_a_table_at_a_time(
    make_gateway: GatewayFactory, database_url: str
) -> None:
    gateway, backend = await _retained(make_gateway, turns_days=30)
    scope = MemoryScope(gateway.tenant, user_id="ada")
    await _said(backend, scope, "old", OLD)
    with psycopg.connect(database_url, autocommit=True) as replica:  # another replica mid-round
        assert locks.try_lock_purge(replica, table_name(gateway.tenant))
        assert await backend.purge_expired(batch=10, max_batches=1) is None
        locks.unlock_purge(replica, table_name(gateway.tenant))
    purged = await backend.purge_expired(batch=10, max_batches=1)
    assert purged is not None and purged.turns == 1


async def test_the_purge_job_runs_in_the_background(make_gateway: GatewayFactory) -> None:
    tenant = unique("ret")
    gateway = await make_gateway(
        tenants=[{"name": tenant, "memory": {"retention": {"turns_days": 30}}}], retention_interval_secs=0.2
    )
    backend = await _backend(gateway)
    await _said(backend, MemoryScope(tenant, user_id="ada"), "old", OLD)
    async with asyncio.timeout(10):
        while gateway.sample("gateway_memory_purged_total", tenant=tenant, kind="turn") < 1:
            await asyncio.sleep(0.05)


async def test_the_job_purges_only_tenants_with_a_retention(make_gateway: GatewayFactory) -> None:
    kept, purged = unique("keep"), unique("ret")
    gateway = await make_gateway(
        tenants=[{"name": kept}, {"name": purged, "memory": {"retention": {"turns_days": 30}}}],
        retention_interval_secs=0,
    )
    registry, backends = gateway.app[tenants_key], gateway.app[backends_key]
    for tenant in (kept, purged):
        config = registry.require(tenant)
        await _said(
            await backends.for_tenant(tenant, config.memory), MemoryScope(tenant, user_id="ada"), "old", OLD
        )
    asked: list[str] = []

    async def backend_for(tenant: str, settings: MemorySettings) -> Any:
        asked.append(tenant)
        return await backends.for_tenant(tenant, settings)

    job = RetentionJob(
        tenants=lambda: [(t.name, t.memory) for t in registry], backend_for=backend_for, interval=60
    )
    assert await job.round() is False
    assert asked == [purged]
    config = registry.require(kept)
    assert (
        len(
            await (await backends.for_tenant(kept, config.memory)).recent(MemoryScope(kept, user_id="ada"), 5)
        )
        == 1
    )


def test_retention_is_refused_for_the_platform_backend() -> None:
    with pytest.raises(ValidationError, match=r"retention applies to memory\.backend pgvector"):
        MemorySettings.model_validate({"backend": "platform", "retention": {"turns_days": 30}})
    assert MemorySettings.model_validate({"retention": {"facts_days": 0.5}}).retention.facts == timedelta(
        hours=12
    )
