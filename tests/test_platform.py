"""The Mem0 platform backend (cloud option): the tenant's own key and host, IDs ANDed, raw storage."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.conftest import GatewayFactory, RunningGateway, unique
from tests.fake_mem0 import FakeMem0


@pytest.fixture
async def mem0_cloud() -> AsyncIterator[FakeMem0]:
    fake = FakeMem0()
    await fake.start()
    yield fake
    await fake.close()


@pytest.fixture
async def cloud_gateway(
    make_gateway: GatewayFactory, mem0_cloud: FakeMem0, monkeypatch: pytest.MonkeyPatch
) -> RunningGateway:
    env = f"MEM0_KEY_{unique('T').upper()}"
    monkeypatch.setenv(env, "m0-tenant-key")
    mem0_cloud.keys.add("m0-tenant-key")
    memory = {"backend": "platform", "api_key_env": env, "host": mem0_cloud.host}
    return await make_gateway(tenants=[{"name": unique("cloud"), "memory": memory}])


async def test_platform_backend_remembers_across_sessions(cloud_gateway: RunningGateway) -> None:
    await cloud_gateway.tell("My name is Ada and I sail on weekends", user_id="ada", agent_id="helper")

    second = await cloud_gateway.connect(user_id="ada", agent_id="helper", run_id="another-run")
    greeting = await second.bot_turn()
    assert "Ada" in greeting and "sail" in greeting
    assert (
        cloud_gateway.sample(
            "gateway_memory_seconds_count", tenant=cloud_gateway.tenant, operation="add", backend="platform"
        )
        >= 1
    )


async def test_platform_filters_and_the_ids_so_a_shared_agent_never_leaks_another_user(
    cloud_gateway: RunningGateway, mem0_cloud: FakeMem0
) -> None:
    await cloud_gateway.tell("My secret hobby is falconry", user_id="ada", agent_id="shared-bot")

    bob = await cloud_gateway.connect(user_id="bob", agent_id="shared-bot")
    greeting = await bob.bot_turn()
    assert "falconry" not in greeting
    reads = [body for op, body in mem0_cloud.requests if op in ("get_all", "search")]
    assert reads and all("AND" in body["filters"] for body in reads)
    adds = [body for op, body in mem0_cloud.requests if op == "add"]
    assert adds and all(body["infer"] is False for body in adds)
    assert all(body["user_id"].startswith(f"{cloud_gateway.tenant}/") for body in adds)


async def test_platform_erasure_deletes_exactly_the_users_memories_by_id(
    cloud_gateway: RunningGateway, mem0_cloud: FakeMem0
) -> None:
    await cloud_gateway.tell("My secret hobby is falconry", user_id="ada", agent_id="shared-bot")
    await cloud_gateway.tell("I play the oboe", user_id="bob", agent_id="shared-bot")
    headers = {"Authorization": f"Bearer {cloud_gateway.keys[cloud_gateway.tenant]}"}

    async with cloud_gateway.http.delete(
        f"{cloud_gateway.url}/v1/memories", params={"user_id": "ada"}, headers=headers
    ) as resp:
        assert resp.status == 200
        assert (await resp.json())["deleted"] == 2
    remaining = [m["memory"] for project in mem0_cloud.memories.values() for m in project]
    assert sorted(remaining) == ["I heard: I play the oboe", "I play the oboe"]
