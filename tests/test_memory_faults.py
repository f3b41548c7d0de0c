"""Memory backend slow or down: the caller is greeted anyway, the session goes on, nothing is lost."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gateway.keys import backends_key, tenants_key
from memory.scope import MemoryScope
from tests.conftest import GatewayFactory, RunningGateway
from tests.faults import PostgresProxy, unix_socket_of


@pytest.fixture
async def proxy(database_url: str) -> AsyncIterator[PostgresProxy]:
    p = PostgresProxy(unix_socket_of(database_url))
    await p.start()
    yield p
    await p.close()


@pytest.fixture
async def proxied(make_gateway: GatewayFactory, proxy: PostgresProxy) -> AsyncIterator[RunningGateway]:
    gw = await make_gateway(database=proxy.url(), greeting_deadline_secs=0.3, memory_call_timeout_secs=2.0)
    yield gw
    # Heal the network before teardown so shutdown does not wait out retries.
    proxy.delay_secs = 0.0
    proxy.restore()
    for client in gw.clients:
        await client.ws.close()
    await gw.settle(timeout=30)


async def _seed(gateway: RunningGateway) -> None:
    await gateway.tell("My name is Ada and I sail on weekends", user_id="ada")


async def test_slow_backend_gets_the_generic_greeting_before_the_backend_answers(
    proxied: RunningGateway, proxy: PostgresProxy
) -> None:
    await _seed(proxied)
    proxy.delay_secs = 3.0
    client = await proxied.connect(user_id="ada")
    greeting = await client.bot_turn(timeout=2.5)
    assert "nice to meet you" in greeting.lower() and "Ada" not in greeting
    assert (
        proxied.sample(
            "gateway_greeting_seconds_count", tenant=proxied.tenant, memories="fallback", source="template"
        )
        == 1
    )
    # The greeting waited for its deadline (0.3 s), not for the backend (3 s per round trip).
    assert (
        proxied.sample(
            "gateway_greeting_seconds_bucket",
            tenant=proxied.tenant,
            memories="fallback",
            source="template",
            le="1.0",
        )
        == 1
    )
    assert proxied.sample("gateway_memory_errors_total", tenant=proxied.tenant, operation="get_all") >= 1


async def test_session_goes_on_when_memory_search_misses_its_deadline(
    proxied: RunningGateway, proxy: PostgresProxy
) -> None:
    await _seed(proxied)
    proxy.delay_secs = 3.0
    client = await proxied.connect(user_id="ada")
    await client.bot_turn(timeout=2.5)
    assert await client.say("what do I do on weekends?", timeout=5) == "I heard: what do I do on weekends?"
    assert proxied.sample("gateway_memory_errors_total", tenant=proxied.tenant, operation="search") >= 1


async def test_backend_down_greets_generically_and_keeps_what_the_user_said(
    proxied: RunningGateway, proxy: PostgresProxy
) -> None:
    proxy.cut()
    client = await proxied.connect(user_id="grace")
    greeting = await client.bot_turn(timeout=2.5)
    assert "nice to meet you" in greeting.lower()
    assert (
        await client.say("My name is Grace and I write compilers")
        == "I heard: My name is Grace and I write compilers"
    )
    assert proxied.sample("gateway_memory_errors_total", tenant=proxied.tenant, operation="get_all") >= 1
    await client.ws.close()
    async with asyncio.timeout(30):  # the write must have failed at least once before we heal it
        while proxied.sample("gateway_memory_errors_total", tenant=proxied.tenant, operation="add") < 1:
            await asyncio.sleep(0.05)
    assert proxied.sample("gateway_memory_pending_writes", tenant=proxied.tenant) >= 1

    proxy.restore()
    await proxied.settle(timeout=60)
    tenant = proxied.app[tenants_key].get(proxied.tenant)
    assert tenant is not None
    backend = await proxied.app[backends_key].for_tenant(tenant.name, tenant.memory)
    stored = [m["memory"] for m in await backend.all_memories(MemoryScope(tenant.name, user_id="grace"))]
    assert "My name is Grace and I write compilers" in stored
    assert proxied.sample("gateway_memory_pending_writes", tenant=proxied.tenant) == 0
