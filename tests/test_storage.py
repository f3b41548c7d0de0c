"""What gets stored, and how often: each message once, incrementally, never the greeting."""

from __future__ import annotations

from collections import Counter

from gateway.keys import backends_key, tenants_key
from memory.scope import MemoryScope
from tests.clients import send_text
from tests.conftest import RunningGateway
from tests.fake_llm import FakeLLM


async def _memories(gateway: RunningGateway, user_id: str) -> list[dict[str, object]]:
    tenant = gateway.app[tenants_key].get(gateway.tenant)
    assert tenant is not None
    backend = await gateway.app[backends_key].for_tenant(tenant.name, tenant.memory)
    return await backend.all_memories(MemoryScope(tenant.name, user_id=user_id))


async def test_five_turns_store_each_message_exactly_once(gateway: RunningGateway) -> None:
    client = await gateway.connect(user_id="writer")
    await client.bot_turn()
    said = [f"turn {i}: I like topic number {i}" for i in range(5)]
    for text in said:
        await client.say(text)
    await client.ws.close()
    await gateway.settle()

    stored = Counter(str(m["memory"]) for m in await _memories(gateway, "writer"))
    expected = Counter(said + [f"I heard: {t}" for t in said])
    assert stored == expected


async def test_greeting_is_not_stored_as_a_memory(gateway: RunningGateway) -> None:
    client = await gateway.connect(user_id="quiet")
    greeting = await client.bot_turn()
    await client.say("hello")
    await client.ws.close()
    await gateway.settle()

    stored = [str(m["memory"]) for m in await _memories(gateway, "quiet")]
    assert greeting not in stored
    assert sorted(stored) == ["I heard: hello", "hello"]


async def test_recalled_memories_are_one_message_in_the_llm_context_not_one_per_turn(
    gateway: RunningGateway, fake_llm: FakeLLM
) -> None:
    client = await gateway.connect(user_id="recall")
    await client.bot_turn()
    for text in ("I keep bees in my garden", "the bees make honey", "I sell the honey at markets"):
        await client.say(text)
    last = next(r for r in reversed(fake_llm.requests) if "markets" in str(r["messages"][-1]))
    recalled = [m for m in last["messages"] if "I recall" in str(m.get("content"))]
    assert len(recalled) == 1
    assert "bees" in recalled[0]["content"]


async def test_a_new_run_id_still_finds_the_users_earlier_memories(gateway: RunningGateway) -> None:
    await gateway.tell("I am training for a marathon", user_id="runner", run_id="run-1")

    second = await gateway.connect(user_id="runner", run_id="run-2")
    assert "marathon" in await second.bot_turn()


async def test_greeting_recall_returns_what_mem0_get_all_returns(gateway: RunningGateway) -> None:
    """The greeting's listing runs on the event loop, beside mem0; it must not answer differently."""
    await gateway.tell("I grow tomatoes", user_id="lister", agent_id="coach")
    await gateway.tell("I also grow basil", user_id="lister", agent_id="coach")
    tenant = gateway.app[tenants_key].get(gateway.tenant)
    assert tenant is not None
    backend = await gateway.app[backends_key].for_tenant(tenant.name, tenant.memory)
    scope = MemoryScope(tenant.name, user_id="lister", agent_id="coach")
    recalled = await backend.recall(scope, 3)
    from_mem0 = backend.client.get_all(filters={**scope.retrieval_filters(), "role": "user"}, top_k=3)
    assert recalled == from_mem0["results"]
    assert [m["memory"] for m in recalled] == ["I also grow basil", "I grow tomatoes"]


async def test_a_turn_sent_just_before_the_client_closes_its_socket_is_stored(
    gateway: RunningGateway,
) -> None:
    """The client leaves while Pipecat is still handling its last message (RTVI's send-text runs on a
    task the disconnect cancels): the gateway had accepted the turn, so it is stored anyway, once."""
    client = await gateway.connect(user_id="quick-leaver")
    await client.bot_turn()
    assert await client.say("first, the boat is blue") == "I heard: first, the boat is blue"
    await client.send(send_text("and the parrot is green"))
    await client.ws.close()
    await gateway.settle()

    stored = Counter(str(m["memory"]) for m in await _memories(gateway, "quick-leaver"))
    assert stored["and the parrot is green"] == 1
    assert stored["first, the boat is blue"] == 1
