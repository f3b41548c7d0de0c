"""Two tenants with the same user_id are two different people: no memory crosses between them."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.keys import backends_key, settings_key
from memory.local import table_name
from memory.mem0compat import history_tables
from tests.conftest import GatewayFactory, RunningGateway, unique
from tests.fake_llm import FakeLLM
from tests.stores import where_in_database, where_on_disk

SHARED_USER = "same-user-id"


@pytest.fixture
async def two_tenants(make_gateway: GatewayFactory) -> RunningGateway:
    gateway = await make_gateway(tenants=[{"name": unique("alpha")}, {"name": unique("beta")}])
    alpha, beta = list(gateway.keys)
    await gateway.tell("My favourite colour is teal", tenant=alpha, user_id=SHARED_USER)
    await gateway.tell("I grew up in Bergen by the sea", tenant=beta, user_id=SHARED_USER)
    return gateway


async def _memories(gateway: RunningGateway, key_of: str, method: str = "GET", **query: str) -> Any:
    headers = {"Authorization": f"Bearer {gateway.keys[key_of]}"}
    async with gateway.http.request(
        method, f"{gateway.url}/v1/memories", params=query, headers=headers
    ) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


def _texts(listing: dict[str, Any]) -> set[str]:
    return {m["memory"] for m in listing["results"]}


async def test_each_tenants_greeting_uses_only_its_own_memories(two_tenants: RunningGateway) -> None:
    alpha, beta = list(two_tenants.keys)
    greet_alpha = await (await two_tenants.connect(tenant=alpha, user_id=SHARED_USER)).bot_turn()
    greet_beta = await (await two_tenants.connect(tenant=beta, user_id=SHARED_USER)).bot_turn()

    assert "teal" in greet_alpha and "Bergen" not in greet_alpha
    assert "Bergen" in greet_beta and "teal" not in greet_beta


async def test_per_turn_recall_sends_the_llm_only_its_own_tenants_memories(
    two_tenants: RunningGateway, fake_llm: FakeLLM
) -> None:
    _, beta = list(two_tenants.keys)
    client = await two_tenants.connect(tenant=beta, user_id=SHARED_USER)
    await client.bot_turn()
    await client.say("what is my favourite colour and where did I grow up")

    request = next(r for r in reversed(fake_llm.requests) if "favourite colour and" in str(r["messages"]))
    context = " ".join(str(m.get("content")) for m in request["messages"])
    assert "Bergen" in context and "teal" not in context


async def test_memories_api_lists_only_the_callers_tenant(two_tenants: RunningGateway) -> None:
    alpha, beta = list(two_tenants.keys)
    listed_alpha = await _memories(two_tenants, alpha, user_id=SHARED_USER)
    listed_beta = await _memories(two_tenants, beta, user_id=SHARED_USER)

    assert _texts(listed_alpha) == {"My favourite colour is teal", "I heard: My favourite colour is teal"}
    assert _texts(listed_beta) == {
        "I grew up in Bergen by the sea",
        "I heard: I grew up in Bergen by the sea",
    }
    assert listed_alpha["user_id"] == SHARED_USER  # the tenant prefix is ours, never shown
    assert not {m["id"] for m in listed_alpha["results"]} & {m["id"] for m in listed_beta["results"]}


async def test_forgetting_a_user_in_one_tenant_leaves_the_other_intact(two_tenants: RunningGateway) -> None:
    alpha, beta = list(two_tenants.keys)
    forgotten = await _memories(two_tenants, beta, "DELETE", user_id=SHARED_USER)

    assert forgotten == {"user_id": SHARED_USER, "agent_id": None, "deleted": 2}
    assert _texts(await _memories(two_tenants, beta, user_id=SHARED_USER)) == set()
    assert len(_texts(await _memories(two_tenants, alpha, user_id=SHARED_USER))) == 2
    greeting = await (await two_tenants.connect(tenant=beta, user_id=SHARED_USER)).bot_turn()
    assert "nice to meet you" in greeting.lower()


async def test_forgetting_also_erases_the_text_from_mem0s_history_and_leaves_none_on_disk(
    two_tenants: RunningGateway,
) -> None:
    _, beta = list(two_tenants.keys)
    settings = two_tenants.app[settings_key]
    database_url = two_tenants.app[backends_key].database_url
    history, _ = history_tables(table_name(beta))
    assert history in where_in_database(database_url, beta, "Bergen")  # mem0 logged the ADD

    await _memories(two_tenants, beta, "DELETE", user_id=SHARED_USER)

    assert where_in_database(database_url, beta, "Bergen") == []
    assert where_on_disk(settings.data_dir, "Bergen") == []


async def test_another_tenants_key_finds_nothing_and_deletes_nothing(two_tenants: RunningGateway) -> None:
    alpha, beta = list(two_tenants.keys)
    only_in_alpha = unique("alpha-only-user")
    await two_tenants.tell("I collect antique maps", tenant=alpha, user_id=only_in_alpha)

    assert (await _memories(two_tenants, beta, user_id=only_in_alpha))["results"] == []
    assert (await _memories(two_tenants, beta, "DELETE", user_id=only_in_alpha))["deleted"] == 0
    assert len((await _memories(two_tenants, alpha, user_id=only_in_alpha))["results"]) == 2


@pytest.mark.parametrize(
    ("headers", "query", "status"),
    [
        ({}, {"user_id": SHARED_USER}, 401),
        ({"Authorization": "Bearer mgw_not-a-key"}, {"user_id": SHARED_USER}, 401),
        ({"Authorization": "Basic abc"}, {"user_id": SHARED_USER}, 401),
        (None, {}, 400),
        (None, {"user_id": "bad id with spaces"}, 400),
        (None, {"user_id": SHARED_USER, "limit": "lots"}, 400),
    ],
    ids=["no key", "unknown key", "wrong scheme", "no user_id", "malformed user_id", "bad limit"],
)
async def test_memories_api_refusals(
    gateway: RunningGateway, headers: dict[str, str] | None, query: dict[str, str], status: int
) -> None:
    headers = headers if headers is not None else {"Authorization": f"Bearer {gateway.keys[gateway.tenant]}"}
    async with gateway.http.get(f"{gateway.url}/v1/memories", params=query, headers=headers) as resp:
        assert resp.status == status
        body = await resp.json()
    assert set(body) == {"error"} and "Traceback" not in body["error"]


async def test_memories_api_of_a_disabled_tenant_is_403(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(tenants=[{"name": unique("off"), "status": "disabled"}])
    headers = {"Authorization": f"Bearer {gateway.keys[gateway.tenant]}"}
    async with gateway.http.get(
        f"{gateway.url}/v1/memories", params={"user_id": "x"}, headers=headers
    ) as resp:
        assert resp.status == 403
    async with gateway.http.delete(
        f"{gateway.url}/v1/memories", params={"user_id": "x"}, headers=headers
    ) as resp:
        assert resp.status == 403
    assert gateway.sample("gateway_rejections_total", tenant=gateway.tenant, reason="tenant_disabled") == 2
