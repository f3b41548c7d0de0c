"""``greeting.mode: llm``: the tenant's LLM writes the greeting from what is remembered, streamed as the
first bot output, with a hard deadline on its first token and the template as the fallback — and the
messages a text session writes for it are the ones Pipecat's pipeline writes for a streamed reply."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.conftest import GatewayFactory, RunningGateway, unique
from tests.fake_llm import FakeLLM

STREAMED = ("bot-llm-started", "bot-llm-text", "bot-transcription", "bot-llm-stopped", "bot-output")


@pytest.fixture
async def own_llm() -> AsyncIterator[FakeLLM]:
    """An LLM of this test's own (the session-wide fake is shared; its delay is changed here)."""
    llm = FakeLLM()
    await llm.start()
    yield llm
    await llm.close()


async def _gateway(make_gateway: GatewayFactory, llm: FakeLLM, **greeting: Any) -> RunningGateway:
    spec = {
        "name": unique("llmgreet"),
        "llm": {"base_url": llm.base_url, "model": "fake-model"},
        "greeting": {"mode": "llm", **greeting},
    }
    return await make_gateway(tenants=[spec], llm=False)


async def test_the_llm_greeting_is_streamed_token_by_token_from_the_remembered_facts(
    make_gateway: GatewayFactory, own_llm: FakeLLM
) -> None:
    gateway = await _gateway(make_gateway, own_llm)
    await gateway.tell("I live in Oslo", user_id="ada")

    client = await gateway.connect(user_id="ada")
    greeting = await client.bot_turn()

    request = own_llm.requests[-1]
    assert request["stream"] is True
    asked = request["messages"][-1]["content"]
    assert "- You live in Oslo." in asked  # the facts, already in the second person
    # The fake answers "I heard: <the request's last user message>", one token a word.
    assert greeting == f"I heard: {asked}"
    texts = [m for m in client.received if m["type"] == "bot-llm-text"]
    assert len(texts) == len(greeting.split(" ")) > 3
    assert (
        gateway.sample(
            "gateway_greeting_seconds_count", tenant=gateway.tenant, memories="recalled", source="llm"
        )
        == 1
    )


async def test_the_llm_greeting_is_in_the_context_and_never_stored(
    make_gateway: GatewayFactory, own_llm: FakeLLM
) -> None:
    gateway = await _gateway(make_gateway, own_llm)
    await gateway.tell("I live in Oslo", user_id="bo")
    client = await gateway.connect(user_id="bo")
    greeting = await client.bot_turn()

    await client.say("hello again")
    turn = own_llm.requests[-1]["messages"]
    assert {"role": "assistant", "content": greeting} in turn
    await client.ws.close()
    await gateway.settle()
    from gateway.keys import backends_key
    from memory.scope import MemoryScope

    backend = gateway.app[backends_key]._tenants[gateway.tenant]
    stored = [m["memory"] for m in await backend.recent(MemoryScope(gateway.tenant, "bo"), 50)]
    assert greeting not in stored and "hello again" in stored


async def test_no_first_token_by_the_deadline_says_the_template(
    make_gateway: GatewayFactory, own_llm: FakeLLM
) -> None:
    gateway = await _gateway(make_gateway, own_llm, llm_first_token_secs=0.2)
    await gateway.tell("I live in Oslo", user_id="cy")
    own_llm.delay_secs = 2.0  # headers at once, the first token only after 2 s

    client = await gateway.connect(user_id="cy")
    greeting = await client.bot_turn(timeout=5)

    assert greeting == "Welcome back! You told me you live in Oslo. What would you like to talk about?"
    assert (
        gateway.sample(
            "gateway_greeting_seconds_count", tenant=gateway.tenant, memories="recalled", source="fallback"
        )
        == 1
    )


async def test_an_llm_that_refuses_says_the_template(make_gateway: GatewayFactory, own_llm: FakeLLM) -> None:
    gateway = await _gateway(make_gateway, own_llm)
    await gateway.tell("I live in Oslo", user_id="di")
    await own_llm.close()  # connection refused

    client = await gateway.connect(user_id="di")
    greeting = await client.bot_turn(timeout=5)
    assert "You told me you live in Oslo" in greeting


async def test_a_new_user_gets_the_template_without_asking_the_llm(
    make_gateway: GatewayFactory, own_llm: FakeLLM
) -> None:
    gateway = await _gateway(make_gateway, own_llm)
    client = await gateway.connect(user_id="new")
    greeting = await client.bot_turn()
    assert "nice to meet you" in greeting.lower()
    assert own_llm.requests == []


async def test_the_streamed_greeting_says_what_the_pipeline_says_for_the_same_stream(
    make_gateway: GatewayFactory, own_llm: FakeLLM
) -> None:
    """The session writes the LLM greeting before its pipeline exists; the same stream as a reply goes
    through the LLM service, text processor and RTVI's observer. Message by message of each kind the
    same (segment IDs aside: they are frame IDs)."""
    gateway = await _gateway(make_gateway, own_llm)
    await gateway.tell("I live in Oslo", user_id="ed")
    await gateway.tell("I sail on weekends", user_id="ed")
    client = await gateway.connect(user_id="ed")
    text = await _whole_line(client, client.bot_turn)
    asked = own_llm.requests[-1]["messages"][-1]["content"]
    early = [m for m in client.received if m["type"] in STREAMED]

    client.received.clear()
    # The fake answers "I heard: <asked>" again: the same tokens, through the pipeline this time.
    assert await _whole_line(client, lambda: client.say(asked)) == text
    late = [m for m in client.received if m["type"] in STREAMED]

    def by_kind(messages: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
        kinds: dict[str, list[dict[str, Any]]] = {}
        for m in messages:
            m = dict(m)
            if "data" in m and "segment_id" in m["data"]:
                m["data"] = {**m["data"], "segment_id": 0}
            kinds.setdefault(m["type"], []).append(m)
        return kinds

    assert by_kind(early) == by_kind(late)
    assert len(by_kind(early)["bot-output"]) >= 2
    for messages in (early, late):
        types = [m["type"] for m in messages]
        assert types[0] == "bot-llm-started"
        last_text = max(i for i, t in enumerate(types) if t == "bot-llm-text")
        assert types.index("bot-llm-stopped") > last_text


async def _whole_line(client: Any, turn: Any) -> str:
    """A bot line (``turn``), and every ``bot-output`` of it (the last comes after bot-llm-stopped)."""
    text = await turn()
    while (
        " ".join(m["data"]["text"] for m in client.received if m["type"] == "bot-output").split()
        != text.split()
    ):
        await client.next("bot-output")
    return str(text)
